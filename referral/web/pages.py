"""The referral pages: the referral form with its live rule check, the inbox with SLA clocks, the policy admin page.

They are pages of the web shell, built with the host's page kit (``telemed.core.pages``): the shell's header,
stylesheet and ``/static/js/core.js`` (session, API client, language switch, navigation), its policy and its
language rule. What is the domain's own (texts, scripts, styles) is served under ``/static-referral/``. Like
the shell's pages, these carry no patient data and no identity: the browser fetches everything through the API
with its bearer token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from referral.state import BUSINESS_STATUS_NAMES
from telemed.core.auth import Role
from telemed.core.pages import DomainPages

WEB_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = WEB_DIR / "static"
SENDERS: Final = " ".join(sorted(role.value for role in (Role.village_doctor, Role.township_doctor, Role.specialist)))

pages = DomainPages(
    "referral",
    WEB_DIR,
    "/static-referral",
    context={"sender_roles": SENDERS, "statuses": [status.value for status in BUSINESS_STATUS_NAMES]},
)
#: The policy the pages are served under: the shell's own (tests compare against it).
CONTENT_SECURITY_POLICY: Final = pages.content_security_policy

router = APIRouter(include_in_schema=False)
pages.add_asset_route(router)


@router.get("/referrals")
async def referrals_root() -> RedirectResponse:
    return RedirectResponse("/referrals/inbox", status_code=303)


@router.get("/referrals/new", response_class=HTMLResponse)
async def new_referral_page(request: Request) -> Response:
    return pages.render(request, "new.html", page="referral-new", title_key="referral.page.new")


@router.get("/referrals/inbox", response_class=HTMLResponse)
async def inbox_page(request: Request) -> Response:
    return pages.render(request, "inbox.html", page="referral-inbox", title_key="referral.page.inbox")


@router.get("/referrals/policies", response_class=HTMLResponse)
async def policies_page(request: Request) -> Response:
    return pages.render(request, "policies.html", page="referral-policies", title_key="referral.page.policies")
