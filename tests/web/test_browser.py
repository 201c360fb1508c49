"""The web shell in a real browser: Debian's Chromium, driven by Playwright, against the app under uvicorn.

Never downloads a browser: CI installs ``chromium`` from Debian, and a machine without it fails these tests
rather than skipping them (a skipped browser suite would hide a broken page).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from playwright.async_api import Browser, BrowserContext, Page, expect

from telemed.app import create_app
from telemed.core.auth import Role, UserAccount
from telemed.core.config import Environment, Settings
from telemed.core.deps import CurrentPrincipal, UoW
from telemed.core.events import DomainEvent
from telemed.core.plugins import DomainPlugin, NavLink
from telemed.core.security import hash_password
from telemed.org.idcard import make_id_number
from tests.conftest import PASSWORD, Community, PageProblems, seed_community, serve_in_thread

pytestmark = pytest.mark.browser

SCREENSHOT_DIR = Path("/tmp")
#: An account of its own for the lockout test, so that locking it cannot disturb the other tests.
LOCKABLE = "vd_lockable"

#: A domain's notification: an endpoint that tells the caller's facility something happened.
PING = "referral.ping"
_ping_router = APIRouter()


@_ping_router.post("/test/ping", status_code=204)
async def _ping(uow: UoW, principal: CurrentPrincipal) -> None:
    uow.record(DomainEvent(name=PING, audience_facilities=(str(principal.facility_id),)))


#: A link a domain hands the shell, shown on the home page of the roles it names, and its label for an event.
REFERRAL_DOMAIN = DomainPlugin(
    name="referral",
    title_zh="双向转诊",
    title_en="Referrals",
    routers=(_ping_router,),
    nav_links=(NavLink("/referrals", "双向转诊", "Referrals", frozenset({"village_doctor", "township_doctor"})),),
    event_labels={PING: ("转诊测试消息", "A referral test message")},
)


@dataclass
class LiveServer:
    url: str
    community: Community


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app under uvicorn on 127.0.0.1 in a thread with its own event loop, on a migrated, seeded database."""
    settings = Settings(environment=Environment.test, data_dir=tmp_path_factory.mktemp("browser-data"), redis_url=None)
    app = create_app(settings, domains=[REFERRAL_DOMAIN], configure_logs=False)

    async def prepare(app: FastAPI) -> Community:
        community = await seed_community(app)
        async with app.state.ctx.db.session() as session, session.begin():
            session.add(
                UserAccount(
                    username=LOCKABLE,
                    password_hash=hash_password(PASSWORD),
                    display_name="测试锁定",
                    role=Role.village_doctor.value,
                    facility_id=community.facilities["clinic_a1"],
                    disabled=False,
                    failed_attempts=0,
                )
            )
        return community

    with serve_in_thread(app, prepare) as (url, community):
        yield LiveServer(url=url, community=community)


@dataclass
class Session:
    context: BrowserContext
    page: Page
    problems: PageProblems


async def open_session(browser: Browser, live: LiveServer, *, width: int = 1280, height: int = 860) -> Session:
    # The browser says it prefers English; the product still opens in Chinese.
    context = await browser.new_context(
        viewport={"width": width, "height": height}, locale="en-US", base_url=live.url, device_scale_factor=1
    )
    context.set_default_timeout(10_000)
    page = await context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    return Session(context, page, problems)


@pytest.fixture
async def session(browser: Browser, live_server: LiveServer) -> AsyncIterator[Session]:
    opened = await open_session(browser, live_server)
    yield opened
    await opened.context.close()
    assert opened.problems.messages == []


async def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.goto("/")
    await page.wait_for_url("**/login")
    await page.get_by_label("用户名", exact=True).fill(username)
    await page.get_by_label("密码", exact=True).fill(password)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/home")
    await expect(page.locator("#who")).to_be_visible()  # /api/v1/me answered: the home page is up


async def stored(page: Page, key: str) -> str | None:
    value = await page.evaluate("key => sessionStorage.getItem(key)", key)
    return value if isinstance(value, str) else None


async def no_horizontal_scroll(page: Page) -> bool:
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    return isinstance(overflow, int | float) and overflow <= 0


async def test_village_doctor_signs_in_and_sees_their_home_in_chinese(
    session: Session, live_server: LiveServer
) -> None:
    page = session.page
    await sign_in(page, "vd_a1")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", level=1)).to_have_text("您好，测试vd_a1")
    await expect(page.locator("#me-role")).to_have_text("村医")
    await expect(page.locator("#me-facility")).to_have_text("东岙村卫生室")
    await expect(page.locator("#card-patients")).to_be_visible()
    await expect(page.get_by_role("link", name="双向转诊")).to_be_visible()  # added by a domain for this role
    await expect(page.locator("#card-registry")).to_be_hidden()
    await expect(page.locator("#card-dashboard")).to_be_hidden()
    await expect(page.get_by_role("button", name="退出登录")).to_be_visible()
    await expect(page).to_have_title("首页 · 县域医共体远程医疗与转诊平台")
    await expect(page.locator("#notifications-empty")).to_have_text("暂无新消息")
    await expect(page.locator("#live-status")).to_have_text("实时连接")

    # A patient registered at the clinic (here by a colleague's API call) shows up live on the home page.
    token = await stored(page, "telemed.access_token")
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.post(
            "/api/v1/patients",
            json={"name": "李四", "id_number": make_id_number("331121", dt.date(1960, 5, 6), 17)},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 201, response.text
    await expect(page.locator("#notification-list li").first).to_contain_text("本机构登记了新患者", timeout=15_000)

    # A domain's event reads in the domain's own words, in either language.
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        ping = await http.post("/test/ping", headers={"Authorization": f"Bearer {token}"})
    assert ping.status_code == 204, ping.text
    newest = page.locator("#notification-list li").first
    await expect(newest).to_have_text(re.compile("^转诊测试消息"), timeout=15_000)
    await page.get_by_role("button", name="English").click()
    await expect(newest).to_have_text(re.compile("^A referral test message"))
    await page.get_by_role("button", name="中文").click()
    await expect(newest).to_have_text(re.compile("^转诊测试消息"))


async def test_switching_to_english_changes_the_texts_and_is_remembered(session: Session) -> None:
    page = session.page
    await sign_in(page, "vd_a2")
    await page.get_by_role("button", name="English").click()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Hello, 测试vd_a2")
    await expect(page.locator("#me-role")).to_have_text("Village doctor")
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await expect(page.locator("#card-patients .card-title")).to_have_text("Patients")
    await expect(page.get_by_role("link", name="Referrals")).to_be_visible()
    await expect(page.get_by_role("button", name="English")).to_have_attribute("aria-pressed", "true")
    await expect(page).to_have_title("Home · County Telemedicine and Referral Platform")
    assert await page.evaluate("localStorage.getItem('telemed.lang')") == "en"
    assert any(c["name"] == "lang" and c["value"] == "en" for c in await session.context.cookies())

    await page.reload()  # the server renders the chosen language from the cookie
    await expect(page.get_by_role("heading", name="Quick links")).to_be_visible()
    await page.get_by_role("link", name="Patients").first.click()
    await expect(page.get_by_role("heading", name="Register a patient")).to_be_visible()

    await page.get_by_role("button", name="中文").click()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="登记新患者")).to_be_visible()
    await expect(page.get_by_label("身份证号", exact=True)).to_be_visible()


async def test_a_wrong_password_shows_the_error_in_the_chosen_language(session: Session) -> None:
    page = session.page
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill("vd_b1")
    await page.get_by_label("密码", exact=True).fill("Wrong-Passw0rd!")
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("alert")).to_have_text("用户名或密码错误")
    await expect(page.get_by_label("密码", exact=True)).to_have_value("")
    assert page.url.endswith("/login")
    assert await stored(page, "telemed.access_token") is None

    await page.get_by_role("button", name="English").click()
    await page.get_by_label("Username", exact=True).fill("vd_b1")
    await page.get_by_label("Password", exact=True).fill("Wrong-Passw0rd!")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password")


async def test_a_locked_account_is_told_so(session: Session, live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for _ in range(5):
            wrong = {"username": LOCKABLE, "password": "Wrong-Passw0rd!", "grant_type": "password"}
            assert (await http.post("/api/v1/auth/token", data=wrong)).status_code == 401
    page = session.page
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill(LOCKABLE)
    await page.get_by_label("密码", exact=True).fill(PASSWORD)  # even the right password waits out the lock
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("alert")).to_have_text("连续登录失败次数过多，账户已锁定，请稍后再试")
    assert await stored(page, "telemed.access_token") is None


async def test_at_phone_width_no_page_scrolls_sideways(browser: Browser, live_server: LiveServer) -> None:
    phone = await open_session(browser, live_server, width=375, height=812)
    page = phone.page
    await sign_in(page, "td_a")
    await expect(page.locator("#card-patients")).to_be_visible()
    await expect(page.locator("#live-status")).to_have_text("实时连接")
    assert await no_horizontal_scroll(page)
    await page.screenshot(path=str(SCREENSHOT_DIR / "telemed-home-375.png"), full_page=True)

    await page.get_by_role("link", name="患者").first.click()
    await expect(page.get_by_role("heading", name="登记新患者")).to_be_visible()
    assert await no_horizontal_scroll(page)
    await page.screenshot(path=str(SCREENSHOT_DIR / "telemed-patients-375.png"), full_page=True)

    await page.get_by_role("button", name="English").click()  # longer words must wrap, not overflow
    await expect(page.get_by_role("heading", name="Register a patient")).to_be_visible()
    assert await no_horizontal_scroll(page)
    await page.get_by_role("button", name="中文").click()

    await page.get_by_role("button", name="退出登录").click()
    await page.wait_for_url("**/login")
    assert await no_horizontal_scroll(page)
    await sign_in(page, "admin")
    await page.goto("/admin/registry")
    await expect(page.locator("#facility-table")).to_contain_text("青田县人民医院")
    assert await no_horizontal_scroll(page)
    await phone.context.close()
    assert phone.problems.messages == []


async def test_registering_with_a_bad_id_number_shows_the_field_error(session: Session) -> None:
    page = session.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await sign_in(page, "vd_b1")
    await page.locator("#card-patients").click()
    await page.wait_for_url("**/patients")

    good = make_id_number("331121", dt.date(1972, 8, 19), 31)
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    await page.get_by_label("姓名", exact=True).fill("赵六")
    await page.get_by_label("身份证号", exact=True).fill(bad)
    await page.get_by_role("button", name="登记").click()
    await expect(page.locator("#p-id-number-error")).to_have_text("身份证号校验码错误")
    await expect(page.get_by_label("身份证号", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#p-name-error")).to_have_text("")
    await expect(page.locator("#register-error")).to_be_hidden()

    await page.get_by_role("textbox", name="手机号").fill("12345")
    await page.get_by_role("button", name="登记").click()
    await expect(page.locator("#p-phone-error")).to_have_text("手机号应为11位中国大陆手机号")

    await page.get_by_label("身份证号", exact=True).fill(good)
    await page.get_by_role("textbox", name="手机号").fill("13912345678")
    await page.get_by_role("button", name="登记").click()
    await expect(page.locator("#register-ok")).to_have_text("患者已登记")
    await expect(page.get_by_label("身份证号", exact=True)).not_to_have_attribute("aria-invalid", "true")
    row = page.locator("#patient-list li", has_text="赵六")
    await expect(row).to_contain_text(good[:6] + "********" + good[-4:])
    await expect(row).to_contain_text("139****5678")
    await expect(row).to_contain_text("男")

    await page.get_by_label("姓名", exact=True).fill("赵六")
    await page.get_by_label("身份证号", exact=True).fill(good)
    await page.get_by_role("button", name="登记").click()
    await expect(page.locator("#register-error")).to_have_text("社区内已有相同身份证号的患者档案")

    await page.get_by_label("按姓名、身份证号或手机号查找", exact=True).fill(good)
    await page.get_by_role("button", name="查找").click()
    await expect(page.locator("#list-summary")).to_have_text("找到 1 人")
    await expect(page.locator("#patient-list li")).to_have_count(1)
    await page.get_by_role("button", name="显示全部").click()
    await expect(page.locator("#list-summary")).to_contain_text("共")
    # Search terms and identifiers travelled in bodies, never in a URL an access log would keep.
    assert not [url for url in requested if good in url or "赵六" in url or "%E8%B5%B5" in url]


async def test_the_administrator_manages_staff_in_the_registry(session: Session) -> None:
    page = session.page
    await sign_in(page, "admin")
    await expect(page.locator("#me-role")).to_have_text("系统管理员")
    await expect(page.locator("#card-registry")).to_be_visible()
    await expect(page.locator("#card-patients")).to_be_hidden()
    await page.locator("#card-registry").click()
    await expect(page.locator("#facility-table")).to_contain_text("温溪镇卫生院")
    await expect(page.locator("#staff-table tr[data-username='vd_a1']")).to_contain_text("村医")
    await expect(page.locator("#staff-table tr[data-username='admin']").get_by_role("button")).to_have_count(0)

    await page.get_by_label("用户名", exact=True).fill("vd_new")
    await page.get_by_label("姓名", exact=True).fill("新村医")
    await page.get_by_label("角色", exact=True).select_option("village_doctor")
    await page.get_by_label("所属机构", exact=True).select_option(label="小坦村卫生室 (CLINIC_A2)")
    await page.get_by_label("初始密码", exact=True).fill("short")
    await page.get_by_role("button", name="创建账户").click()
    # The field is flagged with a message (the service's per-code texts, e.g. 密码至少12位, when it sends them).
    await expect(page.get_by_label("初始密码", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#s-password-error")).not_to_be_empty()

    await page.get_by_label("初始密码", exact=True).fill("Village-Doct0r!")
    await page.get_by_role("button", name="创建账户").click()
    await expect(page.locator("#staff-ok")).to_have_text("账户已创建")
    row = page.locator("#staff-table tr[data-username='vd_new']")
    await expect(row).to_contain_text("小坦村卫生室")
    await expect(row).to_contain_text("在用")

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.get_by_role("button", name="停用").click()
    await expect(row).to_contain_text("已停用")
    await expect(row.get_by_role("button")).to_have_count(0)


async def test_the_bureau_analyst_sees_the_dashboard_placeholder_and_no_patients(session: Session) -> None:
    page = session.page
    await sign_in(page, "analyst")
    await expect(page.locator("#me-role")).to_have_text("卫健局分析员")
    await expect(page.locator("#card-dashboard")).to_contain_text("统计看板将显示在这里")
    await expect(page.get_by_role("link", name="患者")).to_have_count(0)
    await expect(page.locator("#notifications")).to_be_hidden()
    await page.goto("/patients")
    await expect(page.locator("#forbidden")).to_have_text("您的角色无权使用此页面")
    await expect(page.locator("#patients-app")).to_be_hidden()


async def test_signing_out_ends_the_session(session: Session, live_server: LiveServer) -> None:
    page = session.page
    await sign_in(page, "spec")
    token = await stored(page, "telemed.access_token")
    await page.get_by_role("button", name="退出登录").click()
    await page.wait_for_url("**/login")
    await expect(page.locator("#login-info")).to_have_text("您已退出登录")
    assert await stored(page, "telemed.access_token") is None
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    await page.goto("/home")  # without a session the page sends the browser back to sign in
    await page.wait_for_url("**/login")


async def test_an_expiring_token_is_refreshed_before_it_is_used(session: Session) -> None:
    page = session.page
    await sign_in(page, "rad")
    # Let the home page finish its own requests first: a refresh whose answer is lost to a page change leaves
    # the tab with a refresh token the server has already rotated away.
    await expect(page.locator("#live-status")).to_have_text("实时连接")
    first_refresh = await stored(page, "telemed.refresh_token")
    await page.evaluate("sessionStorage.setItem('telemed.expires_at', String(Date.now() + 1000))")
    await page.goto("/patients")
    await expect(page.locator("#list-summary")).to_have_text(re.compile(r"^(共 \d+ 人|暂无患者)$"))
    # The refresh token rotates; the access token gets a new lifetime (its text may repeat within one second).
    assert await stored(page, "telemed.refresh_token") not in (None, first_refresh)
    assert await stored(page, "telemed.access_token") is not None
    assert await page.evaluate("Number(sessionStorage.getItem('telemed.expires_at')) - Date.now()") > 60_000


async def test_a_rejected_token_sends_the_user_back_to_sign_in(session: Session) -> None:
    page = session.page
    await sign_in(page, "td_b")
    await page.evaluate("sessionStorage.setItem('telemed.access_token', 'not-a-token')")
    await page.reload()
    await page.wait_for_url("**/login")
    await expect(page.locator("#login-info")).to_have_text("登录已失效，请重新登录")
    assert await stored(page, "telemed.refresh_token") is None
