"""Request and response bodies of the referral API."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from referral.rules import Decision
from referral.state import RejectReason

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

Priority = Literal["routine", "urgent", "asap", "stat"]
Box = Literal["inbox", "outbox", "review"]
FactName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
#: A recorded fact: JSON true/false stay booleans, numbers stay numbers (pydantic's smart union keeps the type).
FactValue = bool | int | float | Annotated[str, Field(max_length=200)]
Icd10Code = Annotated[str, Field(min_length=1, max_length=20), AfterValidator(lambda v: v.strip().upper())]


def _check_uid(value: str) -> str:
    value = value.strip()
    if len(value) > 64 or not _UID.match(value):
        raise ValueError("referral.study_uid")
    return value


StudyUid = Annotated[str, AfterValidator(_check_uid)]
ConsultRef = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ReferralCheck(Strict):
    """What the rules engine needs; ``to_facility_id`` absent asks the engine to suggest the target."""

    patient_id: uuid.UUID | None = None
    to_facility_id: uuid.UUID | None = None
    icd10: Annotated[list[Icd10Code], Field(max_length=20)] = Field(default_factory=list)
    priority: Priority | None = None
    facts: Annotated[dict[FactName, FactValue], Field(max_length=100)] = Field(default_factory=dict)
    #: When the symptoms began; becomes the ``onset_minutes`` fact when that is not given.
    onset_at: dt.datetime | None = None
    override_reason: Annotated[str | None, Field(max_length=2000)] = None


class ReferralCreate(ReferralCheck):
    patient_id: uuid.UUID  # required when submitting
    reason: Annotated[str | None, Field(max_length=2000)] = None
    notes: Annotated[str | None, Field(max_length=4000)] = None
    study_uids: Annotated[list[StudyUid], Field(max_length=50)] = Field(default_factory=list)
    consult_refs: Annotated[list[ConsultRef], Field(max_length=50)] = Field(default_factory=list)
    #: The up-referral a down-referral sends the patient back from (FHIR ServiceRequest.basedOn).
    based_on: uuid.UUID | None = None
    #: Keep it as a draft (checked, stored, not sent); ``POST /referrals/{id}/submit`` sends it later.
    draft: bool = False


class ReferralAction(Strict):
    """The body of ``POST /api/v1/referrals/{id}/{action}`` (every field optional; what an action needs is checked)."""

    reason_code: RejectReason | None = None
    note: Annotated[str | None, Field(max_length=2000)] = None
    #: The counter-referral summary (回执) that completes a referral.
    summary: Annotated[str | None, Field(max_length=8000)] = None
    # A resubmission (or the submission of a draft) may complete the request:
    facts: Annotated[dict[FactName, FactValue] | None, Field(max_length=100)] = None
    icd10: Annotated[list[Icd10Code] | None, Field(max_length=20)] = None
    priority: Priority | None = None
    override_reason: Annotated[str | None, Field(max_length=2000)] = None
    study_uids: Annotated[list[StudyUid] | None, Field(max_length=50)] = None


class FacilityRef(BaseModel):
    id: uuid.UUID
    name: str
    tier: str


class PatientRef(BaseModel):
    id: uuid.UUID
    name: str
    sex: str
    birth_date: dt.date
    age: int


class Evaluation(BaseModel):
    """The answer of ``POST /referrals/evaluate``: the engine's decision and what it was checked under."""

    decision: Decision
    policy_version: str
    policy_version_id: str
    from_facility: FacilityRef
    to_facility: FacilityRef | None
    #: What an override reason must be at least (characters), for the form to say so.
    min_override_chars: int


class TransitionRead(BaseModel):
    command: str
    from_status: str | None
    to_status: str
    reason_code: str | None
    actor_user_id: uuid.UUID | None
    actor_facility_id: uuid.UUID | None
    at: dt.datetime


class ReferralSummary(BaseModel):
    id: uuid.UUID
    status: str
    status_zh: str
    status_en: str
    task_status: str
    service_request_status: str
    patient: PatientRef | None
    from_facility: FacilityRef
    to_facility: FacilityRef
    review_facility: FacilityRef | None
    direction: str
    skip_level: bool
    priority: str
    icd10: list[str]
    outcome: str
    compliant: bool
    override_applied: bool
    green_channel: bool
    policy_version: str
    valid_until: dt.date | None
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    ack_due_at: dt.datetime | None
    acknowledged_at: dt.datetime | None
    escalated_at: dt.datetime | None
    status_reason: str | None
    based_on_id: uuid.UUID | None
    #: The actions the caller may take now (``POST /referrals/{id}/{action}``).
    actions: list[str]


class ReferralRead(ReferralSummary):
    facts: dict[str, Any]
    reason: str | None
    notes: str | None
    override_reason: str | None
    study_uids: list[str]
    consult_refs: list[str]
    reason_codes: list[str]
    decision: dict[str, Any]
    policy_version_id: uuid.UUID | None
    status_note: str | None
    summary: str | None
    accepted_at: dt.datetime | None
    arrived_at: dt.datetime | None
    completed_at: dt.datetime | None
    closed_at: dt.datetime | None
    followup_due: dt.date | None
    history: list[TransitionRead]


class ReferralPage(BaseModel):
    items: list[ReferralSummary]
    total: int
    limit: int
    offset: int


class FactSpecRead(BaseModel):
    name: str
    type: str
    label_zh: str
    label_en: str
    unit: str | None
    min: float | None
    max: float | None
    values: list[str] | None


class FormSpec(BaseModel):
    """What the referral form needs from the policy in force: its version and the facts it knows."""

    policy_version: str
    min_override_chars: int
    facts: list[FactSpecRead]
    reject_reasons: list[dict[str, str]]


# ------------------------------------------------------------------------------------------- policy versions


class PolicyVersionRead(BaseModel):
    id: str
    community: str
    version: str
    label: str
    effective_from: dt.date
    effective_until: dt.date | None
    builtin: bool
    active: bool
    uploaded_by: uuid.UUID | None
    uploaded_at: dt.datetime | None
    rules: int


class PolicyVersionDetail(PolicyVersionRead):
    yaml_text: str


class RuleChange(BaseModel):
    id: str
    section: str
    #: Top-level keys of the rule that differ (``when``, ``priority``…); empty for added or removed rules.
    fields: list[str] = Field(default_factory=list)


class PolicyDiff(BaseModel):
    from_id: str
    to_id: str
    from_label: str
    to_label: str
    unified_diff: str
    rules_added: list[RuleChange]
    rules_removed: list[RuleChange]
    rules_changed: list[RuleChange]
    #: Other top-level sections that differ (``insurance``, ``sla``, ``capabilities``…).
    sections_changed: list[str]


class DryRunChange(BaseModel):
    referral_id: uuid.UUID
    created_at: dt.datetime
    old_outcome: str
    new_outcome: str
    old_compliant: bool
    new_compliant: bool
    old_policy_version: str


class DryRun(BaseModel):
    policy_id: str
    policy_version: str
    months: int
    since: dt.date
    evaluated: int
    changed: int
    changes: list[DryRunChange]
