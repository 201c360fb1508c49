"""Referrals as FHIR R4: a ServiceRequest (the referral itself) and a Task (the work of fulfilling it).

The mapping follows referral-rules-notes.md §2.1 (the FHIR workflow "fulfilment" pattern used by HL7 BSeR, SDOH-CC
and national e-referral IGs): ``ServiceRequest.status`` from the R4 request-status value set, ``Task.status`` from
the 12-code R4 task-status value set with our business status in ``Task.businessStatus``, ``intent=order``,
``priority`` routine|urgent|asap|stat (急诊绿色通道 → stat), ICD-10 in ``reasonCode``, the SLA deadline in
``Task.restriction.period``, the counter-referral summary (回执) in ``Task.output``, a down-referral's up-referral in
``ServiceRequest.basedOn``. Resources name patients by their record id only (no name, no identifier).
Reads are scoped and audited exactly as the REST API's; errors answer an OperationOutcome.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from referral import repository
from referral.errors import ReferralNotFound
from referral.events import owner_facility
from referral.models import Referral
from referral.service import REFERRAL, require_clinical, visible_referral
from referral.state import (
    BUSINESS_STATUS_NAMES,
    REJECT_REASON_NAMES,
    SERVICE_REQUEST_STATUS,
    TASK_STATUS,
    ReferralStatus,
    RejectReason,
)
from telemed.core.audit import AuditAction, AuditEntry
from telemed.core.auth import Principal
from telemed.core.deps import CurrentPrincipal, UoW
from telemed.core.errors import ProblemError, preferred_language
from telemed.core.uow import UnitOfWork
from telemed.org import public as registry

FHIR_JSON: Final = "application/fhir+json"
BASE: Final = "https://telemed.example.cn/fhir"
SNOMED: Final = "http://snomed.info/sct"
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
TASK_CODE: Final = "http://hl7.org/fhir/CodeSystem/task-code"
DIRECTION_SYSTEM: Final = f"{BASE}/CodeSystem/referral-direction"
BUSINESS_STATUS_SYSTEM: Final = f"{BASE}/CodeSystem/referral-business-status"
STATUS_REASON_SYSTEM: Final = f"{BASE}/CodeSystem/referral-status-reason"
EXT_COMPLIANT: Final = f"{BASE}/StructureDefinition/referral-compliant"
EXT_POLICY_VERSION: Final = f"{BASE}/StructureDefinition/referral-policy-version"
EXT_GREEN_CHANNEL: Final = f"{BASE}/StructureDefinition/referral-green-channel"
EXT_MATCHED_RULE: Final = f"{BASE}/StructureDefinition/referral-matched-rule"
DICOM_UID: Final = "urn:dicom:uid"
CONSULT_SYSTEM: Final = f"{BASE}/NamingSystem/consult"

DIRECTION_NAMES: Final = {"up": "上转", "down": "下转", "lateral": "平转"}

#: R4 value sets the serializer must stay within (tests check every resource against them).
TASK_STATUS_CODES: Final = frozenset(
    {"draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress", "on-hold",
     "failed", "completed", "entered-in-error"}
)  # fmt: skip
SERVICE_REQUEST_STATUS_CODES: Final = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
PRIORITY_CODES: Final = frozenset({"routine", "urgent", "asap", "stat"})


def _org(facility_id: uuid.UUID, names: dict[uuid.UUID, str]) -> dict[str, Any]:
    reference: dict[str, Any] = {"reference": f"Organization/{facility_id}", "type": "Organization"}
    if names.get(facility_id):
        reference["display"] = names[facility_id]
    return reference


def _instant(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def service_request(referral: Referral, names: dict[uuid.UUID, str]) -> dict[str, Any]:
    status = ReferralStatus(referral.status)
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(referral.id),
        "meta": {"lastUpdated": _instant(referral.updated_at)},
        "extension": [
            {"url": EXT_COMPLIANT, "valueBoolean": referral.compliant},
            {"url": EXT_POLICY_VERSION, "valueString": referral.policy_version},
            {"url": EXT_GREEN_CHANNEL, "valueBoolean": referral.green_channel},
            *(
                {"url": EXT_MATCHED_RULE, "valueString": str(m["id"])}
                for m in referral.decision.get("matched", [])
                if isinstance(m, dict) and m.get("id")
            ),
        ],
        "status": SERVICE_REQUEST_STATUS[status],
        "intent": "order",
        "category": [
            {"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]},
            {
                "coding": [
                    {
                        "system": DIRECTION_SYSTEM,
                        "code": referral.direction,
                        "display": DIRECTION_NAMES.get(referral.direction, referral.direction),
                    }
                ]
            },
        ],
        "priority": referral.priority,
        "code": {"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]},
        "subject": {"reference": f"Patient/{referral.patient_id}", "type": "Patient"},
        "authoredOn": _instant(referral.submitted_at or referral.created_at),
        "requester": _org(referral.from_facility_id, names),
        "performer": [_org(referral.to_facility_id, names)],
    }
    if referral.based_on_id is not None:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{referral.based_on_id}", "type": "ServiceRequest"}]
    if referral.icd10:
        resource["reasonCode"] = [{"coding": [{"system": ICD10, "code": code}]} for code in referral.icd10]
    supporting = [
        {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}}
        for uid in referral.study_uids
    ] + [{"identifier": {"system": CONSULT_SYSTEM, "value": ref}} for ref in referral.consult_refs]
    if supporting:
        resource["supportingInfo"] = supporting
    start = referral.submitted_at or referral.created_at
    period: dict[str, str] = {"start": start.date().isoformat()}
    if referral.valid_until is not None:
        period["end"] = referral.valid_until.isoformat()
    resource["occurrencePeriod"] = period
    notes = [text for text in (referral.reason, referral.notes) if text]
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


def task(referral: Referral, names: dict[uuid.UUID, str]) -> dict[str, Any]:
    status = ReferralStatus(referral.status)
    zh, en = BUSINESS_STATUS_NAMES[status]
    owner = referral.from_facility_id if status is ReferralStatus.draft else owner_facility(referral)
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": str(referral.id),
        "meta": {"lastUpdated": _instant(referral.updated_at)},
        "status": TASK_STATUS[status],
        "businessStatus": {
            "coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": status.value, "display": zh}],
            "text": en,
        },
        "intent": "order",
        "priority": referral.priority,
        "code": {"coding": [{"system": TASK_CODE, "code": "fulfill", "display": "Fulfill the focal request"}]},
        "focus": {"reference": f"ServiceRequest/{referral.id}", "type": "ServiceRequest"},
        "for": {"reference": f"Patient/{referral.patient_id}", "type": "Patient"},
        "authoredOn": _instant(referral.created_at),
        # R4 inv-1: lastModified >= authoredOn (updated_at never precedes created_at).
        "lastModified": _instant(max(referral.updated_at, referral.created_at)),
        "requester": _org(referral.from_facility_id, names),
        "owner": _org(owner, names),
    }
    if referral.status_reason:
        reason: dict[str, Any] = {"coding": [{"system": STATUS_REASON_SYSTEM, "code": referral.status_reason}]}
        try:
            reason["text"] = REJECT_REASON_NAMES[RejectReason(referral.status_reason)][1]
        except ValueError:
            reason["text"] = referral.status_reason
        resource["statusReason"] = reason
    if referral.ack_due_at is not None:
        resource["restriction"] = {
            "period": {"end": _instant(referral.ack_due_at)},
            "recipient": [_org(owner, names)],
        }
    execution: dict[str, str] = {}
    if referral.accepted_at is not None:
        execution["start"] = str(_instant(referral.accepted_at))
    if referral.completed_at is not None:
        execution["end"] = str(_instant(referral.completed_at))
    if execution:
        resource["executionPeriod"] = execution
    inputs = [
        {"type": {"text": "ImagingStudy"},
         "valueReference": {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}}}
        for uid in referral.study_uids
    ] + [{"type": {"text": "consult"}, "valueString": ref} for ref in referral.consult_refs]  # fmt: skip
    if inputs:
        resource["input"] = inputs
    if referral.summary:
        resource["output"] = [{"type": {"text": "counter-referral summary (回执)"}, "valueString": referral.summary}]
    return resource


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers={"Cache-Control": "no-store"})


def operation_outcome(error: ProblemError, lang: str) -> JSONResponse:
    code = {404: "not-found", 403: "forbidden", 401: "login", 409: "conflict"}.get(error.status, "invalid")
    text = (error.detail_en if lang == "en" else error.detail_zh) or (
        error.title_en if lang == "en" else error.title_zh
    )
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return _fhir(body, error.status)


class BadSearch(ProblemError):
    status = 400
    code = "fhir.bad_search"
    title_zh = "查询参数无效"
    title_en = "Invalid search parameter"


def _statuses(values: str | None, mapping: dict[ReferralStatus, str], valid: frozenset[str]) -> list[str] | None:
    if not values:
        return None
    wanted = {v.strip() for v in values.split(",") if v.strip()}
    if not wanted <= valid:
        raise BadSearch("status 不在 R4 值集中", "status is not in the R4 value set")
    return [s.value for s, code in mapping.items() if code in wanted]


def _patient_param(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value.removeprefix("Patient/"))
    except ValueError:
        raise BadSearch("patient 应为 Patient/<id>", "patient must be Patient/<id>") from None


async def _names(uow: UnitOfWork) -> dict[uuid.UUID, str]:
    return {view.id: view.name for view in await registry.list_facilities(uow.session)}


router = APIRouter(prefix="/fhir/R4", tags=["fhir"])


@router.get("/ServiceRequest/{resource_id}", response_class=JSONResponse)
async def read_service_request(
    uow: UoW, principal: CurrentPrincipal, resource_id: str, request: Request
) -> JSONResponse:
    return await _read(uow, principal, resource_id, request, "ServiceRequest")


@router.get("/Task/{resource_id}", response_class=JSONResponse)
async def read_task(uow: UoW, principal: CurrentPrincipal, resource_id: str, request: Request) -> JSONResponse:
    return await _read(uow, principal, resource_id, request, "Task")


async def _read(uow: UnitOfWork, principal: Principal, resource_id: str, request: Request, kind: str) -> JSONResponse:
    try:
        try:
            referral_id = uuid.UUID(resource_id)
        except ValueError:
            raise ReferralNotFound() from None
        referral, _ = await visible_referral(uow, principal, referral_id)
        uow.audit(AuditEntry(AuditAction.read, REFERRAL, str(referral.id), patient_ref=str(referral.patient_id),
                             detail={"basis": "referral", "format": f"fhir:{kind}"}))  # fmt: skip
        names = await _names(uow)
        body = service_request(referral, names) if kind == "ServiceRequest" else task(referral, names)
    except ProblemError as error:
        return operation_outcome(error, preferred_language(request))
    return _fhir(body)


@router.get("/ServiceRequest", response_class=JSONResponse)
async def search_service_requests(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    patient: str | None = None,
    status: str | None = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 50,
) -> JSONResponse:
    return await _search(uow, principal, request, "ServiceRequest", patient, status, count)


@router.get("/Task", response_class=JSONResponse)
async def search_tasks(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    patient: str | None = None,
    status: str | None = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 50,
) -> JSONResponse:
    return await _search(uow, principal, request, "Task", patient, status, count)


async def _search(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    kind: str,
    patient: str | None,
    status: str | None,
    count: int,
) -> JSONResponse:
    try:
        require_clinical(principal)
        if kind == "ServiceRequest":
            statuses = _statuses(status, dict(SERVICE_REQUEST_STATUS), SERVICE_REQUEST_STATUS_CODES)
        else:
            statuses = _statuses(status, dict(TASK_STATUS), TASK_STATUS_CODES)
        patient_id = _patient_param(patient)
        scope = await registry.facility_scope(uow.session, principal)
        rows = await repository.search_visible(
            uow.session, scope, patient_id=patient_id, statuses=statuses, limit=count
        )
        uow.audit(
            AuditEntry(AuditAction.query, REFERRAL, None,
                       detail={"format": f"fhir:{kind}", "referral_ids": [str(r.id) for r in rows],
                               "patient_refs": sorted({str(r.patient_id) for r in rows})})
        )  # fmt: skip
        names = await _names(uow)
    except ProblemError as error:
        return operation_outcome(error, preferred_language(request))
    serialize = service_request if kind == "ServiceRequest" else task
    base = str(request.base_url).rstrip("/") + "/fhir/R4"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/{kind}/{r.id}", "resource": serialize(r, names), "search": {"mode": "match"}}
            for r in rows
        ],
    }
    if len(rows) < count:  # a full page may have more behind it: then the total is not known here
        bundle["total"] = len(rows)
    return _fhir(bundle)
