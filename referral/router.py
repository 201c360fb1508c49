"""HTTP layer of the referral domain: parse, call the service, return."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from referral import service
from referral.schemas import (
    Box,
    DryRun,
    Evaluation,
    FormSpec,
    PolicyDiff,
    PolicyVersionDetail,
    PolicyVersionRead,
    ReferralAction,
    ReferralCheck,
    ReferralCreate,
    ReferralPage,
    ReferralRead,
)
from referral.state import ReferralStatus
from telemed.core.auth import Principal, Role
from telemed.core.deps import CurrentPrincipal, UoW, require_roles
from telemed.core.errors import FieldError, InvalidInput

router = APIRouter(prefix="/api/v1")
AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.admin))]

YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def _no_store(response: Response) -> None:
    # Referrals carry patient data: never kept in a shared or browser cache.
    response.headers["Cache-Control"] = "no-store"


@router.post("/referrals/evaluate", response_model=Evaluation, tags=["referrals"])
async def evaluate_referral(
    uow: UoW, principal: CurrentPrincipal, data: ReferralCheck, response: Response
) -> Evaluation:
    """Check a referral against the policy in force before sending it: nothing is stored."""
    _no_store(response)
    return await service.evaluate(uow, principal=principal, data=data)


@router.get("/referrals/form-spec", response_model=FormSpec, tags=["referrals"])
async def referral_form_spec(uow: UoW, principal: CurrentPrincipal) -> FormSpec:
    """The facts the policy in force knows (labels, units, plausible ranges) and the refusal reason codes."""
    return await service.form_spec(uow, principal=principal)


@router.post("/referrals", response_model=ReferralRead, status_code=201, tags=["referrals"])
async def submit_referral(
    uow: UoW, principal: CurrentPrincipal, data: ReferralCreate, response: Response
) -> ReferralRead:
    _no_store(response)
    return await service.submit_referral(uow, principal=principal, data=data)


@router.get("/referrals", response_model=ReferralPage, tags=["referrals"])
async def list_referrals(
    uow: UoW,
    principal: CurrentPrincipal,
    response: Response,
    box: Box = "inbox",
    status: Annotated[list[ReferralStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ReferralPage:
    """``inbox``: to facilities in my scope; ``outbox``: from my facility; ``review``: awaiting my township."""
    _no_store(response)
    return await service.list_referrals(
        uow, principal=principal, box=box, statuses=status or [], limit=limit, offset=offset
    )


@router.get("/referrals/{referral_id}", response_model=ReferralRead, tags=["referrals"])
async def read_referral(
    uow: UoW, principal: CurrentPrincipal, referral_id: uuid.UUID, response: Response
) -> ReferralRead:
    _no_store(response)
    return await service.read_referral(uow, principal=principal, referral_id=referral_id)


@router.post("/referrals/{referral_id}/{action}", response_model=ReferralRead, tags=["referrals"])
async def act_on_referral(
    uow: UoW,
    principal: CurrentPrincipal,
    referral_id: uuid.UUID,
    action: str,
    response: Response,
    data: ReferralAction | None = None,
) -> ReferralRead:
    """submit, approve, receive, accept, reject, return, resubmit, arrive, complete, close, withdraw.

    The server decides the next status from the transition table; a move the table lacks answers 409.
    """
    _no_store(response)
    return await service.act_on_referral(
        uow, principal=principal, referral_id=referral_id, action=action, data=data or ReferralAction()
    )


# ------------------------------------------------------------------------------------------- policy versions


async def _policy_text(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > service.MAX_POLICY_BYTES:
            raise InvalidInput(errors=[FieldError("document", "referral_policy.too_large", "文件过大", "Too large")])
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        if content_type == "application/json":
            body = json.loads(raw)
            text = body.get("yaml") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise ValueError("yaml")
            return text
        if content_type and content_type not in YAML_TYPES:
            raise ValueError("content-type")
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            errors=[
                FieldError(
                    "document",
                    "referral_policy.body",
                    '请以 UTF-8 的 YAML 文本（application/yaml）或 JSON {"yaml": "…"} 上传',
                    'Send UTF-8 YAML (application/yaml) or JSON {"yaml": "..."}',
                )
            ]
        ) from None


@router.post(
    "/referral-policies",
    response_model=PolicyVersionDetail,
    status_code=201,
    tags=["referral policies"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"type": "object", "properties": {"yaml": {"type": "string"}}, "required": ["yaml"]}
                },
            },
        }
    },
)
async def upload_policy(uow: UoW, principal: AdminPrincipal, request: Request) -> PolicyVersionDetail:
    """Upload a policy version. Errors answer 422 naming line and column; the policy in force stays in force."""
    return await service.upload_policy(uow, principal=principal, text=await _policy_text(request))


@router.get("/referral-policies", response_model=list[PolicyVersionRead], tags=["referral policies"])
async def list_policies(uow: UoW, principal: AdminPrincipal) -> list[PolicyVersionRead]:
    return await service.list_policies(uow, principal=principal)


@router.get("/referral-policies/diff", response_model=PolicyDiff, tags=["referral policies"])
async def diff_policies(
    uow: UoW,
    principal: AdminPrincipal,
    from_ref: Annotated[str, Query(alias="from", max_length=64)],
    to_ref: Annotated[str, Query(alias="to", max_length=64)],
) -> PolicyDiff:
    """A unified text diff and the rules added, removed and changed (ids ``default`` or a version id)."""
    return await service.diff_policies(uow, principal=principal, from_ref=from_ref, to_ref=to_ref)


@router.get("/referral-policies/{policy_id}", response_model=PolicyVersionDetail, tags=["referral policies"])
async def get_policy(
    uow: UoW, principal: AdminPrincipal, policy_id: Annotated[str, Path(max_length=64)]
) -> PolicyVersionDetail:
    return await service.get_policy(uow, principal=principal, ref=policy_id)


@router.post("/referral-policies/{policy_id}/dry-run", response_model=DryRun, tags=["referral policies"])
async def dry_run_policy(
    uow: UoW,
    principal: AdminPrincipal,
    policy_id: Annotated[str, Path(max_length=64)],
    months: Annotated[int, Query(ge=1, le=36)] = 6,
) -> DryRun:
    """Re-check the referrals of the last ``months`` months under this version: which decisions would change."""
    return await service.dry_run(uow, principal=principal, ref=policy_id, months=months)
