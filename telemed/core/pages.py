"""The page kit the host lends to every domain that serves pages: one policy, one language rule, one shell.

A domain's pages look and behave like the shell's (``telemed.web``): the same header, language switch and
session handling from ``/static/js/core.js``, the same strict Content-Security-Policy, zh-CN first. Before this
kit each domain carried its own copy of that machinery; now a domain says what is its own and calls
:class:`DomainPages`::

    pages = DomainPages("referral", Path(__file__).parent, "/static-referral")
    pages.add_asset_route(router)

    @router.get("/referrals/inbox")
    async def inbox(request: Request) -> Response:
        return pages.render(request, "inbox.html", page="referral-inbox", title_key="referral.page.inbox")

and its templates ``{% extends "shell/base.html" %}``, filling the blocks the shell leaves open (``head`` for
its stylesheet, ``nav_main`` / ``nav_admin`` for its links, ``main``, ``data``).

The shell's templates and message files are package data of ``telemed`` (``telemed/web/templates``,
``telemed/web/static/i18n``): read as files, never imported, so ``telemed.core`` still imports nothing of
``telemed.web`` (the import-linter contract) and domains still reach the host only through ``telemed.core``.
"""

from __future__ import annotations

import functools
import json
import mimetypes
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape

from telemed.core.auth import CLINICAL_ROLES
from telemed.core.errors import NotFound

LANGUAGES: Final = ("zh-CN", "en")
DEFAULT_LANGUAGE: Final = "zh-CN"
#: The cookie the shell's language switch sets; the API's problem documents honour it too (telemed.core.errors).
LANGUAGE_COOKIE: Final = "lang"

#: Where the shell keeps its templates and texts: package data beside this package, not a module to import.
SHELL_DIR: Final = Path(__file__).resolve().parent.parent / "web"
SHELL_TEMPLATES: Final = SHELL_DIR / "templates"
SHELL_MESSAGES: Final = SHELL_DIR / "static" / "i18n"
#: The name under which a domain's templates reach the shell's: ``{% extends "shell/base.html" %}``.
SHELL_TEMPLATE_PREFIX: Final = "shell"

#: What a domain may add to ``img-src`` besides this origin: local object URLs (images fetched with the bearer
#: token) and inline data. Never another host: a village clinic may have no route to it.
EXTRA_IMAGE_SOURCES: Final = frozenset({"blob:", "data:"})

#: Media types of the assets pages load, whatever the machine's mimetypes table says (a Windows registry or a
#: bare container may map .js to text/plain, which a browser refuses for a module script).
ASSET_TYPES: Final = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

CLINICAL_ROLE_NAMES: Final = tuple(sorted(role.value for role in CLINICAL_ROLES))


def content_security_policy(*, img_src: Iterable[str] = ()) -> str:
    """Only this origin, for everything. No inline script or style: scripts are files and data reaches them in
    ``<script type="application/json">`` blocks, which are never executed. ``'self'`` covers the same-origin
    ``ws:``/``wss:`` notification socket (CSP Level 3). ``img_src`` may add ``blob:`` or ``data:``."""
    extra = list(dict.fromkeys(img_src))
    unknown = [source for source in extra if source not in EXTRA_IMAGE_SOURCES]
    if unknown:
        raise ValueError(f"img-src may add only {sorted(EXTRA_IMAGE_SOURCES)}, not {unknown}")
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            " ".join(("img-src 'self'", *extra)),
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def page_headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        # The HTML depends on the language cookie only; it holds no user data, but must not be served stale.
        "Cache-Control": "no-cache",
        "Vary": "Cookie",
    }


CONTENT_SECURITY_POLICY: Final = content_security_policy()
PAGE_HEADERS: Final = page_headers(CONTENT_SECURITY_POLICY)


def page_language(request: Request) -> str:
    """zh-CN unless the user chose English with the shell's switch (its ``lang`` cookie).

    The browser's Accept-Language is deliberately not consulted: our users are Chinese-speaking clinicians on
    whatever device the clinic has, often one set to English, and the product speaks Chinese first.
    """
    chosen = request.cookies.get(LANGUAGE_COOKIE, "")
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def read_messages(directory: Path, lang: str) -> dict[str, str]:
    """The texts of one language from ``{directory}/{lang}.json``, the file the browser loads on a switch."""
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}")
    messages: dict[str, str] = json.loads((directory / f"{lang}.json").read_text(encoding="utf-8"))
    return messages


@functools.cache
def shell_messages(lang: str) -> dict[str, str]:
    """The shell's texts (header, footer, the errors core.js shows)."""
    return read_messages(SHELL_MESSAGES, lang)


def translator(messages: Mapping[str, str]) -> Callable[..., str]:
    """The templates' ``t(key, name=value)``: the text for ``key`` (the key itself when missing), filled in."""

    def t(key: str, **values: object) -> str:
        text = messages.get(key, key)
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    return t


def static_file(root: Path, asset: str) -> FileResponse:
    """``asset`` from under ``root``; 404 for anything outside it (``..``, symlinks out), hidden or missing."""
    base = root.resolve()
    path = (base / asset).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise NotFound()
    if any(part.startswith(".") for part in path.relative_to(base).parts):
        raise NotFound()
    media_type = ASSET_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


class DomainPages:
    """The pages of one domain: its templates over the shell's, its texts over the shell's, its assets.

    ``web_dir`` holds ``templates/`` and ``static/`` (with ``static/i18n/{zh-CN,en}.json``); the static files are
    served under ``static_prefix`` (``/static-referral``) once :meth:`add_asset_route` is called. ``img_src``
    widens the image policy (``blob:`` for images fetched with the bearer token). ``context`` is what every
    template of the domain sees besides the kit's own values.
    """

    def __init__(
        self,
        name: str,
        web_dir: Path,
        static_prefix: str,
        *,
        img_src: Iterable[str] = (),
        context: Mapping[str, Any] | None = None,
    ) -> None:
        if not static_prefix.startswith("/") or static_prefix.startswith("//") or static_prefix == "/static":
            raise ValueError(f"static prefix {static_prefix!r} must be a path of its own on this site")
        self.name = name
        self.web_dir = web_dir.resolve()
        self.static_dir = self.web_dir / "static"
        self.static_prefix = static_prefix.rstrip("/")
        self.content_security_policy = content_security_policy(img_src=img_src)
        self.headers = page_headers(self.content_security_policy)
        self.context = dict(context or {})
        environment = Environment(
            loader=ChoiceLoader(
                [
                    FileSystemLoader(self.web_dir / "templates"),
                    PrefixLoader({SHELL_TEMPLATE_PREFIX: FileSystemLoader(SHELL_TEMPLATES)}),
                ]
            ),
            autoescape=select_autoescape(),
        )
        self.templates = Jinja2Templates(env=environment)
        # Read now: a broken translation file fails at start-up, not on the first page view.
        self._messages = {lang: read_messages(self.static_dir / "i18n", lang) for lang in LANGUAGES}
        for lang in LANGUAGES:
            shell_messages(lang)

    def messages(self, lang: str) -> dict[str, str]:
        """The domain's own texts in ``lang`` (without the shell's)."""
        return self._messages[lang]

    def render(
        self,
        request: Request,
        template: str,
        *,
        page: str,
        title_key: str,
        script: str | None = None,
        **context: Any,
    ) -> Response:
        """``template`` in the user's language; ``script`` (default ``js/{page}.js``) is the page's module."""
        lang = page_language(request)
        merged = {**shell_messages(lang), **self._messages[lang]}
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "lang": lang,
                "t": translator(merged),
                "messages": merged,
                "page": page,
                "title_key": title_key,
                "page_script": f"{self.static_prefix}/{script or f'js/{page}.js'}",
                # core.js fetches the domain's texts from here too when the user switches language.
                "message_sources": [f"{self.static_prefix}/i18n/"],
                "clinical_roles": " ".join(CLINICAL_ROLE_NAMES),
                **self.context,
                **context,
            },
            headers=self.headers,
        )

    def asset(self, asset: str) -> FileResponse:
        """The domain's scripts, styles and texts (a plain route: a mounted app would not travel with a router)."""
        return static_file(self.static_dir, asset)

    def add_asset_route(self, router: APIRouter) -> None:
        router.add_api_route(
            f"{self.static_prefix}/{{asset:path}}",
            self.asset,
            methods=["GET"],
            response_class=FileResponse,
            include_in_schema=False,
            name=f"{self.name}-static",
        )
