"""The imaging viewer in a real browser: Debian's Chromium, driven by Playwright, against the app under uvicorn.

A village doctor stores a small CT series by STOW-RS; the county radiologist signs in through /login and reads
it: the series thumbnail, the first image, the arrow key to the next one, the bone window. Never downloads a
browser: a machine without /usr/bin/chromium fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.async_api import Browser, Page, Request, expect

from telemed.app import create_app
from telemed.core.config import Environment, Settings
from tests.conftest import PASSWORD, Community, PageProblems, seed_community, serve_in_thread
from tests.imaging.helpers import small_study, stow

pytestmark = pytest.mark.browser

SLICES = 5


@dataclass
class LiveServer:
    url: str
    community: Community
    study_uid: str


async def _seed_study(url: str, community: Community, directory: Path) -> str:
    paths = small_study(directory, count=SLICES)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        village = await community.login(client, "vd_a1")
        response = await stow(client, village, paths)
        assert response.status_code == 200, response.text
    return study_uid


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
        study_uid = asyncio.run(_seed_study(url, community, tmp_path_factory.mktemp("viewer-study")))
        yield LiveServer(url=url, community=community, study_uid=study_uid)


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill(username)
    await page.get_by_label("密码", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/home")


async def _open_viewer(browser: Browser, live: LiveServer, width: int) -> tuple[Page, PageProblems, list[str]]:
    context = await browser.new_context(
        viewport={"width": width, "height": 800}, locale="en-US", base_url=live.url, device_scale_factor=1
    )
    context.set_default_timeout(15_000)
    page = await context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    rendered: list[str] = []

    def remember(request: Request) -> None:
        if "/rendered" in request.url:
            rendered.append(request.url)

    page.on("request", remember)
    await sign_in(page, "rad")
    await page.goto(f"/imaging/viewer?study={live.study_uid}")
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
