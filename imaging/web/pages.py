"""The imaging viewer page: a study's series as thumbnails, then one image at a time with window presets.

Like the referral pages it reuses the web shell the way a browser sees it (the shell's stylesheet and
``/static/js/core.js`` for the session and language switch), carries no patient data, and fetches everything
through DICOMweb with the bearer token. The domain's own texts, scripts and styles are under
``/static-imaging/``.
"""

from __future__ import annotations

import functools
import json
import mimetypes
from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from imaging.render import PRESETS
from telemed.core.auth import CLINICAL_ROLES
from telemed.core.errors import NotFound

WEB_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = WEB_DIR / "static"
LANGUAGES: Final = ("zh-CN", "en")
DEFAULT_LANGUAGE: Final = "zh-CN"

#: The shell's policy (telemed.web.pages); ``blob:`` images are the frames fetched with the bearer token.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "Vary": "Cookie",
}
ASSET_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}
CLINICAL: Final = " ".join(sorted(role.value for role in CLINICAL_ROLES))
#: The preset buttons, in the order a radiologist expects; "default" asks for the image's own window.
PRESET_ORDER: Final = ("default", "lung", "mediastinum", "bone", "brain", "abdomen")

templates = Jinja2Templates(directory=WEB_DIR / "templates")
router = APIRouter(include_in_schema=False)


@functools.cache
def domain_messages(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}")
    messages: dict[str, str] = json.loads((STATIC_DIR / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    return messages


@functools.cache
def shell_messages(lang: str) -> dict[str, str]:
    try:
        text = files("telemed").joinpath("web", "static", "i18n", f"{lang}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return {}
    messages: dict[str, str] = json.loads(text)
    return messages


def page_language(request: Request) -> str:
    chosen = request.cookies.get("lang", "")
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def preset_windows() -> list[dict[str, str]]:
    out = []
    for name in PRESET_ORDER:
        center, width = PRESETS.get(name, (0.0, 0.0))
        window = f"{center:g},{width:g}" if name in PRESETS else ""
        out.append({"name": name, "window": window})
    return out


@router.get("/imaging/viewer", response_class=HTMLResponse)
async def viewer_page(request: Request) -> Response:
    lang = page_language(request)
    own = domain_messages(lang)
    merged = {**shell_messages(lang), **own}

    def t(key: str) -> str:
        return merged.get(key, key)

    return templates.TemplateResponse(
        request,
        "viewer.html",
        {
            "lang": lang,
            "t": t,
            "messages": merged,
            "domain_messages": own,
            "page": "imaging-viewer",
            "title_key": "imaging.viewer.title",
            "clinical_roles": CLINICAL,
            "presets": preset_windows(),
        },
        headers=PAGE_HEADERS,
    )


@router.get("/static-imaging/{asset:path}")
async def asset(asset: str) -> FileResponse:
    root = STATIC_DIR
    path = (root / asset).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.name.startswith("."):
        raise NotFound()
    media_type = ASSET_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
