"""The web shell: sign-in, a home page per role, patients and the registry, in zh-CN first and English.

Pages are plain server-rendered templates that carry no patient data and no identity: the browser holds the
bearer token in sessionStorage and fetches everything through the API, so what a user may see is decided by the
API's role and facility checks, never by which page they open. Every asset is served by the app itself (village
clinics may have no route to a CDN), and a strict Content-Security-Policy allows nothing but this origin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from telemed.core.auth import Role
from telemed.core.pages import (
    CLINICAL_ROLE_NAMES,
    CONTENT_SECURITY_POLICY,
    DEFAULT_LANGUAGE,
    LANGUAGE_COOKIE,
    LANGUAGES,
    PAGE_HEADERS,
    page_language,
    shell_messages,
    translator,
)
from telemed.core.plugins import DomainPlugin, NavLink

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "LANGUAGE_COOKIE",
    "PAGE_HEADERS",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "load_messages",
    "mount_web",
    "nav_link_data",
    "page_language",
]

# The policy, the language rule and the texts are the page kit's (telemed.core.pages), which the domains'
# pages use too: one copy for every page of the product.
WEB_DIR: Final = Path(__file__).parent
STATIC_DIR: Final = WEB_DIR / "static"
TEMPLATES_DIR: Final = WEB_DIR / "templates"


def load_messages(lang: str) -> dict[str, str]:
    """The UI texts of one language, from the same JSON file the browser loads when the user switches."""
    return shell_messages(lang)


def nav_link_data(domains: Sequence[DomainPlugin]) -> list[dict[str, Any]]:
    """The links the domains add to the home page, as the page's JSON data (filtered by role in the browser)."""
    links: list[dict[str, Any]] = []
    for domain in domains:
        for link in domain.nav_links:
            _check_nav_link(domain, link)
            links.append(
                {
                    "href": link.href,
                    "label_zh": link.label_zh,
                    "label_en": link.label_en,
                    "roles": sorted(link.roles),
                    "domain": domain.name,
                }
            )
    return links


def event_label_data(domains: Sequence[DomainPlugin]) -> dict[str, dict[str, str]]:
    """The domains' notification texts by language, as the home page's JSON data (``event-labels``)."""
    labels: dict[str, dict[str, str]] = {"zh-CN": {}, "en": {}}
    for domain in domains:
        for name, (zh, en) in domain.event_labels.items():
            if not name.startswith(f"{domain.name}."):
                raise ValueError(f"domain {domain.name!r} labels an event it does not own: {name!r}")
            labels["zh-CN"][name], labels["en"][name] = zh, en
    return labels


def _check_nav_link(domain: DomainPlugin, link: NavLink) -> None:
    # A link leaving the app would break the offline promise (and could send a clinician to a look-alike site).
    if not link.href.startswith("/") or link.href.startswith("//"):
        raise ValueError(f"domain {domain.name!r}: nav link {link.href!r} must be a path on this site")
    unknown = set(link.roles) - {role.value for role in Role}
    if unknown:
        raise ValueError(f"domain {domain.name!r}: nav link {link.href!r} names unknown roles {sorted(unknown)}")


def mount_web(app: FastAPI, domains: Sequence[DomainPlugin]) -> None:
    """Serve /static and the pages: ``/``, ``/login``, ``/home``, ``/patients``, ``/admin/registry``."""
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    nav_links = nav_link_data(domains)
    event_labels = event_label_data(domains)
    for lang in LANGUAGES:
        load_messages(lang)  # a broken translation file fails at start-up, not on the first page view

    def render(request: Request, template: str, *, page: str, title_key: str, **context: Any) -> Response:
        lang = page_language(request)
        messages = load_messages(lang)
        return templates.TemplateResponse(
            request,
            template,
            {
                "lang": lang,
                "t": translator(messages),
                "messages": messages,
                "page": page,
                "title_key": title_key,
                "clinical_roles": " ".join(CLINICAL_ROLE_NAMES),
                **context,
            },
            headers=PAGE_HEADERS,
        )

    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def root() -> RedirectResponse:
        # The login page's script sends a browser that still holds a session on to /home.
        return RedirectResponse("/login", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        return render(request, "login.html", page="login", title_key="page.login")

    @router.get("/home", response_class=HTMLResponse)
    async def home_page(request: Request) -> Response:
        return render(
            request, "home.html", page="home", title_key="page.home", nav_links=nav_links, event_labels=event_labels
        )

    @router.get("/patients", response_class=HTMLResponse)
    async def patients_page(request: Request) -> Response:
        return render(request, "patients.html", page="patients", title_key="page.patients")

    @router.get("/admin/registry", response_class=HTMLResponse)
    async def registry_page(request: Request) -> Response:
        roles = [role.value for role in Role]
        return render(request, "registry.html", page="registry", title_key="page.registry", roles=roles)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
