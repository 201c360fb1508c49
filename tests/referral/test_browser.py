"""The referral pages in a real browser (Debian's Chromium driven by Playwright) against the app under uvicorn.

A machine without ``/usr/bin/chromium`` fails these tests rather than skipping them: a skipped browser suite
would hide a broken page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from referral.plugin import plugin
from telemed.app import create_app
from telemed.core.config import Environment, Settings
from telemed.org.idcard import make_id_number
from tests.conftest import PASSWORD, Community, PageProblems, seed_community, serve_in_thread

pytestmark = pytest.mark.browser

DEFAULT_TEXT = files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")


@dataclass
class Live:
    url: str
    community: Community
    patient_id: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    settings = Settings(environment=Environment.test, data_dir=tmp_path_factory.mktemp("referral-browser"))
    app = create_app(settings, domains=[plugin], configure_logs=False)
    with serve_in_thread(app, seed_community, name="referral-live-server") as (url, community):
        with httpx.Client(base_url=url) as http:
            token = http.post("/api/v1/auth/token", data={"username": "vd_a1", "password": PASSWORD}).json()
            created = http.post(
                "/api/v1/patients",
                json={"name": "张卫国", "id_number": make_id_number("331121", dt.date(1956, 4, 9), 71)},
                headers={"Authorization": f"Bearer {token['access_token']}"},
            )
            assert created.status_code == 201, created.text
        yield Live(url=url, community=community, patient_id=created.json()["id"])


async def open_page(browser: Browser, live: Live, *, width: int = 1280) -> tuple[Page, PageProblems]:
    context = await browser.new_context(viewport={"width": width, "height": 900}, locale="en-US", base_url=live.url)
    context.set_default_timeout(10_000)
    page = await context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    return page, problems


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill(username)
    await page.get_by_label("密码", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/home")
    await expect(page.locator("#who")).to_be_visible()


async def no_horizontal_scroll(page: Page) -> bool:
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    return isinstance(overflow, int | float) and overflow <= 0


async def test_a_village_doctor_checks_and_sends_a_referral_and_the_county_accepts_it(
    browser: Browser, live: Live
) -> None:
    page, problems = await open_page(browser, live)
    await sign_in(page, "vd_a1")
    await page.get_by_role("link", name="发起转诊").first.click()
    await page.wait_for_url("**/referrals/new")
    await expect(page).to_have_title("发起转诊 · 县域医共体远程医疗与转诊平台")
    await expect(page.locator("#referral-app")).to_be_visible()

    await page.get_by_label("患者", exact=True).select_option(live.patient_id)
    await page.get_by_label("接收机构", exact=True).select_option(label="青田县人民医院")
    await page.get_by_label("诊断（ICD-10）", exact=True).fill("I10")
    await page.get_by_label("剧烈头痛", exact=True).select_option("true")
    # The live check asks for the blood pressure it needs.
    await expect(page.locator("#check-outcome")).to_have_text("不符合常规规则：需书面说明理由")
    await expect(page.locator("#check-missing")).to_contain_text("收缩压")
    await expect(page.locator("#check-missing")).to_contain_text("舒张压")

    await page.get_by_label("收缩压 (mmHg)", exact=True).fill("185")
    await page.get_by_label("舒张压 (mmHg)", exact=True).fill("115")
    await expect(page.locator("#check-outcome")).to_have_text("符合规则，可以转诊")
    await expect(page.locator("#check-priority")).to_have_text("急诊（立即）")
    await expect(page.locator("#check-direction")).to_contain_text("急诊绿色通道")
    await expect(page.locator("#check-reasons")).to_contain_text("HTN-EMERG-01")
    await expect(page.locator("#check-insurance")).to_contain_text("合规转诊")
    await expect(page.locator("#check-missing-block")).to_be_hidden()
    await expect(page.locator("#check-sla")).to_contain_text("30 分钟")

    await page.get_by_role("button", name="English").click()
    await expect(page.locator("#check-outcome")).to_have_text("Within the rules: may be sent")
    await expect(page.get_by_label("systolic blood pressure (mmHg)", exact=True)).to_have_value("185")
    await expect(page).to_have_title("New referral · County Telemedicine and Referral Platform")
    await page.get_by_role("button", name="中文").click()
    await expect(page.locator("#check-outcome")).to_have_text("符合规则，可以转诊")

    await page.get_by_role("button", name="提交转诊").click()
    await expect(page.locator("#submit-ok")).to_have_text("转诊单已提交，当前状态：待签收")
    await expect(page.locator("#check-status")).to_have_text("已按 default@2026.1 检查")
    await page.screenshot(path="/tmp/telemed-referral-new.png", full_page=True)
    await page.get_by_role("button", name="退出登录").click()
    await page.wait_for_url("**/login")

    await sign_in(page, "spec")
    await page.get_by_role("link", name="转诊工作台").first.click()
    await page.wait_for_url("**/referrals/inbox")
    item = page.locator(".referral-item", has_text="张卫国")
    await expect(item).to_contain_text("东岙村卫生室 → 青田县人民医院")
    await expect(item.locator(".sla-clock")).to_contain_text("签收剩余")
    await expect(item).to_contain_text("急诊（立即）")
    await page.screenshot(path="/tmp/telemed-referral-inbox.png", full_page=True)
    await item.get_by_role("button", name="接收").click()
    await expect(page.locator("#inbox-ok")).to_have_text("已完成操作：接收")
    accepted = page.locator(".referral-item", has_text="张卫国")
    await expect(accepted.locator(".referral-status")).to_have_text("已接收")
    await expect(accepted.locator(".sla-clock")).to_have_count(0)  # acknowledged: no clock
    await page.get_by_role("button", name="English").click()
    await expect(accepted.locator(".referral-status")).to_have_text("Accepted")
    await expect(accepted.get_by_role("button", name="Patient arrived")).to_be_visible()
    await page.get_by_role("button", name="中文").click()
    await page.context.close()
    assert problems.messages == []


async def test_the_administrator_sees_line_numbers_diffs_and_a_dry_run(browser: Browser, live: Live) -> None:
    page, problems = await open_page(browser, live)
    await sign_in(page, "admin")
    await page.get_by_role("link", name="转诊规则管理").first.click()
    await page.wait_for_url("**/referrals/policies")
    table = page.locator("#version-table")
    await expect(table).to_contain_text("default@2026.1")
    await expect(table).to_contain_text("内置默认")

    broken = DEFAULT_TEXT.replace(
        '{fact: anaphylaxis, op: "==", value: true}', '{fact: anaphylaxis, op: "~=", value: true}'
    )
    line = broken[: broken.index('op: "~="')].count("\n") + 1
    await page.get_by_label("规则内容（YAML）", exact=True).fill(broken)
    await page.get_by_role("button", name="校验并发布").click()
    await expect(page.locator("#upload-error")).to_contain_text("转诊规则文件有误，未发布；当前规则继续生效")
    await expect(page.locator("#upload-errors li").first).to_contain_text(f"第 {line} 行")
    await expect(page.locator("#upload-errors li").first).to_contain_text("~=")

    good = (
        DEFAULT_TEXT.replace("community: default", "community: qingtian", 1)
        .replace('version: "2026.1"', 'version: "2026.2"', 1)
        .replace("effective_from: 2026-01-01", "effective_from: 2026-02-01", 1)
        .replace('{fact: bp_sys, op: ">=", value: 180}', '{fact: bp_sys, op: ">=", value: 200}', 1)
    )
    await page.get_by_label("规则内容（YAML）", exact=True).fill(good)
    await page.get_by_role("button", name="校验并发布").click()
    await expect(page.locator("#upload-ok")).to_have_text("已发布：qingtian@2026.2")
    await expect(page.locator("#upload-error")).to_be_hidden()
    row = page.locator("#version-table tr", has_text="qingtian@2026.2")
    await expect(row).to_contain_text("生效中")

    await page.get_by_label("对比：旧版本", exact=True).select_option("default")
    await page.get_by_role("button", name="对比").click()
    await expect(page.locator("#diff-rules")).to_contain_text("修改规则 HTN-EMERG-01")
    await expect(page.locator("#diff-text")).to_contain_text("+community: qingtian")

    await page.get_by_label("回溯月数", exact=True).fill("3")
    await page.get_by_role("button", name="试运行").click()
    await expect(page.locator("#dryrun-summary")).to_contain_text("按 qingtian@2026.2 重新判断")
    assert await no_horizontal_scroll(page)
    await page.screenshot(path="/tmp/telemed-referral-policies.png", full_page=True)
    await page.context.close()
    assert problems.messages == []


async def test_the_referral_form_fits_a_phone(browser: Browser, live: Live) -> None:
    page, problems = await open_page(browser, live, width=375)
    await sign_in(page, "vd_a1")
    await page.goto("/referrals/new")
    await expect(page.locator("#referral-app")).to_be_visible()
    await page.locator("#facts-more summary").click()
    assert await no_horizontal_scroll(page)
    await page.goto("/referrals/inbox?box=outbox")
    await expect(page.locator("#tab-outbox")).to_have_attribute("aria-selected", "true")
    assert await no_horizontal_scroll(page)
    await page.screenshot(path="/tmp/telemed-referral-outbox-375.png", full_page=True)
    await page.goto("/referrals/policies")
    await expect(page.locator("#forbidden")).to_be_visible()  # not an administrator
    await page.context.close()
    assert problems.messages == []
