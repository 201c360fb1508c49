"""FastAPI dependency aliases: ``Ctx``, ``UoW``, ``CurrentPrincipal``, ``require_roles``; and, for a hot route
that FastAPI resolves nothing for, the same as plain functions: ``current_principal``, ``request_unit_of_work``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param

from telemed.core.audit import AuditActor
from telemed.core.auth import Principal, Role, resolve_principal
from telemed.core.context import AppContext
from telemed.core.errors import Forbidden, Unauthenticated
from telemed.core.uow import UnitOfWork

bearer_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


async def get_ctx(request: Request) -> AppContext:
    # async, though it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker thread, and this one
    # is on every request.
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


# The two below read the context off the request rather than through ``Ctx``: they run on every request, and each
# dependency FastAPI resolves costs time of its own.


async def get_optional_principal(
    request: Request, token: Annotated[str | None, Depends(bearer_scheme)]
) -> Principal | None:
    if not token:
        return None
    ctx: AppContext = request.app.state.ctx
    # A read transaction: on SQLite a write one (BEGIN IMMEDIATE) would queue every request behind the writer
    # just to look up its session; the rare last-seen update runs in a short transaction of its own.
    return await resolve_principal(ctx.db.read_session, ctx.signer, ctx.settings, token)


async def get_principal(principal: Annotated[Principal | None, Depends(get_optional_principal)]) -> Principal:
    if principal is None:
        raise Unauthenticated()
    return principal


def bearer_token(request: Request) -> str | None:
    """The bearer token of the request, read as ``bearer_scheme`` reads it (None when there is none)."""
    authorization = request.headers.get("Authorization")
    scheme, token = get_authorization_scheme_param(authorization)
    if not authorization or scheme.lower() != "bearer":
        return None
    return token


async def current_principal(request: Request) -> Principal:
    """``CurrentPrincipal`` for an endpoint that FastAPI does not resolve dependencies for (a hot route, see
    ``DomainPlugin.hot_routes``): the same checks, the same 401."""
    return await get_principal(await get_optional_principal(request, bearer_token(request)))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    allowed = frozenset(roles)

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden()
        return principal

    return check


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@contextlib.asynccontextmanager
async def request_unit_of_work(request: Request, principal: Principal | None) -> AsyncIterator[UnitOfWork]:
    """The request's unit of work, acting as ``principal``: committed when the block ends without an error (before
    the response is sent), rolled back when it raises. ``UoW`` for endpoints; this for a hot route."""
    ctx: AppContext = request.app.state.ctx
    actor = AuditActor(
        user_id=str(principal.user_id) if principal else None,
        role=principal.role.value if principal else None,
        facility_id=str(principal.facility_id) if principal and principal.facility_id else None,
        source_ip=client_ip(request),
        request_id=getattr(request.state, "request_id", None),
    )
    async with UnitOfWork(ctx, ctx.db.session, actor) as uow:
        yield uow
        if not uow.committed:
            await uow.commit()


async def get_uow(
    request: Request, principal: Annotated[Principal | None, Depends(get_optional_principal)]
) -> AsyncIterator[UnitOfWork]:
    async with request_unit_of_work(request, principal) as uow:
        yield uow


#: Function scope: the unit of work commits when the endpoint returns, before the response is sent.
UoW = Annotated[UnitOfWork, Depends(get_uow, scope="function")]
