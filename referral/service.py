"""Use cases of the referral domain: ``async def verb_noun(uow, *, principal, ...)``; none commits.

Checking a referral runs the rules engine (:func:`referral.rules.evaluate_referral`) under the policy in force
(:mod:`referral.store`); submitting stores the decision with the policy version it was made under; every move goes
through the transition table (:mod:`referral.state`) and writes a history row, an audit record and an event in
the same unit of work. Patients are looked up through the registry's public interface only, within the caller's
facility scope; a referral is shown to those whose scope holds its sending, receiving or reviewing facility.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

import yaml
from pydantic import TypeAdapter
from sqlalchemy.orm.exc import StaleDataError

from referral import repository
from referral.errors import (
    ConcurrentChange,
    NotYourAction,
    OverrideRequired,
    PatientNotInScope,
    PolicyInvalid,
    PolicyVersionNotFound,
    PolicyViolation,
    ReferralNotFound,
    ReferralRoleForbidden,
    UnknownAction,
)
from referral.events import EVENT_OF_COMMAND, audience_for, referral_event
from referral.models import PolicyVersion, Referral, ReferralTransition
from referral.policy import (
    CompiledPolicy,
    FactValue,
    Policy,
    PolicyError,
    PolicyValidationError,
    check_effective_dates,
    load_default_policy,
    load_policy,
)
from referral.rules import Decision, FacilityInfo, ReferralRequest, evaluate_referral
from referral.schemas import (
    DryRun,
    DryRunChange,
    Evaluation,
    FacilityRef,
    FactSpecRead,
    FormSpec,
    PatientRef,
    PolicyDiff,
    PolicyVersionDetail,
    PolicyVersionRead,
    ReferralAction,
    ReferralCheck,
    ReferralCreate,
    ReferralPage,
    ReferralRead,
    ReferralSummary,
    RuleChange,
    TransitionRead,
)
from referral.state import (
    ACTORS,
    AWAITING_ACK,
    BUSINESS_STATUS_NAMES,
    REJECT_REASON_NAMES,
    SERVICE_REQUEST_STATUS,
    TASK_STATUS,
    TRANSITIONS,
    USER_ACTIONS,
    Command,
    Party,
    ReferralStatus,
    RejectReason,
    next_status,
)
from referral.store import DEFAULT_ID, ActivePolicy, PolicyStore, VersionIndex, document_name, in_force, store_of
from telemed.core.audit import AuditAction, AuditEntry, AuditOutcome
from telemed.core.auth import Principal, Role
from telemed.core.db import utcnow
from telemed.core.errors import FieldError, Forbidden, InvalidInput, field_error
from telemed.core.uow import UnitOfWork
from telemed.org import public as registry

#: Times are stored in UTC and dated in China Standard Time (no daylight saving), where the county works.
LOCAL_TZ: Final = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
REFERRAL: Final = "referral"
POLICY: Final = "referral_policy"
MAX_POLICY_BYTES: Final = 1_000_000
DRY_RUN_LIMIT: Final = 20_000

_DECISION: Final = TypeAdapter(Decision)


def local_date(moment: dt.datetime) -> dt.date:
    return moment.astimezone(LOCAL_TZ).date()


def _age(birth: dt.date, today: dt.date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def decision_json(decision: Decision) -> dict[str, Any]:
    data: dict[str, Any] = _DECISION.dump_python(decision, mode="json")
    return data


def policy_store(uow: UnitOfWork) -> PolicyStore:
    return store_of(uow.ctx.extras)


def require_clinical(principal: Principal) -> None:
    """Referrals carry patient data: analysts and administrators get 403 (DESIGN §2: the bureau sees no patient)."""
    if not principal.is_clinical:
        raise ReferralRoleForbidden()


def _require_admin(principal: Principal) -> None:
    if principal.role is not Role.admin:
        raise Forbidden()


# ---------------------------------------------------------------------------------------------------- facilities

Facilities = Mapping[uuid.UUID, registry.FacilityView]


async def _facilities(uow: UnitOfWork) -> dict[uuid.UUID, registry.FacilityView]:
    return {view.id: view for view in await registry.list_facilities(uow.session)}


def facility_info(view: registry.FacilityView) -> FacilityInfo:
    # A facility without coordinates sorts last in distance-based suggestions rather than breaking them.
    return FacilityInfo(
        id=str(view.id),
        name=view.name,
        tier=view.tier,
        flags=view.flags,
        latitude=view.latitude if view.latitude is not None else 0.0,
        longitude=view.longitude if view.longitude is not None else 0.0,
        parent_id=str(view.parent_id) if view.parent_id else None,
    )


def _facility_ref(view: registry.FacilityView | None, facility_id: uuid.UUID) -> FacilityRef:
    if view is None:
        return FacilityRef(id=facility_id, name="", tier="")
    return FacilityRef(id=view.id, name=view.name, tier=view.tier)


# ------------------------------------------------------------------------------------------------------ patients


async def _patient_in_scope(
    uow: UnitOfWork, principal: Principal, patient_id: uuid.UUID, *, purpose: str
) -> registry.PatientView:
    patient = await registry.get_patient_in_scope(uow.session, principal, patient_id)
    if patient is None:
        uow.audit(AuditEntry(AuditAction.read, "patient", str(patient_id), AuditOutcome.denied, str(patient_id),
                             purpose=purpose))  # fmt: skip
        raise PatientNotInScope()
    uow.audit(AuditEntry(AuditAction.read, "patient", str(patient_id), patient_ref=str(patient_id), purpose=purpose,
                         detail={"fields": ["birth_date"]}))  # fmt: skip
    return patient


def _facts(
    given: Mapping[str, FactValue],
    *,
    patient: registry.PatientView | None,
    onset_at: dt.datetime | None,
    now: dt.datetime,
) -> dict[str, FactValue]:
    """The recorded facts plus what the record already knows: the age from the birth date, the minutes since onset."""
    facts: dict[str, FactValue] = dict(given)
    if patient is not None and "age" not in facts:
        facts["age"] = _age(dt.date.fromisoformat(patient.birth_date_iso), local_date(now))
    if onset_at is not None and "onset_minutes" not in facts:
        onset = onset_at if onset_at.tzinfo is not None else onset_at.replace(tzinfo=LOCAL_TZ)  # a form's local time
        facts["onset_minutes"] = max(0, int((now - onset).total_seconds() // 60))
    return facts


# ------------------------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class Checked:
    active: ActivePolicy
    decision: Decision
    origin: registry.FacilityView
    #: The requested target, or the suggested one when none was requested (None when nothing fits).
    target: registry.FacilityView | None
    facilities: Facilities


async def check(
    uow: UnitOfWork,
    *,
    origin_id: uuid.UUID,
    to_facility_id: uuid.UUID | None,
    icd10: Sequence[str],
    priority: str | None,
    facts: Mapping[str, FactValue],
    override_reason: str | None,
    today: dt.date,
) -> Checked:
    facilities = await _facilities(uow)
    origin = facilities.get(origin_id)
    if origin is None:
        raise InvalidInput(errors=[field_error("facility", "referral.facility_required")])
    target: registry.FacilityView | None = None
    if to_facility_id is not None:
        target = facilities.get(to_facility_id)
        if target is None:
            raise InvalidInput(
                errors=[FieldError("to_facility_id", "referral.unknown_facility", "未知的接收机构", "Unknown facility")]
            )
    active = await policy_store(uow).active(uow.session, today)
    request = ReferralRequest(
        from_facility=facility_info(origin),
        to_facility=facility_info(target) if target is not None else None,
        icd10=tuple(icd10),
        priority=priority,
        facts=facts,
        override_reason=override_reason,
    )
    candidates = [facility_info(view) for view in facilities.values()]
    decision = evaluate_referral(active.policy, request, candidates=candidates, today=today)
    if target is None and decision.suggested_target is not None:
        target = facilities.get(uuid.UUID(decision.suggested_target.facility_id))
    return Checked(active, decision, origin, target, facilities)


def _reasons(decision: Decision) -> list[dict[str, Any]]:
    return [
        {"code": f.code, "rule_id": f.rule_id, "severity": f.severity, "reason_zh": f.reason_zh,
         "reason_en": f.reason_en}
        for f in decision.failed
        if f.severity != "info"
    ]  # fmt: skip


def _enforce(checked: Checked, *, draft: bool = False) -> None:
    """``blocked`` → 422 with the reasons; ``needs_override`` without a written reason → 422 naming it."""
    decision = checked.decision
    if decision.outcome == "blocked" or checked.target is None:
        raise PolicyViolation(_reasons(decision), decision_json(decision))
    if decision.outcome == "needs_override" and not draft:
        too_short = "override-reason-too-short" in decision.reason_codes
        raise OverrideRequired(
            too_short, checked.active.policy.min_override_chars, _reasons(decision), decision_json(decision)
        )


def _review_facility(checked: Checked) -> uuid.UUID | None:
    """The township centre that reviews the referral first (卫生院审核), or None.

    The policy's ``routing.township_review`` says when (referral-rules-notes.md §2.1: "owner = township reviewer
    when village→county goes through the township"). An emergency on the green channel never waits for review,
    and neither does a skip a rule or exception permits unless the policy asks for review of every upward one.
    """
    decision, policy, origin, target = checked.decision, checked.active.policy, checked.origin, checked.target
    mode = policy.model.routing.township_review
    if mode == "never" or target is None or decision.direction != "up" or decision.green_channel:
        return None
    if mode == "skip_level_override" and not (decision.skip_level and decision.override_applied):
        return None
    permitted_by_exception = any(m.kind == "exception" for m in decision.matched)
    if mode == "skip_level" and not (decision.skip_level and (decision.override_applied or not permitted_by_exception)):
        return None
    parent = checked.facilities.get(origin.parent_id) if origin.parent_id else None
    tiers = policy.tiers
    if parent is None or parent.tier not in tiers or origin.tier not in tiers or target.tier not in tiers:
        return None
    between = tiers[target.tier].level < tiers[parent.tier].level < tiers[origin.tier].level
    return parent.id if between and parent.id != target.id else None


def _apply_decision(referral: Referral, checked: Checked) -> None:
    decision, target = checked.decision, checked.target
    assert target is not None  # _enforce refused a decision without a target
    referral.to_facility_id = target.id
    referral.from_tier = checked.origin.tier
    referral.to_tier = target.tier
    referral.direction = decision.direction or "up"
    referral.skip_level = decision.skip_level
    referral.priority = decision.priority
    referral.outcome = decision.outcome
    referral.compliant = decision.compliant
    referral.override_applied = decision.override_applied
    referral.green_channel = decision.green_channel
    referral.reason_codes = list(decision.reason_codes)
    referral.decision = decision_json(decision)
    referral.policy_version = decision.policy_version
    referral.policy_version_id = checked.active.id
    referral.valid_until = decision.valid_until
    referral.ack_within_minutes = decision.sla.ack_within_minutes
    referral.followup_days = decision.sla.followup_days
    referral.review_facility_id = _review_facility(checked)


def _audit_override(uow: UnitOfWork, referral: Referral, decision: Decision) -> None:
    """An override is audited with its reason codes (never the free text, which may name people)."""
    if not decision.override_applied:
        return
    exceptions = [m.id for m in decision.matched if m.kind == "exception"]
    uow.audit(
        AuditEntry(
            AuditAction.execute,
            REFERRAL,
            str(referral.id),
            patient_ref=str(referral.patient_id),
            purpose="override",
            detail={
                "reason_codes": list(decision.reason_codes),
                "failed_checks": [f.code for f in decision.failed if f.severity != "info"],
                "rule_ids": sorted({f.rule_id for f in decision.failed if f.rule_id}),
                "exceptions": exceptions,
                "compliant": decision.compliant,
                "policy_version": decision.policy_version,
            },
        )
    )


# ------------------------------------------------------------------------------------------------------ moves


def apply_command(
    uow: UnitOfWork,
    referral: Referral,
    command: Command,
    *,
    now: dt.datetime,
    actor: Principal | None,
    reason_code: str | None = None,
    note: str | None = None,
) -> ReferralStatus:
    """Move ``referral`` by the transition table; stamp the clocks; write history and the event."""
    source = ReferralStatus(referral.status)
    target = next_status(source, command)
    referral.status = target.value
    referral.updated_at = now
    if target in AWAITING_ACK:
        # A new owner (township reviewer or receiver) and a new SLA clock (Task.restriction.period).
        referral.ack_due_at = now + dt.timedelta(minutes=referral.ack_within_minutes)
        referral.escalated_at = None
        referral.acknowledged_at = None
        referral.submitted_at = referral.submitted_at or now
        referral.status_reason = None
        referral.status_note = None
    if command in (Command.receive, Command.accept) and referral.acknowledged_at is None:
        referral.acknowledged_at = now
    if command is Command.accept:
        referral.accepted_at = now
    elif command is Command.arrive:
        referral.arrived_at = now
    elif command is Command.complete:
        referral.completed_at = now
        referral.followup_due = local_date(now) + dt.timedelta(days=referral.followup_days)
    elif command is Command.close:
        referral.closed_at = now
    elif command in (Command.reject, Command.return_for_info, Command.withdraw, Command.expire):
        referral.status_reason = reason_code or (command.value if command is Command.expire else None)
        referral.status_note = note
    uow.session.add(
        ReferralTransition(
            id=uuid.uuid4(),
            referral_id=referral.id,
            command=command.value,
            from_status=source.value,
            to_status=target.value,
            reason_code=reason_code,
            actor_user_id=actor.user_id if actor else None,
            actor_facility_id=actor.facility_id if actor else None,
            at=now,
        )
    )
    extra = {"reason_code": reason_code} if reason_code else None
    uow.record(
        referral_event(EVENT_OF_COMMAND[command], referral, at=now, audience=audience_for(command, referral),
                       extra=extra)
    )  # fmt: skip
    return target


def _is_party(party: Party, principal: Principal, referral: Referral, scope: frozenset[uuid.UUID]) -> bool:
    if party == "sender":
        return principal.facility_id == referral.from_facility_id
    if party == "receiver":
        return referral.to_facility_id in scope and principal.facility_id != referral.from_facility_id
    if party == "reviewer":
        return principal.role is Role.township_doctor and principal.facility_id == referral.review_facility_id
    if party == "follow_up":
        # The primary-care side follows the patient up: the sender of an up-referral, the receiver of a down one.
        side: Party = "receiver" if referral.direction == "down" else "sender"
        return _is_party(side, principal, referral, scope)
    return False


def _actions(principal: Principal, referral: Referral, scope: frozenset[uuid.UUID]) -> list[str]:
    status = ReferralStatus(referral.status)
    return [
        name
        for name, command in USER_ACTIONS.items()
        if (status, command) in TRANSITIONS and _is_party(ACTORS[(status, command)], principal, referral, scope)
    ]


async def _flush(uow: UnitOfWork) -> None:
    try:
        await uow.session.flush()
    except StaleDataError:
        # The conditional UPDATE (row_version) found the row changed since it was read: someone else won.
        raise ConcurrentChange() from None


# ------------------------------------------------------------------------------------------------------ reads


async def _patient_ref(uow: UnitOfWork, patient_id: uuid.UUID, today: dt.date) -> PatientRef | None:
    # The referral the caller may see is the basis of this access (audited with it); the receiving side of a
    # referral must see whom it receives even where the patient is registered outside its own scope.
    view = await registry.get_patient(uow.session, patient_id)
    if view is None:
        return None
    birth = dt.date.fromisoformat(view.birth_date_iso)
    return PatientRef(id=view.id, name=view.name, sex=view.sex, birth_date=birth, age=_age(birth, today))


def _summary_fields(
    referral: Referral,
    *,
    patient: PatientRef | None,
    facilities: Facilities,
    actions: list[str],
) -> dict[str, Any]:
    status = ReferralStatus(referral.status)
    zh, en = BUSINESS_STATUS_NAMES[status]
    review = referral.review_facility_id
    return {
        "id": referral.id,
        "status": status.value,
        "status_zh": zh,
        "status_en": en,
        "task_status": TASK_STATUS[status],
        "service_request_status": SERVICE_REQUEST_STATUS[status],
        "patient": patient,
        "from_facility": _facility_ref(facilities.get(referral.from_facility_id), referral.from_facility_id),
        "to_facility": _facility_ref(facilities.get(referral.to_facility_id), referral.to_facility_id),
        "review_facility": _facility_ref(facilities.get(review), review) if review else None,
        "direction": referral.direction,
        "skip_level": referral.skip_level,
        "priority": referral.priority,
        "icd10": list(referral.icd10),
        "outcome": referral.outcome,
        "compliant": referral.compliant,
        "override_applied": referral.override_applied,
        "green_channel": referral.green_channel,
        "policy_version": referral.policy_version,
        "valid_until": referral.valid_until,
        "created_at": referral.created_at,
        "submitted_at": referral.submitted_at,
        "ack_due_at": referral.ack_due_at if status in AWAITING_ACK else None,
        "acknowledged_at": referral.acknowledged_at,
        "escalated_at": referral.escalated_at,
        "status_reason": referral.status_reason,
        "based_on_id": referral.based_on_id,
        "actions": actions,
    }


async def _read(
    uow: UnitOfWork,
    principal: Principal,
    referral: Referral,
    scope: frozenset[uuid.UUID],
    facilities: Facilities | None = None,
) -> ReferralRead:
    facilities = facilities if facilities is not None else await _facilities(uow)
    today = local_date(utcnow())
    history = await repository.history(uow.session, referral.id)
    fields = _summary_fields(
        referral,
        patient=await _patient_ref(uow, referral.patient_id, today),
        facilities=facilities,
        actions=_actions(principal, referral, scope),
    )
    return ReferralRead(
        **fields,
        facts=dict(referral.facts),
        reason=referral.reason,
        notes=referral.notes,
        override_reason=referral.override_reason,
        study_uids=list(referral.study_uids),
        consult_refs=list(referral.consult_refs),
        reason_codes=list(referral.reason_codes),
        decision=dict(referral.decision),
        policy_version_id=referral.policy_version_id,
        status_note=referral.status_note,
        summary=referral.summary,
        accepted_at=referral.accepted_at,
        arrived_at=referral.arrived_at,
        completed_at=referral.completed_at,
        closed_at=referral.closed_at,
        followup_due=referral.followup_due,
        history=[TransitionRead.model_validate(t, from_attributes=True) for t in history],
    )


def _audit_read(uow: UnitOfWork, referral: Referral, *, purpose: str = "treatment", **detail: Any) -> None:
    uow.audit(AuditEntry(AuditAction.read, REFERRAL, str(referral.id), patient_ref=str(referral.patient_id),
                         purpose=purpose, detail={"basis": "referral", **detail}))  # fmt: skip


async def visible_referral(
    uow: UnitOfWork, principal: Principal, referral_id: uuid.UUID, *, for_update: bool = False
) -> tuple[Referral, frozenset[uuid.UUID]]:
    """The referral when the caller may see it; a denied audit record and 404 otherwise."""
    require_clinical(principal)
    scope = await registry.facility_scope(uow.session, principal)
    referral = await repository.get_visible(uow.session, scope, referral_id, for_update=for_update)
    if referral is None:
        uow.audit(AuditEntry(AuditAction.read, REFERRAL, str(referral_id), AuditOutcome.denied))
        raise ReferralNotFound()
    return referral, scope


async def read_referral(uow: UnitOfWork, *, principal: Principal, referral_id: uuid.UUID) -> ReferralRead:
    referral, scope = await visible_referral(uow, principal, referral_id)
    _audit_read(uow, referral)
    return await _read(uow, principal, referral, scope)


async def list_referrals(
    uow: UnitOfWork,
    *,
    principal: Principal,
    box: str,
    statuses: Sequence[ReferralStatus],
    limit: int,
    offset: int,
) -> ReferralPage:
    require_clinical(principal)
    scope = await registry.facility_scope(uow.session, principal)
    rows, total = await repository.list_box(
        uow.session,
        box,
        scope=scope,
        facility_id=principal.facility_id,
        statuses=[s.value for s in statuses],
        limit=limit,
        offset=offset,
    )
    uow.audit(
        AuditEntry(
            AuditAction.query,
            REFERRAL,
            None,
            detail={
                "box": box,
                "referral_ids": [str(r.id) for r in rows],
                "patient_refs": sorted({str(r.patient_id) for r in rows}),
            },
        )
    )
    facilities = await _facilities(uow)
    today = local_date(utcnow())
    items = [
        ReferralSummary(
            **_summary_fields(
                r,
                patient=await _patient_ref(uow, r.patient_id, today),
                facilities=facilities,
                actions=_actions(principal, r, scope),
            )
        )
        for r in rows
    ]
    return ReferralPage(items=items, total=total, limit=limit, offset=offset)


# ------------------------------------------------------------------------------------------------------ use cases


def _origin(principal: Principal) -> uuid.UUID:
    if principal.facility_id is None:
        raise InvalidInput(errors=[field_error("facility", "referral.facility_required")])
    return principal.facility_id


async def evaluate(uow: UnitOfWork, *, principal: Principal, data: ReferralCheck) -> Evaluation:
    """The check a doctor runs before submitting: nothing is stored (only the patient lookup is audited)."""
    require_clinical(principal)
    origin_id = _origin(principal)
    now = utcnow()
    patient = None
    if data.patient_id is not None:
        patient = await _patient_in_scope(uow, principal, data.patient_id, purpose="referral_check")
    checked = await check(
        uow,
        origin_id=origin_id,
        to_facility_id=data.to_facility_id,
        icd10=data.icd10,
        priority=data.priority,
        facts=_facts(data.facts, patient=patient, onset_at=data.onset_at, now=now),
        override_reason=data.override_reason,
        today=local_date(now),
    )
    target = checked.target
    return Evaluation(
        decision=checked.decision,
        policy_version=checked.decision.policy_version,
        policy_version_id=checked.active.ref,
        from_facility=_facility_ref(checked.origin, checked.origin.id),
        to_facility=_facility_ref(target, target.id) if target is not None else None,
        min_override_chars=checked.active.policy.min_override_chars,
    )


async def form_spec(uow: UnitOfWork, *, principal: Principal) -> FormSpec:
    require_clinical(principal)
    active = await policy_store(uow).active(uow.session, local_date(utcnow()))
    facts = [
        FactSpecRead(
            name=spec.name,
            type=spec.type,
            label_zh=spec.label_zh,
            label_en=spec.label_en,
            unit=spec.unit,
            min=spec.min,
            max=spec.max,
            values=sorted(spec.values) if spec.values is not None else None,
        )
        for spec in active.policy.facts.values()
        if not spec.builtin
    ]
    reasons = [
        {"code": r.value, "zh": REJECT_REASON_NAMES[r][0], "en": REJECT_REASON_NAMES[r][1]} for r in RejectReason
    ]
    return FormSpec(
        policy_version=active.policy.version_label,
        min_override_chars=active.policy.min_override_chars,
        facts=facts,
        reject_reasons=reasons,
    )


async def _up_referral_for(
    uow: UnitOfWork, principal: Principal, based_on: uuid.UUID, patient_id: uuid.UUID
) -> Referral:
    """The up-referral a down-referral answers: received here, completed, of the same patient."""
    scope = await registry.facility_scope(uow.session, principal)
    up = await repository.get_visible(uow.session, scope, based_on, for_update=True)
    invalid = InvalidInput(errors=[field_error("based_on", "referral.based_on_invalid")])
    if up is None or up.patient_id != patient_id or up.direction != "up":
        raise invalid
    if up.to_facility_id != principal.facility_id or up.status != ReferralStatus.completed.value:
        raise invalid
    return up


async def submit_referral(uow: UnitOfWork, *, principal: Principal, data: ReferralCreate) -> ReferralRead:
    require_clinical(principal)
    origin_id = _origin(principal)
    now = utcnow()
    patient = await _patient_in_scope(uow, principal, data.patient_id, purpose="treatment")
    up = await _up_referral_for(uow, principal, data.based_on, patient.id) if data.based_on else None
    facts = _facts(data.facts, patient=patient, onset_at=data.onset_at, now=now)
    checked = await check(
        uow,
        origin_id=origin_id,
        to_facility_id=data.to_facility_id,
        icd10=data.icd10,
        priority=data.priority,
        facts=facts,
        override_reason=data.override_reason,
        today=local_date(now),
    )
    _enforce(checked, draft=data.draft)
    if up is not None and checked.decision.direction != "down":
        raise InvalidInput(errors=[field_error("based_on", "referral.based_on_invalid")])
    referral = Referral(
        id=uuid.uuid4(),
        patient_id=patient.id,
        from_facility_id=origin_id,
        based_on_id=up.id if up is not None else None,
        target_suggested=data.to_facility_id is None,
        status=ReferralStatus.draft.value,
        requested_priority=data.priority,
        icd10=list(data.icd10),
        facts=dict(facts),
        reason=data.reason,
        notes=data.notes,
        override_reason=data.override_reason,
        study_uids=list(data.study_uids),
        consult_refs=list(data.consult_refs),
        created_by=principal.user_id,
        created_at=now,
        updated_at=now,
    )
    _apply_decision(referral, checked)
    uow.session.add(referral)
    uow.session.add(
        ReferralTransition(id=uuid.uuid4(), referral_id=referral.id, command="create", from_status=None,
                           to_status=ReferralStatus.draft.value, actor_user_id=principal.user_id,
                           actor_facility_id=principal.facility_id, at=now)
    )  # fmt: skip
    await _flush(uow)
    uow.audit(AuditEntry(AuditAction.create, REFERRAL, str(referral.id), patient_ref=str(patient.id),
                         detail={"policy_version": referral.policy_version, "outcome": referral.outcome}))  # fmt: skip
    if not data.draft:
        command = Command.submit_for_review if referral.review_facility_id else Command.submit
        apply_command(uow, referral, command, now=now, actor=principal)
        _audit_override(uow, referral, checked.decision)
    if up is not None:
        apply_command(uow, up, Command.refer_down, now=now, actor=principal)
    await _flush(uow)
    scope = await registry.facility_scope(uow.session, principal)
    return await _read(uow, principal, referral, scope, checked.facilities)


async def act_on_referral(
    uow: UnitOfWork, *, principal: Principal, referral_id: uuid.UUID, action: str, data: ReferralAction
) -> ReferralRead:
    command = USER_ACTIONS.get(action)
    require_clinical(principal)
    if command is None:
        raise UnknownAction()
    referral, scope = await visible_referral(uow, principal, referral_id, for_update=True)
    status = ReferralStatus(referral.status)
    next_status(status, command)  # 409 before anything else: the move does not exist in this status
    if not _is_party(ACTORS[(status, command)], principal, referral, scope):
        uow.audit(AuditEntry(AuditAction.update, REFERRAL, str(referral.id), AuditOutcome.denied,
                             str(referral.patient_id), detail={"action": action}))  # fmt: skip
        raise NotYourAction(action)
    now = utcnow()
    reason_code: str | None = None
    checked: Checked | None = None
    if command in (Command.reject, Command.return_for_info):
        code = data.reason_code or (RejectReason.incomplete_info if command is Command.return_for_info else None)
        if code is None:
            raise InvalidInput(errors=[field_error("reason_code", "referral.reason_code_required")])
        reason_code = code.value
    elif command is Command.complete:
        if not data.summary:
            raise InvalidInput(errors=[field_error("summary", "referral.summary_required")])
        referral.summary = data.summary
    elif command in (Command.submit, Command.resubmit):
        checked = await _recheck(uow, referral, data, now)
        if referral.review_facility_id is not None:
            command = Command.submit_for_review if command is Command.submit else Command.resubmit_for_review
    apply_command(uow, referral, command, now=now, actor=principal, reason_code=reason_code, note=data.note)
    if checked is not None:
        _audit_override(uow, referral, checked.decision)
    uow.audit(AuditEntry(AuditAction.update, REFERRAL, str(referral.id), patient_ref=str(referral.patient_id),
                         detail={"action": command.value, "status": referral.status,
                                 "reason_code": reason_code}))  # fmt: skip
    await _flush(uow)
    return await _read(uow, principal, referral, scope)


async def _recheck(uow: UnitOfWork, referral: Referral, data: ReferralAction, now: dt.datetime) -> Checked:
    """A draft or a returned referral is checked again, with what the sender added, under today's policy."""
    facts: dict[str, FactValue] = {**referral.facts, **(data.facts or {})}
    icd10 = list(data.icd10) if data.icd10 is not None else list(referral.icd10)
    priority = data.priority or referral.requested_priority
    override_reason = data.override_reason or referral.override_reason
    checked = await check(
        uow,
        origin_id=referral.from_facility_id,
        to_facility_id=referral.to_facility_id,
        icd10=icd10,
        priority=priority,
        facts=facts,
        override_reason=override_reason,
        today=local_date(now),
    )
    _enforce(checked)
    referral.facts = facts
    referral.icd10 = icd10
    referral.requested_priority = priority
    referral.override_reason = override_reason
    if data.study_uids is not None:
        referral.study_uids = list(data.study_uids)
    _apply_decision(referral, checked)
    return checked


# ------------------------------------------------------------------------------------------ policy administration


def _policy_errors(errors: Sequence[PolicyError]) -> list[dict[str, Any]]:
    return [
        {"code": e.code, "message_zh": e.message_zh, "message_en": e.message_en, "path": e.path, "line": e.line,
         "column": e.column, "document": e.document}
        for e in errors
    ]  # fmt: skip


def _key_position(text: str, key: str) -> tuple[int | None, int | None]:
    """Line and column of a top-level key of a (valid) YAML document."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if key_node.value == key:
                return key_node.start_mark.line + 1, key_node.start_mark.column + 1
    return None, None


def _version_read(
    entry: VersionIndex | None, policy: CompiledPolicy, *, active_ref: str, rules: int
) -> PolicyVersionRead:
    ref = DEFAULT_ID if entry is None else str(entry.id)
    return PolicyVersionRead(
        id=ref,
        community=policy.community,
        version=policy.version,
        label=policy.version_label,
        effective_from=policy.effective_from,
        effective_until=policy.effective_until,
        builtin=entry is None,
        active=ref == active_ref,
        uploaded_by=entry.uploaded_by if entry else None,
        uploaded_at=entry.uploaded_at if entry else None,
        rules=rules,
    )


def _rule_count(policy: CompiledPolicy) -> int:
    return sum(
        len(rules)
        for rules in (policy.emergency_rules, policy.upward_rules, policy.downward_rules, policy.lateral_rules)
    )


def _default_text() -> str:
    return files("referral").joinpath("policies", "default.yaml").read_text(encoding="utf-8")


async def upload_policy(uow: UnitOfWork, *, principal: Principal, text: str) -> PolicyVersionDetail:
    """Validate, check the dates against the stored versions, store; the policy in force is untouched on error."""
    _require_admin(principal)
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise InvalidInput(errors=[FieldError("document", "referral_policy.too_large", "文件过大", "Too large")])
    version_id = uuid.uuid4()
    try:
        policy = load_policy(text, document=document_name(version_id))
    except PolicyValidationError as exc:
        raise PolicyInvalid(_policy_errors(exc.errors)) from None
    store = policy_store(uow)
    index = await store.index(uow.session)
    same_community = [e for e in index if e.community == policy.community]
    for entry in same_community:
        if entry.version == policy.version:
            line, column = _key_position(text, "version")
            raise PolicyInvalid(
                [
                    {"code": "duplicate-version", "path": "version", "line": line, "column": column,
                     "document": document_name(version_id),
                     "message_zh": f"社区“{policy.community}”已有版本“{policy.version}”",
                     "message_en": f"community '{policy.community}' already has version '{policy.version}'"}
                ]
            )  # fmt: skip
    stored = [p for e in same_community if (p := await store.compiled(uow.session, e.id)) is not None]
    date_errors = _policy_errors(check_effective_dates([*stored, policy]))
    if date_errors:
        # An error found at a stored version (the upload starts earlier and runs into it) is the upload's fault:
        # point at the upload's own effective_until (or effective_from), where the fix belongs.
        own = document_name(version_id)
        for error in date_errors:
            if error["document"] != own:
                key = "effective_until" if policy.effective_until is not None else "effective_from"
                error["line"], error["column"] = _key_position(text, key)
                error["path"], error["document"] = key, own
        raise PolicyInvalid(date_errors)
    row = PolicyVersion(
        id=version_id,
        community=policy.community,
        version=policy.version,
        effective_from=policy.effective_from,
        effective_until=policy.effective_until,
        yaml_text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        uploaded_by=principal.user_id,
        uploaded_at=utcnow(),
    )
    uow.session.add(row)
    await uow.session.flush()
    store.remember(version_id, policy)
    uow.audit(AuditEntry(AuditAction.create, POLICY, str(version_id), purpose="administration",
                         detail={"label": policy.version_label,
                                 "effective_from": policy.effective_from.isoformat()}))  # fmt: skip
    return await get_policy(uow, principal=principal, ref=str(version_id))


async def list_policies(uow: UnitOfWork, *, principal: Principal) -> list[PolicyVersionRead]:
    _require_admin(principal)
    store = policy_store(uow)
    index = await store.index(uow.session)
    chosen = in_force(index, local_date(utcnow()))
    active_ref = str(chosen.id) if chosen else DEFAULT_ID
    default = load_default_policy()
    result = [_version_read(None, default, active_ref=active_ref, rules=_rule_count(default))]
    for entry in index:
        policy = await store.compiled(uow.session, entry.id)
        if policy is not None:
            result.append(_version_read(entry, policy, active_ref=active_ref, rules=_rule_count(policy)))
    return result


async def _resolve(uow: UnitOfWork, ref: str) -> tuple[ActivePolicy, str, VersionIndex | None]:
    store = policy_store(uow)
    resolved = await store.resolve(uow.session, ref)
    if resolved is None:
        raise PolicyVersionNotFound()
    if resolved.id is None:
        return resolved, _default_text(), None
    row = await uow.session.get(PolicyVersion, resolved.id)
    if row is None:
        raise PolicyVersionNotFound()
    entry = VersionIndex(row.id, row.community, row.version, row.effective_from, row.effective_until,
                         row.uploaded_at, row.uploaded_by)  # fmt: skip
    return resolved, row.yaml_text, entry


async def get_policy(uow: UnitOfWork, *, principal: Principal, ref: str) -> PolicyVersionDetail:
    _require_admin(principal)
    resolved, text, entry = await _resolve(uow, ref)
    chosen = in_force(await policy_store(uow).index(uow.session), local_date(utcnow()))
    read = _version_read(
        entry,
        resolved.policy,
        active_ref=str(chosen.id) if chosen else DEFAULT_ID,
        rules=_rule_count(resolved.policy),
    )
    return PolicyVersionDetail(**read.model_dump(), yaml_text=text)


def _rules_by_id(model: Policy) -> dict[str, tuple[str, dict[str, Any]]]:
    rules: dict[str, tuple[str, dict[str, Any]]] = {}
    for section in ("emergency", "upward", "downward", "lateral"):
        for rule in getattr(model.rules, section):
            rules[rule.id] = (section, rule.model_dump(mode="json", by_alias=True, exclude_none=True))
    return rules


async def diff_policies(uow: UnitOfWork, *, principal: Principal, from_ref: str, to_ref: str) -> PolicyDiff:
    _require_admin(principal)
    old, old_text, _ = await _resolve(uow, from_ref)
    new, new_text, _ = await _resolve(uow, to_ref)
    old_label, new_label = old.policy.version_label, new.policy.version_label
    unified = "".join(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=f"{old_label} ({old.ref})",
            tofile=f"{new_label} ({new.ref})",
        )
    )
    old_rules, new_rules = _rules_by_id(old.policy.model), _rules_by_id(new.policy.model)
    added = [RuleChange(id=i, section=new_rules[i][0]) for i in new_rules if i not in old_rules]
    removed = [RuleChange(id=i, section=old_rules[i][0]) for i in old_rules if i not in new_rules]
    changed: list[RuleChange] = []
    for rule_id, (section, body) in new_rules.items():
        if rule_id not in old_rules:
            continue
        old_section, old_body = old_rules[rule_id]
        fields = sorted(k for k in body.keys() | old_body.keys() if body.get(k) != old_body.get(k))
        if old_section != section:
            fields.append("section")
        if fields:
            changed.append(RuleChange(id=rule_id, section=section, fields=fields))
    old_dump = old.policy.model.model_dump(mode="json", by_alias=True)
    new_dump = new.policy.model.model_dump(mode="json", by_alias=True)
    sections = [key for key in new_dump if key != "rules" and new_dump.get(key) != old_dump.get(key)]
    return PolicyDiff(
        from_id=old.ref,
        to_id=new.ref,
        from_label=old_label,
        to_label=new_label,
        unified_diff=unified,
        rules_added=added,
        rules_removed=removed,
        rules_changed=changed,
        sections_changed=sections,
    )


def months_before(day: dt.date, months: int) -> dt.date:
    years, month_index = divmod(day.month - 1 - months, 12)
    year, month = day.year + years, month_index + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


async def dry_run(uow: UnitOfWork, *, principal: Principal, ref: str, months: int) -> DryRun:
    """Re-check the referrals of the last ``months`` months under one version: which decisions would change."""
    _require_admin(principal)
    resolved, _, _ = await _resolve(uow, ref)
    since = months_before(local_date(utcnow()), months)
    since_at = dt.datetime.combine(since, dt.time(), LOCAL_TZ)
    referrals = await repository.created_since(uow.session, since_at, limit=DRY_RUN_LIMIT)
    facilities = await _facilities(uow)
    candidates = [facility_info(view) for view in facilities.values()]
    changes: list[DryRunChange] = []
    for referral in referrals:
        origin = facilities.get(referral.from_facility_id)
        target = facilities.get(referral.to_facility_id)
        if origin is None or target is None:
            continue
        request = ReferralRequest(
            from_facility=facility_info(origin),
            to_facility=facility_info(target),
            icd10=tuple(referral.icd10),
            priority=referral.requested_priority,
            facts=referral.facts,
            override_reason=referral.override_reason,
        )
        decision = evaluate_referral(
            resolved.policy, request, candidates=candidates, today=local_date(referral.created_at)
        )
        if decision.outcome != referral.outcome or decision.compliant != referral.compliant:
            changes.append(
                DryRunChange(
                    referral_id=referral.id,
                    created_at=referral.created_at,
                    old_outcome=referral.outcome,
                    new_outcome=decision.outcome,
                    old_compliant=referral.compliant,
                    new_compliant=decision.compliant,
                    old_policy_version=referral.policy_version,
                )
            )
    # The stored facts are clinical data: the run is audited, though it returns identifiers and outcomes only.
    uow.audit(AuditEntry(AuditAction.execute, POLICY, resolved.ref, purpose="policy_dry_run",
                         detail={"months": months, "evaluated": len(referrals), "changed": len(changes)}))  # fmt: skip
    return DryRun(
        policy_id=resolved.ref,
        policy_version=resolved.policy.version_label,
        months=months,
        since=since,
        evaluated=len(referrals),
        changed=len(changes),
        changes=changes,
    )
