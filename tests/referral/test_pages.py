"""The referral pages as served: the shell's header and policy, zh-CN first, every asset from this origin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from referral.plugin import plugin
from referral.web.pages import CONTENT_SECURITY_POLICY

WEB = Path(__file__).resolve().parents[2] / "referral" / "web"
CORE_JS = Path(__file__).resolve().parents[2] / "telemed" / "web" / "static" / "js" / "core.js"
PAGES = {
    "/referrals/new": ("发起转诊", "New referral", "referral-new"),
    "/referrals/inbox": ("转诊工作台", "Referral desk", "referral-inbox"),
    "/referrals/policies": ("转诊规则管理", "Referral policy", "referral-policies"),
}


def _messages(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((WEB / "static" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("path", list(PAGES))
async def test_pages_open_in_chinese_under_the_shells_policy(client: httpx.AsyncClient, path: str) -> None:
    zh, en, script = PAGES[path]
    page = await client.get(path)
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    html = page.text
    assert '<html lang="zh-CN">' in html
    assert f"<title>{zh} · 县域医共体远程医疗与转诊平台</title>" in html
    assert f'<script type="module" src="/static-referral/js/{script}.js"></script>' in html
    assert 'href="/static/css/app.css"' in html
    assert 'href="/static-referral/css/referral.css"' in html
    assert "退出登录" in html
    assert 'id="main-nav"' in html
    # No inline script: every script is a file of this origin or an inert JSON data block.
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/' in tag or 'type="application/json"' in tag, tag
    assert "http://" not in html
    assert "https://" not in html
    client.cookies.set("lang", "en")  # what the shell's language switch sets
    english = await client.get(path)
    client.cookies.delete("lang")
    assert '<html lang="en">' in english.text
    assert f"<title>{en} · County Telemedicine and Referral Platform</title>" in english.text
    assert "Sign out" in english.text


async def test_the_root_leads_to_the_desk(client: httpx.AsyncClient) -> None:
    response = await client.get("/referrals")
    assert response.status_code == 303
    assert response.headers["location"] == "/referrals/inbox"


@pytest.mark.parametrize(
    ("asset", "media_type"),
    [
        ("js/referral-new.js", "text/javascript"),
        ("js/referral-i18n.js", "text/javascript"),
        ("css/referral.css", "text/css"),
        ("i18n/en.json", "application/json"),
    ],
)
async def test_assets_are_served_by_the_app(client: httpx.AsyncClient, asset: str, media_type: str) -> None:
    response = await client.get(f"/static-referral/{asset}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (WEB / "static" / asset).read_bytes()


async def test_nothing_outside_the_asset_folder_is_served(client: httpx.AsyncClient) -> None:
    for path in ("/static-referral/%2e%2e/pages.py", "/static-referral/js/missing.js", "/static-referral/js"):
        assert (await client.get(path)).status_code == 404, path


def test_every_text_key_exists_in_both_languages() -> None:
    zh, en = _messages("zh-CN"), _messages("en")
    assert set(zh) == set(en)
    assert all(zh.values())
    assert all(en.values())
    used: set[str] = set()
    for template in (WEB / "templates").glob("*.html"):
        text = template.read_text(encoding="utf-8")
        used |= set(re.findall(r'data-rt(?:-aria-label|-title)?="([^"{]+)"', text))
        used |= set(re.findall(r't\("(referral\.[^"]+)"\)', text))
    for script in (WEB / "static" / "js").glob("*.js"):
        used |= set(re.findall(r'rt\("(referral\.[^"$]+)"', script.read_text(encoding="utf-8")))
    missing = {k for k in used if k.startswith("referral.") and k not in zh}
    assert not missing
    # Statuses, actions, reasons and priorities are looked up by pattern: every code has its text.
    from referral.state import REJECT_REASON_NAMES, USER_ACTIONS, ReferralStatus

    for status in ReferralStatus:
        assert f"referral.status.{status.value}" in zh
    for action in USER_ACTIONS:
        assert f"referral.action.{action}" in zh
    for reason in REJECT_REASON_NAMES:
        assert f"referral.reason.{reason.value}" in zh
    for priority in ("routine", "urgent", "asap", "stat"):
        assert f"referral.priority.{priority}" in zh


def test_scripts_use_only_this_origin_and_the_shells_exports() -> None:
    exported = set(re.findall(r"export (?:async )?(?:function|const|class) (\w+)", CORE_JS.read_text(encoding="utf-8")))
    for script in (WEB / "static" / "js").glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert "http://" not in text
        assert "https://" not in text
        assert "eval(" not in text
        assert "innerHTML" not in text
        for names, source in re.findall(r"import \{([^}]*)\} from \"([^\"]+)\"", text):
            imported = {n.split(" as ")[0].strip() for n in names.split(",") if n.strip()}
            if source == "/static/js/core.js":
                assert imported <= exported, (script.name, imported - exported)
            else:
                assert source.startswith("./"), source
                assert (script.parent / source).is_file(), source


async def test_the_home_page_links_to_the_referral_pages_by_role(client: httpx.AsyncClient) -> None:
    home = (await client.get("/home")).text
    data = json.loads(re.search(r'<script type="application/json" id="nav-links">(.*?)</script>', home, re.S)[1])  # type: ignore[index]
    links = {link["href"]: set(link["roles"]) for link in data if link["domain"] == "referral"}
    assert links == {
        "/referrals/new": {"village_doctor", "township_doctor", "specialist"},
        "/referrals/inbox": {"village_doctor", "township_doctor", "specialist", "radiologist"},
        "/referrals/policies": {"admin"},
    }
    assert {link.href for link in plugin.nav_links} == set(links)
