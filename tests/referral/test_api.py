"""The referral API as clinicians use it: the clinical scenarios of issue 3 end to end, scope and audit.

The helpers at the top are shared by the other referral API test modules.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from referral.models import Referral
from telemed.core.audit import AuditRecord
from telemed.core.events import OutboxRecord
from telemed.org.idcard import make_id_number
from tests.conftest import Community, register

STABLE_FOR_DOWN: dict[str, Any] = {
    "diagnosis_confirmed": True,
    "plan_suitable_for_primary": True,
    "stable": True,
    "complications_stable": True,
}
HTN_EMERGENCY: dict[str, Any] = {"bp_sys": 185, "bp_dia": 115, "severe_headache": True}
_sequence = itertools.count(101)


async def new_patient(
    client: httpx.AsyncClient,
    community: Community,
    username: str = "vd_a1",
    *,
    born: dt.date = dt.date(1958, 3, 14),
    name: str = "转诊测试患者",
) -> str:
    headers = await community.login(client, username)
    created = await register(client, headers, make_id_number("331121", born, next(_sequence) % 1000), name=name)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def refer(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    patient_id: str,
    to: uuid.UUID | str | None,
    icd10: list[str],
    facts: dict[str, Any],
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"patient_id": patient_id, "icd10": icd10, "facts": facts, **extra}
    if to is not None:
        body["to_facility_id"] = str(to)
    return await client.post("/api/v1/referrals", json=body, headers=headers)


async def act(
    client: httpx.AsyncClient, headers: dict[str, str], referral_id: str, action: str, **body: Any
) -> httpx.Response:
    return await client.post(f"/api/v1/referrals/{referral_id}/{action}", json=body, headers=headers)


async def emergency_referral(client: httpx.AsyncClient, community: Community, patient_id: str | None = None) -> str:
    """A hypertensive emergency sent from village clinic A1 straight to the county hospital (no review)."""
    patient_id = patient_id or await new_patient(client, community)
    headers = await community.login(client, "vd_a1")
    response = await refer(client, headers, patient_id, community.facilities["county_hospital"], ["I10"], HTN_EMERGENCY)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "submitted"
    return str(response.json()["id"])


async def outbox_events(app: FastAPI, name: str | None = None) -> list[OutboxRecord]:
    async with app.state.ctx.db.read_session() as session:
        query = select(OutboxRecord).order_by(OutboxRecord.seq)
        if name is not None:
            query = query.where(OutboxRecord.name == name)
        return list((await session.scalars(query)).all())


async def audit_records(app: FastAPI, **where: Any) -> list[AuditRecord]:
    async with app.state.ctx.db.read_session() as session:
        query = select(AuditRecord).order_by(AuditRecord.seq)
        for column, value in where.items():
            query = query.where(getattr(AuditRecord, column) == value)
        return list((await session.scalars(query)).all())


async def referral_count(app: FastAPI) -> int:
    async with app.state.ctx.db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Referral)) or 0)


# ---------------------------------------------------------------------------------------- clinical scenarios


async def test_routine_hypertension_village_to_county_needs_a_written_override(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    county = community.facilities["county_hospital"]
    facts = {"bp_sys": 150, "bp_dia": 95, "stable": False}

    refused = await refer(client, vd, patient, county, ["I10"], facts)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "referral.override_required"
    assert problem["outcome"] == "needs_override"
    assert [e["field"] for e in problem["errors"]] == ["override_reason"]
    assert "skip-level" in [r["code"] for r in problem["reasons"]]
    assert await referral_count(app) == 0

    too_short = await refer(client, vd, patient, county, ["I10"], facts, override_reason="要求")
    assert too_short.status_code == 422
    assert too_short.json()["errors"][0]["code"] == "referral.override_reason_too_short"

    reason = "患者在县医院有既往病历，家属要求复查"
    sent = await refer(client, vd, patient, county, ["I10"], facts, override_reason=reason)
    assert sent.status_code == 201, sent.text
    referral = sent.json()
    assert referral["outcome"] == "allowed"
    assert referral["override_applied"] is True
    assert referral["compliant"] is False
    assert referral["skip_level"] is True
    assert referral["direction"] == "up"
    assert "override-applied" in referral["reason_codes"]
    # Skipping the township on a written reason goes through the township for review first (medplat chain).
    assert referral["status"] == "pending_review"
    assert referral["review_facility"]["id"] == str(community.facilities["centre_a"])

    td = await community.login(client, "td_a")
    approved = await act(client, td, referral["id"], "approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "submitted"
    spec = await community.login(client, "spec")
    accepted = await act(client, spec, referral["id"], "accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert accepted.json()["compliant"] is False  # counted as non-compliant to the end

    overrides = await audit_records(app, purpose="override")
    assert len(overrides) == 1
    assert overrides[0].resource_id == referral["id"]
    assert overrides[0].patient_ref == patient
    assert "skip-level" in overrides[0].detail["reason_codes"]
    assert overrides[0].detail["compliant"] is False
    assert reason not in str(overrides[0].detail)
    assert "转诊测试患者" not in str(overrides[0].detail)
    submitted = await outbox_events(app, "referral.submitted")
    assert submitted[-1].payload["compliant"] is False
    assert submitted[-1].payload["override_applied"] is True


async def test_hypertensive_emergency_goes_straight_to_the_county_on_the_green_channel(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    sent = await refer(client, vd, patient, community.facilities["county_hospital"], ["I10"], HTN_EMERGENCY)
    assert sent.status_code == 201, sent.text
    referral = sent.json()
    assert referral["outcome"] == "allowed"
    assert referral["compliant"] is True
    assert referral["priority"] == "stat"
    assert referral["green_channel"] is True
    assert referral["skip_level"] is True
    assert referral["status"] == "submitted"  # a permitted skip needs no township review
    assert referral["review_facility"] is None
    assert "HTN-EMERG-01" in [m["id"] for m in referral["decision"]["matched"]]
    assert "emergency-green-channel" in referral["reason_codes"]
    due = dt.datetime.fromisoformat(referral["ack_due_at"])
    submitted = dt.datetime.fromisoformat(referral["submitted_at"])
    assert due - submitted == dt.timedelta(minutes=30)  # the policy's stat acknowledgement time
    assert referral["policy_version"] == "default@2026.1"
    assert referral["decision"]["policy_version"] == "default@2026.1"


async def test_suspected_acs_goes_to_the_pci_capable_hospital_skipping_tiers(
    client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    facts = {"suspected_acs": True, "chest_pain_minutes": 40, "nitro_relieved": False}
    # Without a target, the engine sends the patient to the nearest PCI-capable hospital.
    checked = await client.post(
        "/api/v1/referrals/evaluate", json={"patient_id": patient, "icd10": ["I20.0"], "facts": facts}, headers=vd
    )
    assert checked.status_code == 200, checked.text
    decision = checked.json()["decision"]
    assert decision["outcome"] == "allowed"
    assert decision["suggested_target"]["facility_id"] == str(community.facilities["county_hospital"])
    assert decision["suggested_target"]["required_flags"] == ["pci_capable"]

    sent = await refer(client, vd, patient, None, ["I20.0"], facts)
    assert sent.status_code == 201, sent.text
    referral = sent.json()
    assert referral["to_facility"]["id"] == str(community.facilities["county_hospital"])
    assert referral["outcome"] == "allowed"
    assert referral["compliant"] is True
    assert referral["skip_level"] is True
    assert referral["priority"] == "stat"
    assert "ACS-PCI-01" in [m["id"] for m in referral["decision"]["matched"]]
    assert "skip-level-permitted" in referral["reason_codes"]


async def test_stable_post_stroke_patient_goes_back_down_linked_to_the_up_referral(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    spec = await community.login(client, "spec")
    stroke = {"bp_sys": 190, "bp_dia": 112, "limb_paralysis": True}
    up = await refer(client, vd, patient, community.facilities["county_hospital"], ["I10", "I63.9"], stroke)
    assert up.status_code == 201, up.text
    up_id = up.json()["id"]
    for action in ("receive", "accept", "arrive"):
        assert (await act(client, spec, up_id, action)).status_code == 200
    done = await act(client, spec, up_id, "complete", summary="脑梗死溶栓后恢复良好，出院，继续康复")
    assert done.status_code == 200
    assert done.json()["status"] == "completed"

    down = await refer(
        client, spec, patient, community.facilities["centre_a"], ["I69.3"], STABLE_FOR_DOWN, based_on=up_id
    )
    assert down.status_code == 201, down.text
    referral = down.json()
    assert referral["direction"] == "down"
    assert referral["outcome"] == "allowed"
    assert referral["compliant"] is True
    assert referral["based_on_id"] == up_id
    assert "DOWN-STABLE-01" in [m["id"] for m in referral["decision"]["matched"]]
    assert referral["decision"]["insurance"]["no_new_deductible_same_episode"] is True
    up_now = (await client.get(f"/api/v1/referrals/{up_id}", headers=spec)).json()
    assert up_now["status"] == "down_referred"
    down_events = await outbox_events(app, "referral.down_referred")
    assert [e.payload["referral_id"] for e in down_events] == [up_id]
    assert down_events[0].audience["facilities"] == [str(community.facilities["clinic_a1"])]


async def test_a_down_referral_must_answer_a_completed_up_referral_received_here(
    client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    up_id = await emergency_referral(client, community, patient)
    spec = await community.login(client, "spec")
    early = await refer(
        client, spec, patient, community.facilities["centre_a"], ["I69.3"], STABLE_FOR_DOWN, based_on=up_id
    )
    assert early.status_code == 422  # the up-referral is not completed yet
    assert early.json()["errors"][0]["field"] == "based_on"


async def test_pregnant_diabetic_is_referred_up(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community, born=dt.date(1994, 7, 2))
    vd = await community.login(client, "vd_a1")
    sent = await refer(client, vd, patient, community.facilities["centre_a"], ["E11.9"], {"pregnant": True})
    assert sent.status_code == 201, sent.text
    referral = sent.json()
    assert referral["direction"] == "up"
    assert referral["skip_level"] is False
    assert referral["outcome"] == "allowed"
    assert referral["compliant"] is True
    assert "DM-SPEC-01" in [m["id"] for m in referral["decision"]["matched"]]
    assert referral["facts"]["age"] == referral["patient"]["age"]  # the age came from the patient's record

    td = await community.login(client, "td_a")
    onward = await refer(client, td, patient, community.facilities["county_hospital"], ["E11.9"], {"pregnant": True})
    assert onward.status_code == 201, onward.text
    assert onward.json()["outcome"] == "allowed"
    assert onward.json()["from_facility"]["tier"] == "township"


async def test_a_missing_blood_pressure_is_named(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    facts: dict[str, Any] = {"severe_headache": True, "stable": True}
    body: dict[str, Any] = {
        "patient_id": patient,
        "to_facility_id": str(community.facilities["centre_a"]),
        "icd10": ["I10"],
        "facts": facts,
    }
    before = await audit_records(app)
    checked = await client.post("/api/v1/referrals/evaluate", json=body, headers=vd)
    assert checked.status_code == 200, checked.text
    assert checked.headers["cache-control"] == "no-store"
    decision = checked.json()["decision"]
    assert decision["outcome"] == "needs_override"
    missing = {m["name"]: m for m in decision["missing_facts"]}
    assert set(missing) == {"bp_sys", "bp_dia"}
    assert missing["bp_sys"]["label_zh"] == "收缩压"
    assert "HTN-EMERG-01" in missing["bp_sys"]["rule_ids"]
    assert "missing-facts" in decision["reason_codes"]
    # The check stores nothing; only the patient lookup it needed is audited.
    assert await referral_count(app) == 0
    new_audit = (await audit_records(app))[len(before) :]
    assert [(a.resource_type, a.action, a.purpose) for a in new_audit] == [("patient", "R", "referral_check")]
    assert await outbox_events(app, "referral.submitted") == []

    # Submitting anyway is refused with the same explanation.
    refused = await client.post("/api/v1/referrals", json=body, headers=vd)
    assert refused.status_code == 422
    assert {m["name"] for m in refused.json()["decision"]["missing_facts"]} == {"bp_sys", "bp_dia"}

    # With the reading recorded the emergency rule holds and the referral is allowed.
    body["facts"] = {**facts, "bp_sys": 186, "bp_dia": 112}
    recorded = await client.post("/api/v1/referrals/evaluate", json=body, headers=vd)
    assert recorded.json()["decision"]["outcome"] == "allowed"
    assert recorded.json()["decision"]["missing_facts"] == []


async def test_a_blocked_referral_is_refused_with_its_reasons(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    spec = await community.login(client, "spec")
    # An emergency is never sent down: county → township with a hypertensive emergency is blocked.
    response = await refer(client, spec, patient, community.facilities["centre_a"], ["I10"], HTN_EMERGENCY)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "referral.blocked"
    assert problem["outcome"] == "blocked"
    assert "unstable-for-down" in [r["code"] for r in problem["reasons"]]
    english = await refer(
        client, {**spec, "Accept-Language": "en"}, patient, community.facilities["centre_a"], ["I10"], HTN_EMERGENCY
    )
    assert "cannot be referred down" in english.json()["detail"]


async def test_onset_time_becomes_minutes_since_onset(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    onset = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=95)).isoformat()
    checked = await client.post(
        "/api/v1/referrals/evaluate",
        json={"patient_id": patient, "icd10": ["I63.9"], "facts": {"suspected_stroke": True}, "onset_at": onset},
        headers=vd,
    )
    decision = checked.json()["decision"]
    assert "onset_minutes" not in {m["name"] for m in decision["missing_facts"]}
    assert "STROKE-THROMB-01" in [m["id"] for m in decision["matched"]]


async def test_bad_input_is_a_422_naming_the_field(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    bad_uid = await refer(
        client, vd, patient, community.facilities["centre_a"], ["E11.9"], {"pregnant": True}, study_uids=["1.2.x"]
    )
    assert bad_uid.status_code == 422
    assert bad_uid.json()["errors"][0]["field"].startswith("study_uids")
    assert bad_uid.json()["errors"][0]["code"] == "referral.study_uid"
    unknown_target = await refer(client, vd, patient, uuid.uuid4(), ["E11.9"], {"pregnant": True})
    assert unknown_target.status_code == 422
    assert unknown_target.json()["errors"][0]["field"] == "to_facility_id"


# ---------------------------------------------------------------------------------------------- scope, roles, audit


async def test_a_village_doctor_cannot_refer_or_read_another_clinics_patient(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community, "vd_a1")
    referral_id = await emergency_referral(client, community, patient)
    other = await community.login(client, "vd_b1")
    refused = await refer(client, other, patient, community.facilities["county_hospital"], ["I10"], HTN_EMERGENCY)
    assert refused.status_code == 404
    assert refused.json()["code"] == "patient.not_found"
    checked = await client.post("/api/v1/referrals/evaluate", json={"patient_id": patient}, headers=other)
    assert checked.status_code == 404
    neighbour = await community.login(client, "vd_a2")  # same township, different clinic
    assert (await client.get(f"/api/v1/referrals/{referral_id}", headers=neighbour)).status_code == 404
    assert (await client.get(f"/api/v1/referrals/{referral_id}", headers=other)).status_code == 404
    assert (await act(client, neighbour, referral_id, "withdraw")).status_code == 404
    outbox = (await client.get("/api/v1/referrals?box=outbox", headers=neighbour)).json()
    assert outbox["total"] == 0
    denied = await audit_records(app, resource_type="referral", outcome="denied")
    assert len(denied) >= 3


async def test_analysts_and_administrators_get_403_on_referrals(
    client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    referral_id = await emergency_referral(client, community, patient)
    for username in ("analyst", "admin"):
        headers = await community.login(client, username)
        calls = [
            client.get("/api/v1/referrals", headers=headers),
            client.get(f"/api/v1/referrals/{referral_id}", headers=headers),
            client.post("/api/v1/referrals/evaluate", json={"icd10": ["I10"]}, headers=headers),
            refer(client, headers, patient, None, ["I10"], HTN_EMERGENCY),
            act(client, headers, referral_id, "accept"),
            client.get("/api/v1/referrals/form-spec", headers=headers),
        ]
        for call in calls:
            response = await call
            assert response.status_code == 403, (username, response.text)
            assert response.json()["code"] == "referral.role_forbidden"
    assert (await client.get("/api/v1/referrals")).status_code == 401


async def test_every_read_of_a_referral_is_audited(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    referral_id = await emergency_referral(client, community, patient)
    spec = await community.login(client, "spec")
    read = await client.get(f"/api/v1/referrals/{referral_id}", headers=spec)
    assert read.status_code == 200
    assert read.headers["cache-control"] == "no-store"
    assert read.json()["patient"]["name"] == "转诊测试患者"
    reads = await audit_records(app, resource_type="referral", action="R", resource_id=referral_id)
    assert len(reads) == 1
    assert reads[0].patient_ref == patient
    assert reads[0].actor_user_id == str(community.users["spec"])
    assert reads[0].outcome == "success"

    inbox = await client.get("/api/v1/referrals?box=inbox", headers=spec)
    assert [item["id"] for item in inbox.json()["items"]] == [referral_id]
    queries = await audit_records(app, resource_type="referral", action="Q")
    assert queries[-1].detail["referral_ids"] == [referral_id]
    assert queries[-1].detail["patient_refs"] == [patient]

    admin = await community.login(client, "admin")
    trail = await client.get(f"/api/v1/audit?patient_ref={patient}", headers=admin)
    assert {"referral"} <= {entry["resource_type"] for entry in trail.json()}


async def test_inbox_and_outbox(client: httpx.AsyncClient, community: Community) -> None:
    patient = await new_patient(client, community)
    referral_id = await emergency_referral(client, community, patient)
    headers_vd, headers_spec, headers_td = [await community.login(client, u) for u in ("vd_a1", "spec", "td_a")]
    outbox = (await client.get("/api/v1/referrals?box=outbox", headers=headers_vd)).json()
    assert [i["id"] for i in outbox["items"]] == [referral_id]
    assert outbox["items"][0]["actions"] == ["withdraw"]
    inbox = (await client.get("/api/v1/referrals?box=inbox", headers=headers_spec)).json()
    assert inbox["items"][0]["actions"] == ["receive", "accept", "reject", "return"]
    assert inbox["items"][0]["ack_due_at"] is not None
    assert (await client.get("/api/v1/referrals?box=inbox", headers=headers_vd)).json()["total"] == 0
    assert (await client.get("/api/v1/referrals?box=inbox", headers=headers_td)).json()["total"] == 0
    filtered = await client.get("/api/v1/referrals?box=inbox&status=accepted", headers=headers_spec)
    assert filtered.json()["total"] == 0
    filtered = await client.get("/api/v1/referrals?box=inbox&status=submitted&status=received", headers=headers_spec)
    assert filtered.json()["total"] == 1
    assert (await client.get("/api/v1/referrals?box=nowhere", headers=headers_spec)).status_code == 422


async def test_form_spec_lists_the_policy_facts(client: httpx.AsyncClient, community: Community) -> None:
    vd = await community.login(client, "vd_a1")
    spec = (await client.get("/api/v1/referrals/form-spec", headers=vd)).json()
    assert spec["policy_version"] == "default@2026.1"
    facts = {f["name"]: f for f in spec["facts"]}
    assert facts["bp_sys"]["unit"] == "mmHg"
    assert facts["bp_sys"]["type"] == "number"
    assert "icd10" not in facts  # built-in facts are the engine's own
    assert {r["code"] for r in spec["reject_reasons"]} >= {"capacity-full", "incomplete-info"}
