"""Tables of the referral domain: policy versions, referrals and their transition history.

A referral is one row: the ServiceRequest (what is asked: patient, diagnoses, facts, priority, target) and the
Task (how far its fulfilment got: business status, owner clocks, outcome) of referral-rules-notes.md §2.1. The
decision of the rules engine is stored as it was made, with the policy version it was checked under, so that a
later policy change never rewrites history (the dashboard counts what was decided then).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.db import Base, PortableJSON, UTCDateTime, utcnow


class PolicyVersion(Base):
    """One uploaded version of a community's referral policy (the YAML exactly as uploaded)."""

    __tablename__ = "referral_policy_version"
    __table_args__ = (
        UniqueConstraint("community", "version"),
        # Two versions of one community never start on the same day (check_effective_dates says why in words).
        UniqueConstraint("community", "effective_from"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    community: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    effective_from: Mapped[dt.date] = mapped_column(Date)
    effective_until: Mapped[dt.date | None] = mapped_column(Date)
    yaml_text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"))
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Referral(Base):
    __tablename__ = "referral"
    __table_args__ = (
        Index("ix_referral_to_status", "to_facility_id", "status"),
        Index("ix_referral_from_status", "from_facility_id", "status"),
        Index("ix_referral_status_ack_due", "status", "ack_due_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: Optimistic lock: every UPDATE is conditional on the version read (a racing accept and withdraw cannot
    #: both win, even where the row lock is not available).
    row_version: Mapped[int] = mapped_column(Integer, default=1)
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("patient.id"), index=True)
    from_facility_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("facility.id"))
    to_facility_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("facility.id"))
    #: The facility of the township doctors who review this referral before it goes on (None: no review).
    review_facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"))
    #: The down-referral's up-referral (FHIR ServiceRequest.basedOn).
    based_on_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("referral.id"), index=True)
    from_tier: Mapped[str] = mapped_column(String(16))
    to_tier: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str] = mapped_column(String(8))
    skip_level: Mapped[bool] = mapped_column(Boolean, default=False)
    target_suggested: Mapped[bool] = mapped_column(Boolean, default=False)

    status: Mapped[str] = mapped_column(String(24))
    status_reason: Mapped[str | None] = mapped_column(String(32))
    status_note: Mapped[str | None] = mapped_column(Text)

    requested_priority: Mapped[str | None] = mapped_column(String(8))
    priority: Mapped[str] = mapped_column(String(8))
    icd10: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    facts: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    override_reason: Mapped[str | None] = mapped_column(Text)
    study_uids: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    consult_refs: Mapped[list[str]] = mapped_column(PortableJSON, default=list)

    outcome: Mapped[str] = mapped_column(String(16))
    compliant: Mapped[bool] = mapped_column(Boolean)
    override_applied: Mapped[bool] = mapped_column(Boolean, default=False)
    green_channel: Mapped[bool] = mapped_column(Boolean, default=False)
    reason_codes: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    decision: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    #: The label of the policy the decision was made under (``community@version``) and its stored row, if any
    #: (None: the shipped default).
    policy_version: Mapped[str] = mapped_column(String(200))
    policy_version_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("referral_policy_version.id"))
    valid_until: Mapped[dt.date | None] = mapped_column(Date, index=True)
    ack_within_minutes: Mapped[int] = mapped_column(Integer)
    followup_days: Mapped[int] = mapped_column(Integer)

    #: Counter-referral summary (回执), written by the receiver on completion (Task.output).
    summary: Mapped[str | None] = mapped_column(Text)

    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When the current owner (township reviewer or receiver) must have acknowledged it (Task.restriction.period).
    ack_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    arrived_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    followup_due: Mapped[dt.date | None] = mapped_column(Date)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy reads it once, at mapping


class ReferralTransition(Base):
    """Each move of a referral: the Provenance trail behind Task.relevantHistory (notes §2.1, §5.1)."""

    __tablename__ = "referral_transition"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    referral_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("referral.id"), index=True)
    command: Mapped[str] = mapped_column(String(24))
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    reason_code: Mapped[str | None] = mapped_column(String(32))
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"))
    actor_facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
