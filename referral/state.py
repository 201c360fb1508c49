"""The referral workflow (双向转诊) as data: statuses, commands, the transition table and who may move it.

The workflow follows the FHIR workflow "fulfilment" pattern (referral-rules-notes.md §2.1): the referral is a
ServiceRequest (what is asked for) and a Task (the work of fulfilling it). Our fine-grained Chinese business
statuses are ``Task.businessStatus``; each maps onto one of the 12 codes of the R4 ``Task.status`` value set
(http://hl7.org/fhir/R4/codesystem-task-status.html) and onto the R4 ``ServiceRequest.status`` value set
(http://hl7.org/fhir/R4/valueset-request-status.html). The server decides the next status from the current one
and the command; a client never names the target status (notes §5.1, after medplat), and a move that is not in
the table is refused with 409.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Literal

from referral.errors import IllegalTransition


class ReferralStatus(StrEnum):
    """``Task.businessStatus``: the county's own workflow codes (notes §2.1 table)."""

    draft = "draft"  # 草稿
    pending_review = "pending_review"  # 已提交/待卫生院审核
    submitted = "submitted"  # 已提交/待签收
    received = "received"  # 已签收
    accepted = "accepted"  # 已接收/已预约
    rejected = "rejected"  # 拒收
    returned = "returned"  # 已退回补充资料
    arrived = "arrived"  # 已到诊
    completed = "completed"  # 已完成（回执）
    down_referred = "down_referred"  # 已下转
    closed = "closed"  # 已随访结案
    withdrawn = "withdrawn"  # 撤回
    expired = "expired"  # 超时失效


class Command(StrEnum):
    submit = "submit"
    submit_for_review = "submit_for_review"
    approve = "approve"
    receive = "receive"
    accept = "accept"
    reject = "reject"
    return_for_info = "return"
    resubmit = "resubmit"
    resubmit_for_review = "resubmit_for_review"
    arrive = "arrive"
    complete = "complete"
    refer_down = "refer_down"
    close = "close"
    withdraw = "withdraw"
    expire = "expire"


S, C = ReferralStatus, Command

TRANSITIONS: Final[dict[tuple[ReferralStatus, Command], ReferralStatus]] = {
    # draft → requested (FHIR Task state machine); the township review is the medplat chain (notes §2.1: "owner =
    # township reviewer when village→county goes through the township"), a requested Task with another owner.
    (S.draft, C.submit): S.submitted,
    (S.draft, C.submit_for_review): S.pending_review,
    (S.draft, C.withdraw): S.withdrawn,
    (S.draft, C.expire): S.expired,
    (S.pending_review, C.approve): S.submitted,
    (S.pending_review, C.reject): S.rejected,
    (S.pending_review, C.return_for_info): S.returned,
    (S.pending_review, C.withdraw): S.withdrawn,
    (S.pending_review, C.expire): S.expired,
    # requested → received | accepted | rejected | cancelled (R4 Task state diagram)
    (S.submitted, C.receive): S.received,
    (S.submitted, C.accept): S.accepted,
    (S.submitted, C.reject): S.rejected,
    (S.submitted, C.return_for_info): S.returned,
    (S.submitted, C.withdraw): S.withdrawn,
    (S.submitted, C.expire): S.expired,
    # received → accepted | rejected | cancelled
    (S.received, C.accept): S.accepted,
    (S.received, C.reject): S.rejected,
    (S.received, C.return_for_info): S.returned,
    (S.received, C.withdraw): S.withdrawn,
    (S.received, C.expire): S.expired,
    # returned for more information: the sender completes it and sends it again (or gives up)
    (S.returned, C.resubmit): S.submitted,
    (S.returned, C.resubmit_for_review): S.pending_review,
    (S.returned, C.withdraw): S.withdrawn,
    (S.returned, C.expire): S.expired,
    # accepted → in-progress (the patient arrives) → completed with the counter-referral summary (回执)
    (S.accepted, C.arrive): S.arrived,
    (S.accepted, C.expire): S.expired,
    (S.arrived, C.complete): S.completed,
    # completed → the patient goes back home by a down-referral based on this one, then follow-up closes the loop
    (S.completed, C.refer_down): S.down_referred,
    (S.completed, C.close): S.closed,
    (S.down_referred, C.close): S.closed,
}
"""``(status, command) → status``. Citations: FHIR R4 Task state machine (draft→requested; requested→received|
accepted|rejected|cancelled; received→accepted|rejected|cancelled; accepted→in-progress|cancelled;
in-progress→completed) with the 双向转诊 business statuses of referral-rules-notes.md §2.1; withdrawal by the
requester only before acceptance (撤回); auto-expiry as a recorded status, never a deletion (notes §3.7, §5.3,
Ukraine eHealth / OpenSRP pattern)."""

TaskStatus = Literal[
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
]
ServiceRequestStatus = Literal["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"]

#: Business status → R4 ``Task.status`` (notes §2.1 mapping table; "returned" is a rejection with the reason
#: incomplete-info that the requester may answer; "expired" is cancelled with businessStatus=expired).
TASK_STATUS: Final[Mapping[ReferralStatus, TaskStatus]] = {
    S.draft: "draft",
    S.pending_review: "requested",
    S.submitted: "requested",
    S.received: "received",
    S.accepted: "accepted",
    S.rejected: "rejected",
    S.returned: "rejected",
    S.arrived: "in-progress",
    S.completed: "completed",
    S.down_referred: "completed",
    S.closed: "completed",
    S.withdrawn: "cancelled",
    S.expired: "cancelled",
}

#: Business status → R4 ``ServiceRequest.status``: active while in flight, on-hold while returned to the sender,
#: revoked when withdrawn (撤回), refused or expired, completed once the patient was seen.
SERVICE_REQUEST_STATUS: Final[Mapping[ReferralStatus, ServiceRequestStatus]] = {
    S.draft: "draft",
    S.pending_review: "active",
    S.submitted: "active",
    S.received: "active",
    S.accepted: "active",
    S.rejected: "revoked",
    S.returned: "on-hold",
    S.arrived: "active",
    S.completed: "completed",
    S.down_referred: "completed",
    S.closed: "completed",
    S.withdrawn: "revoked",
    S.expired: "revoked",
}

BUSINESS_STATUS_NAMES: Final[Mapping[ReferralStatus, tuple[str, str]]] = {
    S.draft: ("草稿", "Draft"),
    S.pending_review: ("待卫生院审核", "Awaiting township review"),
    S.submitted: ("待签收", "Awaiting acknowledgement"),
    S.received: ("已签收", "Acknowledged"),
    S.accepted: ("已接收", "Accepted"),
    S.rejected: ("已拒收", "Rejected"),
    S.returned: ("已退回补充资料", "Returned for more information"),
    S.arrived: ("已到诊", "Arrived"),
    S.completed: ("已完成（回执）", "Completed (counter-referral sent)"),
    S.down_referred: ("已下转", "Referred back down"),
    S.closed: ("已随访结案", "Follow-up closed"),
    S.withdrawn: ("已撤回", "Withdrawn"),
    S.expired: ("已超时失效", "Expired"),
}

#: Statuses in which the current owner still has to acknowledge the referral (the SLA clock runs).
AWAITING_ACK: Final = frozenset({S.pending_review, S.submitted})
#: Statuses a referral may expire from (its validity window passed before the patient arrived).
EXPIRABLE: Final = frozenset(status for (status, command) in TRANSITIONS if command is C.expire)
#: Statuses with no way out.
TERMINAL: Final = frozenset(set(ReferralStatus) - {status for status, _ in TRANSITIONS})

Party = Literal["sender", "receiver", "reviewer", "follow_up", "system"]

#: Who may give each command in each status (everything else is refused with 403 even where the move exists).
#: Sender: clinical users of the referring facility. Receiver: clinical users whose facility scope holds the
#: receiving facility (but not the sender's own facility). Reviewer: township doctors of the sending clinic's
#: township. Follow-up: the primary-care side that follows the patient up after the referral (the sender of an
#: up-referral, the receiver of a down-referral: notes §3.3 "the primary clinic follows up within 2 weeks").
ACTORS: Final[Mapping[tuple[ReferralStatus, Command], Party]] = {
    (S.draft, C.submit): "sender",
    (S.draft, C.submit_for_review): "sender",
    (S.draft, C.withdraw): "sender",
    (S.draft, C.expire): "system",
    (S.pending_review, C.approve): "reviewer",
    (S.pending_review, C.reject): "reviewer",
    (S.pending_review, C.return_for_info): "reviewer",
    (S.pending_review, C.withdraw): "sender",
    (S.pending_review, C.expire): "system",
    (S.submitted, C.receive): "receiver",
    (S.submitted, C.accept): "receiver",
    (S.submitted, C.reject): "receiver",
    (S.submitted, C.return_for_info): "receiver",
    (S.submitted, C.withdraw): "sender",
    (S.submitted, C.expire): "system",
    (S.received, C.accept): "receiver",
    (S.received, C.reject): "receiver",
    (S.received, C.return_for_info): "receiver",
    (S.received, C.withdraw): "sender",
    (S.received, C.expire): "system",
    (S.returned, C.resubmit): "sender",
    (S.returned, C.resubmit_for_review): "sender",
    (S.returned, C.withdraw): "sender",
    (S.returned, C.expire): "system",
    (S.accepted, C.arrive): "receiver",
    (S.accepted, C.expire): "system",
    (S.arrived, C.complete): "receiver",
    (S.completed, C.refer_down): "system",
    (S.completed, C.close): "follow_up",
    (S.down_referred, C.close): "follow_up",
}

#: The commands a user names in ``POST /api/v1/referrals/{id}/{action}``. ``submit`` and ``resubmit`` go to the
#: township first when the referral needs its review; ``refer_down`` and ``expire`` are the system's.
USER_ACTIONS: Final[Mapping[str, Command]] = {
    "submit": C.submit,
    "approve": C.approve,
    "receive": C.receive,
    "accept": C.accept,
    "reject": C.reject,
    "return": C.return_for_info,
    "resubmit": C.resubmit,
    "arrive": C.arrive,
    "complete": C.complete,
    "close": C.close,
    "withdraw": C.withdraw,
}


class RejectReason(StrEnum):
    """``Task.statusReason`` codes of a refusal or a return (notes §2.1)."""

    capacity_full = "capacity-full"
    outside_capability = "outside-capability"
    incomplete_info = "incomplete-info"
    wrong_tier = "wrong-tier"
    patient_declined = "patient-declined"


REJECT_REASON_NAMES: Final[Mapping[RejectReason, tuple[str, str]]] = {
    RejectReason.capacity_full: ("床位/号源已满", "no capacity"),
    RejectReason.outside_capability: ("超出本机构诊疗能力", "outside this facility's capability"),
    RejectReason.incomplete_info: ("资料不全，请补充", "information incomplete"),
    RejectReason.wrong_tier: ("转诊层级不当", "wrong tier"),
    RejectReason.patient_declined: ("患者拒绝", "patient declined"),
}


def next_status(status: ReferralStatus, command: Command) -> ReferralStatus:
    """The status after ``command``; :class:`IllegalTransition` (409) when the table has no such move."""
    target = TRANSITIONS.get((status, command))
    if target is None:
        raise IllegalTransition(status.value, command.value)
    return target


def allowed_commands(status: ReferralStatus) -> list[Command]:
    return [command for (source, command) in TRANSITIONS if source is status]
