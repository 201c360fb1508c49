"""The imaging viewer page over ASGI: served zh-CN first under the strict policy, its assets local only."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from imaging.web.pages import STATIC_DIR

ASSETS = (
    ("/static-imaging/js/viewer.js", "text/javascript"),
    ("/static-imaging/css/viewer.css", "text/css"),
    ("/static-imaging/i18n/zh-CN.json", "application/json"),
    ("/static-imaging/i18n/en.json", "application/json"),
)
EXTERNAL = re.compile(r"(?:https?:)?//(?!127\.0\.0\.1|localhost)[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


async def test_viewer_page_is_chinese_first_under_the_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/imaging/viewer", params={"study": "1.2.3"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'self'" in policy
    assert "img-src 'self' blob:" in policy
    assert "unsafe-inline" not in policy
    html = response.text
    assert '<html lang="zh-CN">' in html
    for label in ("肺窗", "纵隔窗", "骨窗", "脑窗", "腹部", "默认"):
        assert label in html
    assert 'data-window="400,1800"' in html
    assert 'data-window="-600,1500"' in html
    assert '<script type="module" src="/static-imaging/js/viewer.js"></script>' in html
    # No inline script: the only <script> bodies are JSON data blocks.
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL):
        assert body.strip() == "" or 'type="application/json"' in attributes
    assert not EXTERNAL.search(html)


async def test_viewer_page_in_english_when_chosen(client: httpx.AsyncClient) -> None:
    client.cookies.set("lang", "en")
    response = await client.get("/imaging/viewer")
    assert response.status_code == 200
    assert '<html lang="en">' in response.text
    assert "Bone" in response.text


@pytest.mark.parametrize(("path", "media_type"), ASSETS)
async def test_assets_are_served_and_local(client: httpx.AsyncClient, path: str, media_type: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert not EXTERNAL.search(response.text)


async def test_assets_outside_the_static_folder_are_refused(client: httpx.AsyncClient) -> None:
    assert (await client.get("/static-imaging/../pages.py")).status_code == 404
    assert (await client.get("/static-imaging/%2e%2e/pages.py")).status_code == 404
    assert (await client.get("/static-imaging/js/missing.js")).status_code == 404


def test_both_languages_have_the_same_texts() -> None:
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text(encoding="utf-8"))
    assert zh.keys() == en.keys()
