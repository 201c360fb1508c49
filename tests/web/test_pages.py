"""The web shell over HTTP: every page answers in zh-CN with a strict CSP, every asset it needs is served by the
app itself, and nothing points at another host (village clinics may have no route to a CDN)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from telemed.app import create_app
from telemed.core.auth import Role
from telemed.core.config import Settings
from telemed.core.plugins import DomainPlugin, NavLink
from telemed.web.pages import STATIC_DIR, TEMPLATES_DIR, mount_web
from tests.conftest import PASSWORD, Community

PAGES: dict[str, list[str]] = {
    "/login": ["登录", "用户名", "密码", "县域医共体远程医疗与转诊平台"],
    "/home": ["常用功能", "患者", "消息通知", "机构与人员", "服务开展情况看板", "退出登录"],
    "/patients": ["登记新患者", "姓名", "身份证号", "手机号", "按姓名、身份证号或手机号查找"],
    "/admin/registry": ["新建人员账户", "人员账户", "初始密码", "系统管理员", "村医"],
}
EXTERNAL = re.compile(r"https?://", re.IGNORECASE)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


class PageParts(HTMLParser):
    """The parts of a page that matter to CSP and to offline use: scripts, styles, links, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.references: list[str] = []
        self.inline_styles = 0
        self.inline_handlers: list[str] = []
        self.json_blocks: dict[str, str] = {}
        self._json_id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
            if attributes.get("type") == "application/json":
                self._json_id = attributes.get("id") or ""
        if tag == "style" or "style" in attributes:
            self.inline_styles += 1
        self.inline_handlers += [name for name in attributes if name.startswith("on")]
        for name in ("src", "href", "action"):
            value = attributes.get(name)
            if value:
                self.references.append(value)

    def handle_data(self, data: str) -> None:
        if self._json_id is not None:
            self.json_blocks[self._json_id] = self.json_blocks.get(self._json_id, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._json_id = None


def parse(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    return parts


def static_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file() and p.suffix in suffixes)


async def test_root_sends_the_browser_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code in (302, 303, 307)
    assert response.headers["location"] == "/login"


@pytest.mark.parametrize(("path", "texts"), list(PAGES.items()))
async def test_page_is_zh_cn_html_with_a_self_only_csp(client: httpx.AsyncClient, path: str, texts: list[str]) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN">' in response.text
    for text in texts:
        assert text in response.text, text
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "http" not in csp
    assert "*" not in csp


@pytest.mark.parametrize("path", list(PAGES))
async def test_page_runs_no_inline_code(client: httpx.AsyncClient, path: str) -> None:
    """Under ``script-src 'self'`` an inline script, style or handler would be blocked: there must be none."""
    parts = parse((await client.get(path)).text)
    assert parts.inline_styles == 0
    assert parts.inline_handlers == []
    for script in parts.scripts:
        if script.get("type") == "application/json":
            continue
        src = script.get("src") or ""
        assert src.startswith("/static/js/"), script
        assert script.get("type") == "module"


async def test_the_english_choice_renders_pages_in_english(client: httpx.AsyncClient) -> None:
    client.cookies.set("lang", "en")
    response = await client.get("/login")
    assert '<html lang="en">' in response.text
    assert "Username" in response.text
    assert "Password" in response.text
    assert "用户名" not in response.text
    assert response.headers["vary"] == "Cookie"
    client.cookies.set("lang", "fr")  # anything unknown falls back to Chinese
    assert '<html lang="zh-CN">' in (await client.get("/login")).text


async def test_the_browser_locale_does_not_switch_the_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/home", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert '<html lang="zh-CN">' in response.text


@pytest.mark.parametrize("path", list(PAGES))
async def test_every_asset_a_page_names_is_served_by_the_app(client: httpx.AsyncClient, path: str) -> None:
    parts = parse((await client.get(path)).text)
    assets = [ref for ref in parts.references if ref.startswith("/static/")]
    assert any(a.endswith(".css") for a in assets)
    assert any(s.get("src") for s in parts.scripts)
    for asset in assets + [s["src"] for s in parts.scripts if s.get("src")]:
        assert asset is not None
        response = await client.get(asset)
        assert response.status_code == 200, asset
    for ref in parts.references:
        assert ref.startswith(("/", "#")), ref
        assert not ref.startswith("//"), ref


async def test_static_assets_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    expected = {".css": "text/css", ".js": "javascript", ".json": "application/json", ".svg": "image/svg+xml"}
    files = static_files(*expected)
    assert {p.suffix for p in files} == set(expected)
    for path in files:
        response = await client.get("/static/" + path.relative_to(STATIC_DIR).as_posix())
        assert response.status_code == 200, path
        assert expected[path.suffix] in response.headers["content-type"], path
        assert response.content == path.read_bytes()


async def test_module_imports_and_css_urls_resolve(client: httpx.AsyncClient) -> None:
    """What the scripts import and the stylesheet loads is served too (the browser would fetch it)."""
    for script in static_files(".js"):
        for target in re.findall(r'from\s+"(\./[^"]+)"', script.read_text(encoding="utf-8")):
            response = await client.get(f"/static/js/{target.removeprefix('./')}")
            assert response.status_code == 200, (script.name, target)
    for sheet in static_files(".css"):
        for target in re.findall(r'url\("?([^")]+)"?\)', sheet.read_text(encoding="utf-8")):
            assert not target.startswith(("data:", "/")), target
            assert "//" not in target, target
            resolved = (sheet.parent / target).resolve()
            response = await client.get("/static/" + resolved.relative_to(STATIC_DIR).as_posix())
            assert response.status_code == 200, target


async def test_nothing_points_at_another_host(client: httpx.AsyncClient) -> None:
    for path in PAGES:
        html = (await client.get(path)).text
        assert not EXTERNAL.search(html), path
    for asset in static_files(".html", ".css", ".js", ".json"):
        assert not EXTERNAL.search(asset.read_text(encoding="utf-8")), asset
    for template in TEMPLATES_DIR.glob("*.html"):
        assert not EXTERNAL.search(template.read_text(encoding="utf-8")), template
    for image in static_files(".svg"):
        # The XML namespace is a name, not a place the browser goes.
        assert not EXTERNAL.search(image.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")), image
    sheet = (STATIC_DIR / "css" / "app.css").read_text(encoding="utf-8")
    assert "@import" not in sheet
    assert "@font-face" not in sheet


def test_both_languages_have_the_same_texts() -> None:
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text(encoding="utf-8"))
    assert zh.keys() == en.keys()
    assert all(isinstance(v, str) and v.strip() for v in [*zh.values(), *en.values()])
    for name, values in (("zh", zh), ("en", en)):
        for key, text in values.items():
            assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", zh[key])), (name, key)
    for role in Role:
        assert f"role.{role.value}" in zh
    for tier in ("county", "township", "village"):
        assert f"tier.{tier}" in zh


def test_every_text_key_used_exists() -> None:
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
    used: set[str] = set()
    for template in TEMPLATES_DIR.glob("*.html"):
        source = template.read_text(encoding="utf-8")
        used |= set(re.findall(r'data-i18n(?:-aria-label|-placeholder)?="([a-z0-9_.]*[a-z0-9_])"', source))
        used |= set(re.findall(r"""\bt\(["']([a-z0-9_.]*[a-z0-9_])["']""", source))
    for script in static_files(".js"):
        source = script.read_text(encoding="utf-8")
        used |= set(re.findall(r"""\bt\(["']([a-z0-9_.]*[a-z0-9_])["']""", source))
        used |= set(re.findall(r"""(?:okKey|infoKey|goToLogin\()\s*=?\s*["']([a-z0-9_.]*[a-z0-9_])["']""", source))
    assert len(used) > 40
    assert sorted(used - zh.keys()) == []


async def test_page_carries_the_current_language_texts(client: httpx.AsyncClient) -> None:
    parts = parse((await client.get("/login")).text)
    embedded = json.loads(parts.json_blocks["i18n-messages"])
    assert embedded == json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))


async def test_home_carries_the_domains_links_as_data(settings: Settings) -> None:
    hostile = "</script><script>alert(1)</script>"
    domain = DomainPlugin(
        name="referral",
        title_zh="双向转诊",
        title_en="Referrals",
        nav_links=(
            NavLink("/referrals", "转诊", "Referrals", frozenset({"village_doctor", "specialist"})),
            NavLink("/worklist", hostile, "Worklist", frozenset({"radiologist"})),
        ),
    )
    app = create_app(settings, domains=[domain], configure_logs=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        html = (await http.get("/home")).text
    links = json.loads(parse(html).json_blocks["nav-links"])
    assert links[0] == {
        "href": "/referrals",
        "label_zh": "转诊",
        "label_en": "Referrals",
        "roles": ["specialist", "village_doctor"],
        "domain": "referral",
    }
    assert links[1]["label_zh"] == hostile  # intact as data ...
    assert hostile not in html  # ... and unable to end the block it sits in


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        (NavLink("https://example.org/x", "外链", "Away", frozenset({"admin"})), "path on this site"),
        (NavLink("//example.org/x", "外链", "Away", frozenset({"admin"})), "path on this site"),
        (NavLink("/x", "未知", "Unknown", frozenset({"nurse"})), "unknown roles"),
    ],
)
def test_a_domain_link_must_stay_on_this_site(link: NavLink, complaint: str) -> None:
    domain = DomainPlugin(name="bad", title_zh="坏", title_en="Bad", nav_links=(link,))
    with pytest.raises(ValueError, match=complaint):
        mount_web(FastAPI(), [domain])


async def test_sign_in_errors_come_in_the_language_the_page_asks_for(
    client: httpx.AsyncClient, community: Community
) -> None:
    """The sign-in script sends Accept-Language for the chosen language and shows the problem's detail."""
    form = {"username": "vd_a1", "password": PASSWORD + "x", "grant_type": "password"}
    zh = await client.post("/api/v1/auth/token", data=form, headers={"Accept-Language": "zh-CN"})
    en = await client.post("/api/v1/auth/token", data=form, headers={"Accept-Language": "en"})
    assert zh.status_code == en.status_code == 401
    assert zh.json()["detail"] == "用户名或密码错误"
    assert en.json()["detail"] == "Wrong username or password"


async def test_home_carries_the_domains_event_labels_in_both_languages(settings: Settings) -> None:
    """Every event a shipped domain addresses to people reads in that domain's words, zh-CN and English."""
    from imaging.events import STUDY_ROUTED, STUDY_STABLE
    from imaging.export import EXPORT_FINISHED
    from imaging.reading import REPORT_SIGNED
    from referral import events as referral_events
    from telemed.core.plugins import discover_domains

    emitted = {value for name, value in vars(referral_events).items() if name.isupper() and isinstance(value, str)
               and value.startswith("referral.")}  # fmt: skip
    emitted |= {STUDY_STABLE, STUDY_ROUTED, REPORT_SIGNED, EXPORT_FINISHED}
    domains = discover_domains()
    app = create_app(settings, domains=domains, configure_logs=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        html = (await http.get("/home")).text
    labels = json.loads(parse(html).json_blocks["event-labels"])
    assert set(labels) == {"zh-CN", "en"}
    assert emitted <= set(labels["zh-CN"])
    assert emitted <= set(labels["en"])
    for name in emitted:
        assert any("\u4e00" <= char <= "\u9fff" for char in labels["zh-CN"][name]), name
        assert labels["en"][name].isascii(), name


def test_a_domain_may_label_only_its_own_events() -> None:
    from telemed.web.pages import event_label_data

    trespasser = DomainPlugin(name="imaging", title_zh="影像", title_en="Imaging",
                              event_labels={"referral.accepted": ("转诊已接收", "Accepted")})  # fmt: skip
    with pytest.raises(ValueError, match="does not own"):
        event_label_data([trespasser])
