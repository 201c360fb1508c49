"""The referral workflow: the transition table, who may move a referral, the SLA job, events and history."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from referral.errors import IllegalTransition
from referral.models import Referral
from referral.service import local_date
from referral.sla import run_sla_tick
from referral.state import (
    ACTORS,
    SERVICE_REQUEST_STATUS,
    TASK_STATUS,
    TERMINAL,
    TRANSITIONS,
    Command,
    ReferralStatus,
    next_status,
)
from telemed.core.notify import Notification
from tests.conftest import Community
from tests.referral.test_api import (
    HTN_EMERGENCY,
    STABLE_FOR_DOWN,
    act,
    emergency_referral,
    new_patient,
    outbox_events,
    refer,
)

# ---------------------------------------------------------------------------------------------- the table itself


def test_every_move_names_who_may_make_it_and_every_status_maps_to_fhir() -> None:
    assert set(ACTORS) == set(TRANSITIONS)
    assert set(TASK_STATUS) == set(ReferralStatus) == set(SERVICE_REQUEST_STATUS)
    assert {
        ReferralStatus.rejected,
        ReferralStatus.withdrawn,
        ReferralStatus.expired,
        ReferralStatus.closed,
    } == TERMINAL
    # Withdrawal only before acceptance (撤回): never from accepted onwards.
    withdrawable = {status for status, command in TRANSITIONS if command is Command.withdraw}
    assert ReferralStatus.accepted not in withdrawable
    assert ReferralStatus.arrived not in withdrawable
    with pytest.raises(IllegalTransition):
        next_status(ReferralStatus.accepted, Command.withdraw)
    assert next_status(ReferralStatus.returned, Command.resubmit) is ReferralStatus.submitted


# ---------------------------------------------------------------------------------------------- through the API


async def test_the_whole_loop_up_and_back_down(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    vd, td, spec = [await community.login(client, u) for u in ("vd_a1", "td_a", "spec")]
    county, centre = community.facilities["county_hospital"], community.facilities["centre_a"]
    routine = {"bp_sys": 150, "bp_dia": 95, "stable": False}

    # A draft is checked and kept, not sent: nobody is told, the receiver does not see it.
    draft = await refer(client, vd, patient, county, ["I10"], routine, draft=True)
    assert draft.status_code == 201, draft.text
    rid = draft.json()["id"]
    assert draft.json()["status"] == "draft"
    assert draft.json()["outcome"] == "needs_override"
    assert (await client.get("/api/v1/referrals?box=inbox", headers=spec)).json()["total"] == 0
    assert await outbox_events(app, "referral.submitted") == []
    # Sending it still needs the written reason.
    assert (await act(client, vd, rid, "submit")).status_code == 422
    sent = await act(client, vd, rid, "submit", override_reason="家属要求到县医院进一步检查")
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "pending_review"

    # The township reviews, and sends it back for more information; the clinic adds it and sends it again.
    assert (await client.get("/api/v1/referrals?box=review", headers=td)).json()["total"] == 1
    returned = await act(client, td, rid, "return", reason_code="incomplete-info", note="请补充近一周血压记录")
    assert returned.json()["status"] == "returned"
    assert returned.json()["status_reason"] == "incomplete-info"
    again = await act(client, vd, rid, "resubmit", facts={"n_antihypertensives": 3})
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "pending_review"
    assert again.json()["facts"]["n_antihypertensives"] == 3
    assert again.json()["facts"]["bp_sys"] == 150
    assert (await act(client, td, rid, "approve")).json()["status"] == "submitted"

    # The county acknowledges, accepts, sees the patient and sends the counter-referral (回执).
    received = await act(client, spec, rid, "receive")
    assert received.json()["status"] == "received"
    assert received.json()["acknowledged_at"]
    assert received.json()["ack_due_at"] is None  # the clock stopped
    assert (await act(client, spec, rid, "accept")).json()["status"] == "accepted"
    assert (await act(client, spec, rid, "arrive")).json()["status"] == "arrived"
    assert (await act(client, spec, rid, "complete")).status_code == 422  # no summary, no completion
    completed = await act(client, spec, rid, "complete", summary="调整降压方案后血压达标")
    body = completed.json()
    assert body["status"] == "completed"
    assert body["summary"] == "调整降压方案后血压达标"
    assert (
        body["followup_due"]
        == (local_date(dt.datetime.fromisoformat(body["completed_at"])) + dt.timedelta(days=14)).isoformat()
    )

    down = await refer(client, spec, patient, centre, ["I10"], {**STABLE_FOR_DOWN, "bp_at_target": True}, based_on=rid)
    assert down.status_code == 201, down.text
    down_id = down.json()["id"]
    for action in ("accept", "arrive"):
        assert (await act(client, td, down_id, action)).status_code == 200
    assert (await act(client, td, down_id, "complete", summary="已接回社区管理")).status_code == 200
    # Follow-up is closed by the primary-care side: the receiver of the down-referral, the sender of the up one.
    assert (await act(client, spec, down_id, "close")).status_code == 403
    assert (await act(client, td, down_id, "close")).json()["status"] == "closed"
    assert (await act(client, vd, rid, "close")).json()["status"] == "closed"

    history = (await client.get(f"/api/v1/referrals/{rid}", headers=vd)).json()["history"]
    assert [h["command"] for h in history] == [
        "create", "submit_for_review", "return", "resubmit_for_review", "approve", "receive", "accept", "arrive",
        "complete", "refer_down", "close",
    ]  # fmt: skip
    assert history[2]["reason_code"] == "incomplete-info"
    assert history[2]["actor_facility_id"] == str(community.facilities["centre_a"])


async def test_illegal_transitions_are_409(client: httpx.AsyncClient, community: Community) -> None:
    rid = await emergency_referral(client, community)
    vd, spec = await community.login(client, "vd_a1"), await community.login(client, "spec")
    arrive_early = await act(client, spec, rid, "arrive")
    assert arrive_early.status_code == 409
    assert arrive_early.headers["content-type"] == "application/problem+json"
    assert arrive_early.json()["code"] == "referral.illegal_transition"
    assert arrive_early.json()["status_now"] == "submitted"
    assert (await act(client, spec, rid, "complete", summary="x")).status_code == 409
    assert (await act(client, vd, rid, "resubmit")).status_code == 409
    assert (await act(client, spec, rid, "accept")).status_code == 200
    assert (await act(client, spec, rid, "accept")).status_code == 409  # not twice
    assert (await act(client, vd, rid, "withdraw")).status_code == 409  # not after acceptance
    assert (await act(client, spec, rid, "close")).status_code == 409
    assert (await act(client, spec, rid, "fly")).status_code == 404

    withdrawn = await emergency_referral(client, community)
    assert (await act(client, vd, withdrawn, "withdraw")).json()["status"] == "withdrawn"
    for action in ("accept", "receive", "withdraw", "resubmit"):
        assert (await act(client, spec if action != "withdraw" else vd, withdrawn, action)).status_code == 409


async def test_only_the_right_party_may_move_a_referral(client: httpx.AsyncClient, community: Community) -> None:
    rid = await emergency_referral(client, community)
    vd, spec, rad, td = [await community.login(client, u) for u in ("vd_a1", "spec", "rad", "td_a")]
    not_sender = await act(client, spec, rid, "withdraw")
    assert not_sender.status_code == 403
    assert not_sender.json()["code"] == "referral.not_your_action"
    assert (await act(client, vd, rid, "accept")).status_code == 403  # the sender cannot accept its own referral
    assert (await act(client, td, rid, "accept")).status_code == 403  # the township sees it, but does not receive it
    reject = await act(client, rad, rid, "reject")
    assert reject.status_code == 422
    assert reject.json()["errors"][0]["field"] == "reason_code"
    rejected = await act(client, rad, rid, "reject", reason_code="capacity-full", note="今日床位已满")
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["status_reason"] == "capacity-full"


async def test_township_review_is_for_the_senders_own_township(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    sent = await refer(
        client, vd, patient, community.facilities["county_hospital"], ["I10"], {"bp_sys": 150},
        override_reason="患者要求到县医院复查",
    )  # fmt: skip
    rid = sent.json()["id"]
    assert sent.json()["status"] == "pending_review"
    td_b, spec = await community.login(client, "td_b"), await community.login(client, "spec")
    assert (await act(client, td_b, rid, "approve")).status_code == 404  # another township does not even see it
    assert (await act(client, spec, rid, "approve")).status_code == 403
    assert (await act(client, spec, rid, "accept")).status_code == 409  # not before the review
    assert (await act(client, vd, rid, "withdraw")).json()["status"] == "withdrawn"


async def test_events_carry_the_facts_of_the_referral_to_the_right_audience(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    rid = await emergency_referral(client, community)
    spec = await community.login(client, "spec")
    assert (await act(client, spec, rid, "accept")).status_code == 200
    (submitted,) = await outbox_events(app, "referral.submitted")
    (accepted,) = await outbox_events(app, "referral.accepted")
    county, clinic = str(community.facilities["county_hospital"]), str(community.facilities["clinic_a1"])
    assert submitted.audience == {"users": [], "facilities": [county]}
    assert accepted.audience == {"users": [], "facilities": [clinic]}
    payload = accepted.payload
    assert payload["referral_id"] == rid
    assert payload["direction"] == "up"
    assert payload["skip_level"] is True
    assert (payload["from_tier"], payload["to_tier"]) == ("village", "county")
    assert (payload["from_facility_id"], payload["to_facility_id"]) == (clinic, county)
    assert payload["priority"] == "stat"
    assert payload["green_channel"] is True
    assert payload["compliant"] is True
    assert payload["policy_version"] == "default@2026.1"
    assert payload["status"] == "accepted"
    assert payload["task_status"] == "accepted"
    for stamp in ("at", "created_at", "submitted_at", "accepted_at", "acknowledged_at"):
        assert dt.datetime.fromisoformat(payload[stamp]).tzinfo is not None
    assert "转诊测试患者" not in str(payload)
    assert "patient" not in " ".join(payload)
    # The receiving facility's staff are notified of the submission.
    async with app.state.ctx.db.read_session() as session:
        notes = (await session.scalars(select(Notification).where(Notification.name == "referral.submitted"))).all()
    assert [str(n.recipient_facility_id) for n in notes] == [county]


async def _referral(app: FastAPI, rid: str) -> Referral:
    async with app.state.ctx.db.read_session() as session:
        found: Referral | None = await session.get(Referral, uuid.UUID(rid))
    assert found is not None
    return found


async def test_the_sla_job_escalates_unacknowledged_referrals_once(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    rid = await emergency_referral(client, community)
    ctx = app.state.ctx
    referral = await _referral(app, rid)
    assert referral.ack_due_at is not None
    assert (await run_sla_tick(ctx, now=referral.ack_due_at - dt.timedelta(minutes=1))).escalated == 0
    tick = await run_sla_tick(ctx, now=referral.ack_due_at + dt.timedelta(minutes=5))
    assert tick.escalated == 1
    (event,) = await outbox_events(app, "referral.escalated")
    assert event.audience["facilities"] == [str(community.facilities["county_hospital"])]
    assert event.payload["escalate_to"] == "duty_officer"
    assert event.payload["overdue_minutes"] == 5
    assert (await run_sla_tick(ctx, now=referral.ack_due_at + dt.timedelta(minutes=10))).escalated == 0  # once
    spec = await community.login(client, "spec")
    item = (await client.get("/api/v1/referrals?box=inbox", headers=spec)).json()["items"][0]
    assert item["escalated_at"] is not None
    # Acknowledging stops the clock: nothing left to escalate.
    assert (await act(client, spec, rid, "receive")).status_code == 200
    assert (await run_sla_tick(ctx, now=referral.ack_due_at + dt.timedelta(days=1))).escalated == 0


async def test_the_sla_job_expires_stale_referrals_in_bounded_batches(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    ids = [await emergency_referral(client, community) for _ in range(3)]
    referral = await _referral(app, ids[0])
    assert referral.valid_until is not None
    later = dt.datetime.combine(referral.valid_until + dt.timedelta(days=2), dt.time(12), dt.UTC)
    first = await run_sla_tick(app.state.ctx, now=later, limit=2)
    assert first.expired == 2
    second = await run_sla_tick(app.state.ctx, now=later, limit=2)
    assert second.expired == 1
    spec = await community.login(client, "spec")
    for rid in ids:
        body = (await client.get(f"/api/v1/referrals/{rid}", headers=spec)).json()
        assert body["status"] == "expired"
        assert body["task_status"] == "cancelled"
        assert body["service_request_status"] == "revoked"
    assert (await act(client, spec, ids[0], "accept")).status_code == 409  # an expired referral cannot be used
    expired = await outbox_events(app, "referral.expired")
    assert len(expired) == 3
    assert set(expired[0].audience["facilities"]) == {
        str(community.facilities["clinic_a1"]),
        str(community.facilities["county_hospital"]),
    }


async def test_each_referral_keeps_the_policy_version_it_was_checked_under(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    rid = await emergency_referral(client, community)
    stored = await _referral(app, rid)
    assert stored.policy_version == "default@2026.1"
    assert stored.policy_version_id is None  # the shipped default
    assert stored.decision["policy_version"] == "default@2026.1"
    assert stored.outcome == "allowed"
    assert stored.compliant is True
    spec = await community.login(client, "spec")
    rejected = await act(client, spec, rid, "reject", reason_code="wrong-tier")
    assert rejected.json()["policy_version"] == "default@2026.1"


async def test_a_receiver_cannot_be_sent_an_emergency_down(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    spec = await community.login(client, "spec")
    response = await refer(client, spec, patient, community.facilities["clinic_a1"], ["I10"], HTN_EMERGENCY)
    assert response.status_code == 422
    assert response.json()["outcome"] == "blocked"
