"""The referral pages: the referral form with its live rule check, the inbox with SLA clocks, the policy admin page.

They reuse the web shell the way a browser sees it, not by importing it (a domain may import only
``telemed.core`` and ``telemed.org.public``): the shell's stylesheet and ``/static/js/core.js`` (session, API
client, language switch, navigation), the same header markup, and the shell's message files read as package
data so the header speaks the same words. The domain's own texts, scripts and styles are served under
``/static-referral/``. Like the shell's pages, these carry no patient data and no identity: the browser fetches
everything through the API with its bearer token, under the same strict Content-Security-Policy.
"""

from __future__ import annotations

import functools
import json
import mimetypes
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from referral.state import BUSINESS_STATUS_NAMES
from telemed.core.auth import CLINICAL_ROLES, Role
from telemed.core.errors import NotFound

WEB_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = WEB_DIR / "static"
LANGUAGES: Final = ("zh-CN", "en")
DEFAULT_LANGUAGE: Final = "zh-CN"

#: The shell's policy (telemed.web.pages): only this origin, no inline script or style.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
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
ASSET_TYPES: Final = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

CLINICAL: Final = " ".join(sorted(role.value for role in CLINICAL_ROLES))
SENDERS: Final = " ".join(sorted(role.value for role in (Role.village_doctor, Role.township_doctor, Role.specialist)))

templates = Jinja2Templates(directory=WEB_DIR / "templates")


@functools.cache
def domain_messages(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}")
    messages: dict[str, str] = json.loads((STATIC_DIR / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    return messages


@functools.cache
def shell_messages(lang: str) -> dict[str, str]:
    """The shell's texts (header, errors core.js shows), read as package data of the host."""
    try:
        text = files("telemed").joinpath("web", "static", "i18n", f"{lang}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return {}
    messages: dict[str, str] = json.loads(text)
    return messages


def page_language(request: Request) -> str:
    """zh-CN unless the user chose English with the shell's switch (its ``lang`` cookie)."""
    chosen = request.cookies.get("lang", "")
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def render(request: Request, template: str, *, page: str, title_key: str, **context: Any) -> Response:
    lang = page_language(request)
    own = domain_messages(lang)
    merged = {**shell_messages(lang), **own}

    def t(key: str, **values: object) -> str:
        text = merged.get(key, key)
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    return templates.TemplateResponse(
        request,
        template,
        {
            "lang": lang,
            "t": t,
            "messages": merged,
            "domain_messages": own,
            "page": page,
            "title_key": title_key,
            "clinical_roles": CLINICAL,
            "sender_roles": SENDERS,
            "statuses": [status.value for status in BUSINESS_STATUS_NAMES],
            **context,
        },
        headers=PAGE_HEADERS,
    )


router = APIRouter(include_in_schema=False)


@router.get("/referrals")
async def referrals_root() -> RedirectResponse:
    return RedirectResponse("/referrals/inbox", status_code=303)


@router.get("/referrals/new", response_class=HTMLResponse)
async def new_referral_page(request: Request) -> Response:
    return render(request, "new.html", page="referral-new", title_key="referral.page.new")


@router.get("/referrals/inbox", response_class=HTMLResponse)
async def inbox_page(request: Request) -> Response:
    return render(request, "inbox.html", page="referral-inbox", title_key="referral.page.inbox")


@router.get("/referrals/policies", response_class=HTMLResponse)
async def policies_page(request: Request) -> Response:
    return render(request, "policies.html", page="referral-policies", title_key="referral.page.policies")


@router.get("/static-referral/{asset:path}")
async def asset(asset: str) -> FileResponse:
    """The domain's scripts, styles and texts (a plain route: a mounted app would not travel with the router)."""
    root = STATIC_DIR
    path = (root / asset).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.name.startswith("."):
        raise NotFound()
    media_type = ASSET_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
