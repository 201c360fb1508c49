"""HTTP endpoints of the core: sign-in (OAuth2 password flow), sign-out, and the audit trail for admins."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form
from pydantic import BaseModel
from sqlalchemy import select

from telemed.core.audit import AuditAction, AuditEntry, AuditRecord
from telemed.core.auth import Principal, Role, refresh_session, revoke_session, sign_in
from telemed.core.deps import Ctx, CurrentPrincipal, UoW, require_roles
from telemed.core.errors import FieldError, InvalidInput

router = APIRouter(tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int
    role: str


@router.post("/api/v1/auth/token", response_model=TokenResponse)
async def issue_token(
    ctx: Ctx,
    grant_type: Annotated[str, Form()] = "password",
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=256)] = "",
    refresh_token: Annotated[str, Form(max_length=256)] = "",
) -> TokenResponse:
    """OAuth2 token endpoint (RFC 6749 §4.3 password grant, §6 refresh)."""
    if grant_type == "password":
        if not username or not password:
            raise InvalidInput(
                errors=[FieldError("username", "missing", "请输入用户名和密码", "Username and password are required")]
            )
        async with ctx.db.session() as session:
            account, tokens = await sign_in(session, ctx.signer, ctx.settings, username=username, password=password)
        return TokenResponse(access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                             expires_in=tokens.expires_in, role=account.role)  # fmt: skip
    if grant_type == "refresh_token":
        async with ctx.db.session() as session, session.begin():
            account, tokens = await refresh_session(session, ctx.signer, ctx.settings, refresh_token=refresh_token)
        return TokenResponse(access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                             expires_in=tokens.expires_in, role=account.role)  # fmt: skip
    raise InvalidInput(errors=[FieldError("grant_type", "unsupported", "不支持的授权方式", "Unsupported grant type")])


@router.post("/api/v1/auth/logout", status_code=204)
async def logout(ctx: Ctx, principal: CurrentPrincipal) -> None:
    async with ctx.db.session() as session, session.begin():
        await revoke_session(session, principal.session_id)


class AuditRead(BaseModel):
    seq: int
    ts: dt.datetime
    actor_user_id: str | None
    actor_role: str | None
    actor_facility_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    patient_ref: str | None
    purpose: str
    outcome: str
    source_ip: str | None
    request_id: str | None
    detail: dict[str, Any]


AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.admin))]


@router.get("/api/v1/audit", response_model=list[AuditRead], tags=["audit"])
async def query_audit(
    uow: UoW,
    principal: AdminPrincipal,
    patient_ref: uuid.UUID | None = None,
    actor_user_id: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditRead]:
    """Who did what, newest first. Querying the trail is itself audited."""
    query = select(AuditRecord).order_by(AuditRecord.seq.desc())
    if patient_ref is not None:
        query = query.where(AuditRecord.patient_ref == str(patient_ref))
    if actor_user_id is not None:
        query = query.where(AuditRecord.actor_user_id == str(actor_user_id))
    if since is not None:
        query = query.where(AuditRecord.ts >= since)
    if until is not None:
        query = query.where(AuditRecord.ts < until)
    rows = (await uow.session.scalars(query.limit(max(1, min(limit, 1000))).offset(max(0, offset)))).all()
    result = [AuditRead.model_validate(r, from_attributes=True) for r in rows]
    uow.audit(AuditEntry(AuditAction.query, "audit_event", None, purpose="audit_review",
                         detail={"patient_ref": str(patient_ref) if patient_ref else None}))  # fmt: skip
    return result
