"""Facts the referral domain publishes (past tense, ``referral.<verb>``).

Payloads carry identifiers, codes and times only, never a name, an ID number or a phone number: events travel
through the outbox, Redis and logs, and feed the bureau's dashboard (flows up and down, compliance, turnaround).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

from referral.models import Referral
from referral.state import TASK_STATUS, Command, ReferralStatus
from telemed.core.events import DomainEvent

SUBMITTED: Final = "referral.submitted"
APPROVED: Final = "referral.approved"
RECEIVED: Final = "referral.received"
ACCEPTED: Final = "referral.accepted"
REJECTED: Final = "referral.rejected"
RETURNED: Final = "referral.returned"
RESUBMITTED: Final = "referral.resubmitted"
ARRIVED: Final = "referral.arrived"
COMPLETED: Final = "referral.completed"
DOWN_REFERRED: Final = "referral.down_referred"
CLOSED: Final = "referral.closed"
WITHDRAWN: Final = "referral.withdrawn"
EXPIRED: Final = "referral.expired"
ESCALATED: Final = "referral.escalated"

EVENT_OF_COMMAND: Final[Mapping[Command, str]] = {
    Command.submit: SUBMITTED,
    Command.submit_for_review: SUBMITTED,
    Command.approve: APPROVED,
    Command.receive: RECEIVED,
    Command.accept: ACCEPTED,
    Command.reject: REJECTED,
    Command.return_for_info: RETURNED,
    Command.resubmit: RESUBMITTED,
    Command.resubmit_for_review: RESUBMITTED,
    Command.arrive: ARRIVED,
    Command.complete: COMPLETED,
    Command.refer_down: DOWN_REFERRED,
    Command.close: CLOSED,
    Command.withdraw: WITHDRAWN,
    Command.expire: EXPIRED,
}


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def owner_facility(referral: Referral) -> uuid.UUID:
    """Who has to act now: the township reviewer while under review, else the receiving facility."""
    if referral.status == ReferralStatus.pending_review and referral.review_facility_id is not None:
        return referral.review_facility_id
    return referral.to_facility_id


def audience_for(command: Command, referral: Referral) -> tuple[uuid.UUID, ...]:
    """The facilities told about a move: the receiver (or reviewer) of a submission, the sender of a reply."""
    sender, receiver = referral.from_facility_id, referral.to_facility_id
    if command in (Command.submit, Command.submit_for_review, Command.resubmit, Command.resubmit_for_review):
        return (owner_facility(referral),)
    if command is Command.approve:
        return (receiver, sender)
    if command is Command.withdraw:
        return tuple(dict.fromkeys(f for f in (receiver, referral.review_facility_id) if f is not None))
    if command in (Command.expire, Command.close):
        return (sender, receiver)
    # receive, accept, reject, return, arrive, complete, refer_down: the sending side learns the answer
    return (sender,)


def referral_event(
    name: str,
    referral: Referral,
    *,
    at: dt.datetime,
    audience: Iterable[uuid.UUID],
    extra: Mapping[str, Any] | None = None,
) -> DomainEvent:
    payload: dict[str, Any] = {
        "referral_id": str(referral.id),
        "direction": referral.direction,
        "from_tier": referral.from_tier,
        "to_tier": referral.to_tier,
        "from_facility_id": str(referral.from_facility_id),
        "to_facility_id": str(referral.to_facility_id),
        "skip_level": referral.skip_level,
        "priority": referral.priority,
        "green_channel": referral.green_channel,
        "compliant": referral.compliant,
        "override_applied": referral.override_applied,
        "policy_version": referral.policy_version,
        "status": referral.status,
        "task_status": TASK_STATUS[ReferralStatus(referral.status)],
        "status_reason": referral.status_reason,
        "based_on_id": str(referral.based_on_id) if referral.based_on_id else None,
        "at": at.isoformat(),
        "created_at": _iso(referral.created_at),
        "submitted_at": _iso(referral.submitted_at),
        "ack_due_at": _iso(referral.ack_due_at),
        "acknowledged_at": _iso(referral.acknowledged_at),
        "accepted_at": _iso(referral.accepted_at),
        "completed_at": _iso(referral.completed_at),
        "valid_until": _iso(referral.valid_until),
    }
    if extra:
        payload.update(extra)
    return DomainEvent(
        name=name,
        payload=payload,
        audience_facilities=tuple(str(f) for f in dict.fromkeys(audience)),
        occurred_at=at,
    )
