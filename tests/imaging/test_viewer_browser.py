"""The imaging viewer in a real browser: Debian's Chromium, driven by Playwright, against the app under uvicorn.

A village doctor stores a small CT series and an XA cine run by STOW-RS; the county radiologist signs in through
/login, finds the study in the picker (by a Chinese name) and reads it: the series thumbnail, the first image, the
arrow key to the next one, the bone window, a drag that changes the window, the frames of the cine run. Never
downloads a browser: a machine without /usr/bin/chromium fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from telemed.app import create_app
from telemed.core.config import Environment, Settings
from tests.conftest import PASSWORD, Community, PageProblems, seed_community, serve_in_thread
from tests.imaging.helpers import multiframe_study, small_study, stow

pytestmark = pytest.mark.browser

SLICES = 5
FRAMES = 3


@dataclass
class LiveServer:
    url: str
    community: Community
    study_uid: str
    cine_study_uid: str


async def _seed_studies(url: str, community: Community, directory: Path) -> tuple[str, str]:
    """A CT series of 张三 (Zhang^San=张^三, the factory's default) and an XA cine run of 李四."""
    paths = small_study(directory / "ct", count=SLICES)
    cine = multiframe_study(directory / "xa", frames=FRAMES, patient_name="Li^Si=李^四", patient_id="XA0001")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        village = await community.login(client, "vd_a1")
        for files in (paths, [cine]):
            response = await stow(client, village, files)
            assert response.status_code == 200, response.text
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in (paths[0], cine)]
    return uids[0], uids[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app (all installed domains, imaging among them) under uvicorn in a thread; a CT study stored by STOW."""
    settings = Settings(
        environment=Environment.test,
        data_dir=tmp_path_factory.mktemp("viewer-data"),
        redis_url=None,
        dicom_port=0,
    )
    app = create_app(settings, configure_logs=False)
    with serve_in_thread(app, seed_community, name="viewer-live-server") as (url, community):
        study_uid, cine_uid = asyncio.run(_seed_studies(url, community, tmp_path_factory.mktemp("viewer-study")))
        yield LiveServer(url=url, community=community, study_uid=study_uid, cine_study_uid=cine_uid)


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill(username)
    await page.get_by_label("密码", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/home")


async def _open_viewer(
    browser: Browser, live: LiveServer, width: int, *, study: str | None = None, user: str = "rad", touch: bool = False
) -> tuple[Page, PageProblems, list[str]]:
    """Signed in as ``user``, on the viewer of ``study`` (the CT study by default; "" for the picker)."""
    context = await browser.new_context(
        viewport={"width": width, "height": 800},
        locale="en-US",
        base_url=live.url,
        device_scale_factor=1,
        has_touch=touch,
    )
    context.set_default_timeout(15_000)
    page = await context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    rendered: list[str] = []

    def remember(request: Request) -> None:
        if "/rendered" in request.url or "/wado?" in request.url:
            rendered.append(request.url)

    page.on("request", remember)
    await sign_in(page, user)
    uid = live.study_uid if study is None else study
    await page.goto(f"/imaging/viewer?study={uid}" if uid else "/imaging/viewer")
    return page, problems, rendered


async def _image_width(page: Page) -> int:
    width = await page.evaluate(
        "() => { const img = document.getElementById('viewer-image'); return img.complete ? img.naturalWidth : 0; }"
    )
    return int(width) if isinstance(width, int | float) else 0


async def test_radiologist_reads_a_series_in_the_viewer(browser: Browser, live_server: LiveServer) -> None:
    page, problems, rendered = await _open_viewer(browser, live_server, 1280)
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    thumbnail = page.locator("img.series-thumb").first
    await expect(thumbnail).to_be_visible()
    await page.wait_for_function(
        "() => { const img = document.querySelector('img.series-thumb'); return img && img.naturalWidth > 0; }"
    )
    image = page.locator("#viewer-image")
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "() => { const img = document.getElementById('viewer-image'); return img.complete && img.naturalWidth > 0; }"
    )
    assert await _image_width(page) > 0
    await expect(page.locator("#slice-index")).to_have_text(f"1 / {SLICES}")

    await page.keyboard.press("ArrowDown")
    await expect(page.locator("#slice-index")).to_have_text(f"2 / {SLICES}")
    first_src = await image.get_attribute("src")
    await page.wait_for_function(
        "src => { const img = document.getElementById('viewer-image'); return img.src !== src || img.complete; }",
        arg=first_src,
    )

    async with page.expect_request(lambda request: "window=400,1800" in request.url) as bone:
        await page.get_by_role("button", name="骨窗", exact=True).click()
    assert "/rendered?window=400,1800" in (await bone.value).url
    await expect(page.get_by_role("button", name="骨窗", exact=True)).to_have_attribute("aria-pressed", "true")
    await page.wait_for_function(
        "() => { const img = document.getElementById('viewer-image'); return img.complete && img.naturalWidth > 0; }"
    )
    assert any("window=400,1800" in url for url in rendered)
    await expect(page.locator("#slice-index")).to_have_text(f"2 / {SLICES}")
    assert problems.messages == []
    await page.context.close()


async def test_viewer_fits_a_phone(browser: Browser, live_server: LiveServer) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 375)
    await page.wait_for_function(
        "() => { const img = document.getElementById('viewer-image'); return img.complete && img.naturalWidth > 0; }"
    )
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert isinstance(overflow, int | float)
    assert overflow <= 0
    await page.locator("#slice-range").fill("3")
    await expect(page.locator("#slice-index")).to_have_text(f"3 / {SLICES}")
    assert problems.messages == []
    await page.context.close()


IMAGE_READY = (
    "() => { const img = document.getElementById('viewer-image'); return img.complete && img.naturalWidth > 0; }"
)


async def test_the_picker_finds_a_study_by_its_chinese_name_and_opens_it(
    browser: Browser, live_server: LiveServer
) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 1280, study="")
    await page.goto("/home")
    await page.locator("a[href='/imaging/viewer']").first.click()  # the nav link opens the picker
    await page.wait_for_url("**/imaging/viewer")
    studies = page.locator("#study-list a.study-item")
    await expect(studies).to_have_count(2)
    zhang = studies.filter(has_text="张三")
    await expect(zhang).to_contain_text("Zhang San")  # the other writing of the name, beside the first
    await expect(zhang).to_contain_text("2024-03-15")
    await expect(studies.filter(has_text="李四")).to_contain_text("XA")
    await expect(page.locator("#picker-status")).to_have_text("第 1–2 项")

    await page.get_by_label("患者姓名").fill("张三")
    await page.get_by_role("button", name="查找", exact=True).click()
    await expect(studies).to_have_count(1)
    await expect(studies.first).to_contain_text("张三")

    await page.get_by_label("患者姓名").fill("赵")
    await page.get_by_role("button", name="查找", exact=True).click()
    await expect(page.locator("#picker-empty")).to_be_visible()
    await expect(page.locator("#picker-empty")).to_contain_text("没有符合条件的检查。")
    await expect(studies).to_have_count(0)

    await page.get_by_label("患者姓名").fill("")
    await page.get_by_label("检查类型").select_option("XA")
    await page.get_by_role("button", name="查找", exact=True).click()
    await expect(studies).to_have_count(1)
    await expect(studies.first).to_contain_text("李四")
    await page.get_by_label("检查类型").select_option("")
    await page.get_by_label("检查日期（起）").fill("2024-03-16")
    await page.get_by_label("检查日期（止）").fill("2024-03-14")
    await page.get_by_role("button", name="查找", exact=True).click()
    await expect(page.locator("#q-date-error")).to_have_text("起始日期不能晚于截止日期。")

    await page.get_by_role("button", name="清除条件").click()
    await expect(studies).to_have_count(2)
    await page.get_by_label("患者姓名").fill("zhang san")
    await page.get_by_role("button", name="查找", exact=True).click()
    await expect(studies).to_have_count(1)
    await studies.first.click()
    await page.wait_for_url(f"**/imaging/viewer?study={live_server.study_uid}")
    await expect(page.locator("#study-summary")).to_contain_text("张三")
    await page.wait_for_function(IMAGE_READY)
    await expect(page.locator("#slice-index")).to_have_text(f"1 / {SLICES}")

    await page.get_by_role("link", name="← 检查列表").click()  # back to the same search
    await page.wait_for_url("**/imaging/viewer")
    await expect(page.get_by_label("患者姓名")).to_have_value("zhang san")
    await expect(studies).to_have_count(1)

    await page.get_by_role("button", name="English").click()  # the domain's texts follow the switch too
    await expect(page.locator("h2#picker-heading")).to_have_text("Studies")
    await expect(page.get_by_role("button", name="Search", exact=True)).to_be_visible()
    await expect(studies.first.locator(".study-name")).to_have_text("Zhang San")
    await expect(page).to_have_title("Image viewer · County Telemedicine and Referral Platform")
    await page.get_by_role("button", name="中文").click()
    await expect(studies.first.locator(".study-name")).to_have_text("张三")
    assert problems.messages == []
    await page.context.close()


async def test_a_multi_frame_instance_steps_through_its_frames(browser: Browser, live_server: LiveServer) -> None:
    page, problems, requested = await _open_viewer(browser, live_server, 1280, study=live_server.cine_study_uid)
    frame_marker = "/frames/{n}/rendered"
    position = page.locator("#slice-index")
    await expect(position).to_have_text(f"1 / 1 · 帧 1 / {FRAMES}")
    await page.wait_for_function(IMAGE_READY)
    assert any(frame_marker.format(n=1) in url for url in requested)
    first_src = await page.locator("#viewer-image").get_attribute("src")

    async with page.expect_request(lambda request: frame_marker.format(n=2) in request.url):
        await page.keyboard.press("ArrowDown")
    await expect(position).to_have_text(f"1 / 1 · 帧 2 / {FRAMES}")
    await page.wait_for_function(
        "src => { const img = document.getElementById('viewer-image'); return img.src !== src && img.complete; }",
        arg=first_src,
    )
    async with page.expect_request(lambda request: frame_marker.format(n=3) in request.url):
        await page.locator("#viewer-frame").hover()
        await page.mouse.wheel(0, 120)
    await expect(position).to_have_text(f"1 / 1 · 帧 3 / {FRAMES}")
    await page.keyboard.press("ArrowDown")  # the last frame stays the last
    await expect(position).to_have_text(f"1 / 1 · 帧 3 / {FRAMES}")
    await expect(page.locator("#slice-range")).to_have_attribute("max", str(FRAMES))
    # Frames take a window like any image: a preset re-renders the frame shown in that window.
    async with page.expect_request(lambda request: "/frames/3/rendered?window=400,1800" in request.url):
        await page.get_by_role("button", name="骨窗", exact=True).click()
    assert problems.messages == []
    await page.context.close()


async def _drag(page: Page, dx: int, dy: int) -> None:
    box = await page.locator("#viewer-image").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await page.mouse.move(x, y)
    await page.mouse.down()
    await page.mouse.move(x + dx, y + dy, steps=8)
    await page.mouse.up()


async def test_a_drag_changes_the_window_and_a_reset_restores_it(browser: Browser, live_server: LiveServer) -> None:
    page, problems, rendered = await _open_viewer(browser, live_server, 1280)
    await page.wait_for_function(IMAGE_READY)
    readout = page.locator("#wl-readout")
    await expect(readout).to_have_text("窗宽 400 · 窗位 40")  # the slice's stored window (0028,1050-1051)
    await expect(page.get_by_role("button", name="重置窗宽窗位")).to_be_disabled()
    before = len(rendered)

    # 128 px right and 64 px down at 400/256 units a pixel: width 400 → 600, centre 40 → 140.
    async with page.expect_request(lambda request: "/rendered?window=140,600" in request.url):
        await _drag(page, 128, 64)
    await expect(readout).to_have_text("窗宽 600 · 窗位 140")
    await page.wait_for_function(IMAGE_READY)
    windowed = [url for url in rendered[before:] if "window=" in url]
    assert len(windowed) == 1, windowed  # debounced: one request when the hand rests, not one per step
    assert windowed[-1].endswith("/rendered?window=140,600")
    await expect(page.get_by_role("button", name="默认", exact=True)).to_have_attribute("aria-pressed", "false")

    async with page.expect_request(lambda request: "/rendered" in request.url) as next_slice:
        await page.keyboard.press("ArrowDown")  # the chosen window stays while scrolling
    assert (await next_slice.value).url.endswith("/rendered?window=140,600")
    await expect(page.locator("#slice-index")).to_have_text(f"2 / {SLICES}")

    async with page.expect_request(lambda request: "/rendered" in request.url) as reset:
        await page.get_by_role("button", name="重置窗宽窗位").click()
    assert (await reset.value).url.endswith("/rendered")  # the image's own window again
    await expect(readout).to_have_text("窗宽 400 · 窗位 40")
    await expect(page.get_by_role("button", name="默认", exact=True)).to_have_attribute("aria-pressed", "true")
    await expect(page.get_by_role("button", name="重置窗宽窗位")).to_be_disabled()
    await page.wait_for_function(IMAGE_READY)
    assert problems.messages == []
    await page.context.close()


async def test_one_finger_on_a_phone_changes_the_window(browser: Browser, live_server: LiveServer) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 375, touch=True)
    await page.wait_for_function(IMAGE_READY)
    box = await page.locator("#viewer-image").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = await page.context.new_cdp_session(page)

    async def touch(kind: str, at_x: float, at_y: float) -> None:
        points = [] if kind == "touchEnd" else [{"x": at_x, "y": at_y, "id": 1}]
        await cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    async with page.expect_request(lambda request: "/rendered?window=" in request.url) as windowed:
        await touch("touchStart", x, y)
        for step in range(1, 9):
            await touch("touchMove", x - 8 * step, y - 4 * step)
        await touch("touchEnd", x - 64, y - 32)
    # 64 px left and 32 px up: width 400 → 300, centre 40 → -10; the page itself did not scroll.
    assert (await windowed.value).url.endswith("/rendered?window=-10,300")
    await expect(page.locator("#wl-readout")).to_have_text("窗宽 300 · 窗位 -10")
    assert await page.evaluate("window.scrollY") == 0
    assert problems.messages == []
    await page.context.close()


async def test_failures_are_told_plainly_in_chinese_and_english(browser: Browser, live_server: LiveServer) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 1280, study="1.2.826.0.1.3680043.8.498.999")
    error = page.locator("#viewer-error")
    await expect(error).to_contain_text("未找到该检查")
    await expect(page.locator("#viewer-retry")).to_be_hidden()

    async def offline(route: Route) -> None:
        await route.abort("internetdisconnected")

    await page.route("**/dicomweb/**", offline)
    await page.goto(f"/imaging/viewer?study={live_server.study_uid}")
    await expect(error).to_contain_text("网络连接失败")
    await page.get_by_role("button", name="English").click()
    await expect(error).to_contain_text("The network connection failed")
    await page.get_by_role("button", name="中文").click()
    await page.unroute("**/dicomweb/**", offline)
    await page.get_by_role("button", name="重试").click()  # the link came back
    await expect(error).to_be_hidden()
    await page.wait_for_function(IMAGE_READY)

    async def forbidden(route: Route) -> None:
        await route.fulfill(status=403, content_type="application/problem+json", body='{"status": 403}')

    await page.route("**/dicomweb/studies?*", forbidden)
    await page.goto("/imaging/viewer")
    await expect(error).to_contain_text("您的角色无权查看影像。")
    assert problems.messages == []
    await page.context.close()

    page, problems, _ = await _open_viewer(browser, live_server, 1280, study="", user="analyst")
    await expect(page.locator("#forbidden")).to_be_visible()
    await expect(page.locator("#study-picker")).to_be_hidden()
    assert problems.messages == []
    await page.context.close()


async def test_a_radiologist_exports_a_de_identified_copy_from_the_viewer(
    browser: Browser, live_server: LiveServer
) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 1280)
    panel = page.locator("#study-export")
    await expect(panel).to_be_visible()
    await page.locator("#export-purpose").select_option("second_opinion")
    await page.get_by_role("button", name="导出去标识化副本").click()
    status = page.locator("#export-status")
    await expect(status).to_contain_text("导出完成", timeout=30_000)
    await expect(status).to_contain_text("已去除患者身份信息")

    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="下载", exact=True).click()
    download = await waiting.value
    assert download.suggested_filename.endswith(".zip")
    assert "second_opinion" in download.suggested_filename
    saved = await download.path()
    with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as archive:
        names = archive.namelist()
    assert "manifest.json" in names
    assert any(name.endswith(".dcm") for name in names)

    await page.get_by_role("button", name="English").click()
    await expect(status).to_contain_text("patient identity removed")
    assert problems.messages == []
    await page.context.close()


async def test_a_village_doctor_is_not_offered_the_export(browser: Browser, live_server: LiveServer) -> None:
    page, problems, _ = await _open_viewer(browser, live_server, 1280, user="vd_a1")
    await page.wait_for_function(IMAGE_READY)
    await expect(page.locator("#study-export")).to_be_hidden()
    assert problems.messages == []
    await page.context.close()
