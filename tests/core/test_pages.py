"""The page kit (telemed.core.pages): one policy, one language rule, one shell for the pages of every domain."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.requests import Request as StarletteRequest

from imaging.web import pages as imaging_pages
from referral.web import pages as referral_pages
from telemed.core.errors import install_error_handlers
from telemed.core.pages import (
    CONTENT_SECURITY_POLICY,
    SHELL_DIR,
    DomainPages,
    content_security_policy,
    page_language,
    shell_messages,
)
from telemed.web import pages as shell_pages


def make_domain(web_dir: Path, *, zh: dict[str, str] | None = None, en: dict[str, str] | None = None) -> Path:
    """A domain's web folder: one page that extends the shell, its texts, a script and a stylesheet."""
    (web_dir / "templates").mkdir(parents=True)
    (web_dir / "static" / "i18n").mkdir(parents=True)
    (web_dir / "static" / "js").mkdir()
    (web_dir / "static" / "css").mkdir()
    (web_dir / "templates" / "page.html").write_text(
        '{% extends "shell/base.html" %}\n'
        '{% block head %}\n  <link rel="stylesheet" href="/static-demo/css/demo.css">\n{% endblock %}\n'
        '{% block nav_main %}\n        <a href="/demo" data-nav="demo" data-i18n="demo.nav">{{ t("demo.nav") }}</a>'
        "\n{% endblock %}\n"
        '{% block main %}<h1 data-i18n="demo.heading">{{ t("demo.heading", who=who) }}</h1>{% endblock %}\n',
        encoding="utf-8",
    )
    texts = {
        "zh-CN": zh or {"demo.nav": "演示", "demo.heading": "你好，{who}", "demo.title": "演示页"},
        "en": en or {"demo.nav": "Demo", "demo.heading": "Hello, {who}", "demo.title": "Demo page"},
    }
    for lang, messages in texts.items():
        (web_dir / "static" / "i18n" / f"{lang}.json").write_text(json.dumps(messages), encoding="utf-8")
    (web_dir / "static" / "js" / "demo.js").write_text("export {};\n", encoding="utf-8")
    (web_dir / "static" / "css" / "demo.css").write_text("body { margin: 0; }\n", encoding="utf-8")
    (web_dir / "static" / ".secret").write_text("hidden", encoding="utf-8")
    (web_dir / "private.txt").write_text("outside the static folder", encoding="utf-8")
    return web_dir


@pytest.fixture
def demo_pages(tmp_path: Path) -> DomainPages:
    return DomainPages("demo", make_domain(tmp_path / "web"), "/static-demo", img_src=("blob:",))


@pytest.fixture
async def demo_client(demo_pages: DomainPages) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()
    demo_pages.add_asset_route(router)

    @router.get("/demo")
    async def demo(request: Request) -> Response:
        return demo_pages.render(request, "page.html", page="demo", title_key="demo.title", who="李医生")

    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


def test_the_policy_allows_this_origin_only() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert content_security_policy(img_src=("blob:", "blob:")).count("blob:") == 1
    assert "img-src 'self' blob:;" in content_security_policy(img_src=("blob:",))


@pytest.mark.parametrize("source", ["https://cdn.example.org", "*", "'unsafe-inline'", "http:", "//evil.example"])
def test_a_domain_cannot_widen_the_image_policy_to_other_hosts(source: str) -> None:
    with pytest.raises(ValueError, match="img-src"):
        content_security_policy(img_src=(source,))


def test_every_page_shares_one_policy_and_one_shell() -> None:
    """The shell and both domains use the kit rather than copies of it."""
    assert shell_pages.CONTENT_SECURITY_POLICY is CONTENT_SECURITY_POLICY
    assert referral_pages.CONTENT_SECURITY_POLICY == CONTENT_SECURITY_POLICY
    assert content_security_policy(img_src=("blob:",)) == imaging_pages.CONTENT_SECURITY_POLICY
    assert shell_pages.WEB_DIR.resolve() == SHELL_DIR
    assert isinstance(referral_pages.pages, DomainPages)
    assert isinstance(imaging_pages.pages, DomainPages)
    for web_dir in (referral_pages.WEB_DIR, imaging_pages.WEB_DIR):
        for template in (web_dir / "templates").glob("*.html"):
            source = template.read_text(encoding="utf-8")
            assert 'class="topbar"' not in source, template  # the header is the shell's, not a copy
            assert "Content-Security-Policy" not in source
        for module in web_dir.glob("*.py"):
            source = module.read_text(encoding="utf-8")
            assert "default-src" not in source, module
            assert "def page_language" not in source, module


def _request(cookie: str | None) -> StarletteRequest:
    headers = [(b"cookie", f"lang={cookie}".encode())] if cookie is not None else []
    headers.append((b"accept-language", b"en-US,en;q=0.9"))
    return StarletteRequest({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


@pytest.mark.parametrize(("cookie", "expected"), [(None, "zh-CN"), ("en", "en"), ("zh-CN", "zh-CN"), ("fr", "zh-CN")])
def test_the_language_is_the_switchs_choice_else_chinese(cookie: str | None, expected: str) -> None:
    assert page_language(_request(cookie)) == expected


async def test_a_domain_page_is_the_shells_page_with_its_own_parts(demo_client: httpx.AsyncClient) -> None:
    response = await demo_client.get("/demo")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == content_security_policy(img_src=("blob:",))
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["vary"] == "Cookie"
    html = response.text
    assert '<html lang="zh-CN">' in html
    assert "<title>演示页 · 县域医共体远程医疗与转诊平台</title>" in html
    assert '<link rel="stylesheet" href="/static/css/app.css">' in html
    assert '<link rel="stylesheet" href="/static-demo/css/demo.css">' in html
    assert '<script type="module" src="/static-demo/js/demo.js"></script>' in html
    assert 'data-title-key="demo.title"' in html
    assert "你好，李医生" in html
    assert "退出登录" in html  # the shell's header, its texts from the shell's files
    nav = html[html.index('id="main-nav"') : html.index("</nav>")]
    assert nav.index('data-nav="patients"') < nav.index('data-nav="demo"') < nav.index('data-nav="registry"')
    blocks = dict(re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', html, re.S))
    messages = json.loads(blocks["i18n-messages"])
    assert messages["demo.nav"] == "演示"
    assert messages["nav.signout"] == "退出登录"
    assert json.loads(blocks["i18n-sources"]) == ["/static-demo/i18n/"]
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert body.strip() == "" or 'type="application/json"' in attributes

    demo_client.cookies.set("lang", "en")
    english = (await demo_client.get("/demo")).text
    assert '<html lang="en">' in english
    assert "<title>Demo page · County Telemedicine and Referral Platform</title>" in english
    assert "Hello, 李医生" in english
    assert "Sign out" in english


async def test_domain_texts_win_over_the_shells(tmp_path: Path) -> None:
    pages = DomainPages(
        "demo",
        make_domain(tmp_path / "web", zh={"nav.home": "主页", "demo.title": "演示"}, en={"nav.home": "Start"}),
        "/static-demo",
    )
    assert pages.messages("zh-CN") == {"nav.home": "主页", "demo.title": "演示"}
    assert shell_messages("zh-CN")["nav.home"] == "首页"


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("js/demo.js", "text/javascript"), ("css/demo.css", "text/css"), ("i18n/en.json", "application/json")],
)
async def test_assets_are_served_with_their_types(
    demo_client: httpx.AsyncClient, demo_pages: DomainPages, path: str, media_type: str
) -> None:
    response = await demo_client.get(f"/static-demo/{path}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == (demo_pages.static_dir / path).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/static-demo/../private.txt",
        "/static-demo/%2e%2e/private.txt",
        "/static-demo/js/%2e%2e/%2e%2e/private.txt",
        "/static-demo/..%2fprivate.txt",
        "/static-demo/.secret",
        "/static-demo/js",
        "/static-demo/js/missing.js",
        "/static-demo/",
    ],
)
async def test_nothing_outside_the_static_folder_is_served(demo_client: httpx.AsyncClient, path: str) -> None:
    response = await demo_client.get(path)
    assert response.status_code == 404, path
    assert "outside the static folder" not in response.text


async def test_a_link_out_of_the_static_folder_is_refused(tmp_path: Path) -> None:
    web_dir = make_domain(tmp_path / "web")
    (web_dir / "static" / "js" / "escape.js").symlink_to(web_dir / "private.txt")
    pages = DomainPages("demo", web_dir, "/static-demo")
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()
    pages.add_asset_route(router)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await client.get("/static-demo/js/escape.js")).status_code == 404
        assert (await client.get("/static-demo/js/demo.js")).status_code == 200


@pytest.mark.parametrize("prefix", ["static-demo", "//cdn.example.org", "/static"])
def test_the_static_prefix_is_a_path_of_its_own(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError, match="static prefix"):
        DomainPages("demo", make_domain(tmp_path / "web"), prefix)


def test_a_broken_translation_fails_at_start_up(tmp_path: Path) -> None:
    web_dir = make_domain(tmp_path / "web")
    (web_dir / "static" / "i18n" / "en.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        DomainPages("demo", web_dir, "/static-demo")
    (web_dir / "static" / "i18n" / "en.json").unlink()
    with pytest.raises(FileNotFoundError):
        DomainPages("demo", web_dir, "/static-demo")
