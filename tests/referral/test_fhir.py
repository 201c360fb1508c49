"""Referrals as FHIR R4 ServiceRequest and Task, checked with the ``fhir.resources`` R4B models plus the R4 value
sets and invariants those models do not enforce (referral-rules-notes.md §2.6)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from tests.conftest import Community
from tests.referral.test_api import (
    STABLE_FOR_DOWN,
    act,
    audit_records,
    emergency_referral,
    new_patient,
    refer,
)

#: http://hl7.org/fhir/R4/codesystem-task-status.html
TASK_STATUS = {
    "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress", "on-hold",
    "failed", "completed", "entered-in-error",
}  # fmt: skip
#: http://hl7.org/fhir/R4/valueset-request-status.html
REQUEST_STATUS = {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
#: http://hl7.org/fhir/R4/valueset-request-priority.html
PRIORITY = {"routine", "urgent", "asap", "stat"}
STUDY_UID = "1.2.826.0.1.3680043.8.498.10"


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def check_service_request(body: dict[str, Any]) -> ServiceRequest:
    resource = ServiceRequest.model_validate(body)
    assert body["status"] in REQUEST_STATUS
    assert body["intent"] == "order"
    assert body["priority"] in PRIORITY
    assert body["subject"]["reference"].startswith("Patient/")
    assert body["requester"]["reference"].startswith("Organization/")
    return resource


def check_task(body: dict[str, Any]) -> Task:
    resource = Task.model_validate(body)
    assert body["status"] in TASK_STATUS
    assert body["intent"] == "order"
    assert body["priority"] in PRIORITY
    assert body["code"]["coding"][0]["code"] == "fulfill"
    assert body["focus"]["reference"] == f"ServiceRequest/{body['id']}"
    # R4 inv-1: lastModified >= authoredOn.
    assert _instant(body["lastModified"]) >= _instant(body["authoredOn"])
    # tsk-1 (R6 build): restriction only on a fulfill task with a focus.
    if "restriction" in body:
        assert body["code"]["coding"][0]["code"] == "fulfill"
        assert "focus" in body
    return resource


async def _fhir(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> dict[str, Any]:
    response = await client.get(f"/fhir/R4/{path}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    body: dict[str, Any] = response.json()
    return body


async def test_a_referral_reads_as_a_valid_r4_service_request_and_task(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    vd = await community.login(client, "vd_a1")
    sent = await refer(
        client, vd, patient, community.facilities["county_hospital"], ["I10", "I63.9"],
        {"bp_sys": 190, "bp_dia": 112, "limb_paralysis": True}, study_uids=[STUDY_UID], consult_refs=["HZ-2026-001"],
        reason="疑似脑卒中", notes="已测血糖正常",
    )  # fmt: skip
    assert sent.status_code == 201, sent.text
    rid = sent.json()["id"]
    spec = await community.login(client, "spec")

    request = await _fhir(client, spec, f"ServiceRequest/{rid}")
    check_service_request(request)
    assert request["id"] == rid
    assert request["status"] == "active"
    assert request["priority"] == "stat"
    assert request["subject"]["reference"] == f"Patient/{patient}"
    assert "display" not in request["subject"]  # no patient name in the resource
    assert request["performer"][0]["reference"] == f"Organization/{community.facilities['county_hospital']}"
    assert [c["coding"][0]["code"] for c in request["reasonCode"]] == ["I10", "I63.9"]
    assert request["category"][1]["coding"][0]["code"] == "up"
    assert {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}} in (
        request["supportingInfo"]
    )
    extensions = {e["url"].rsplit("/", 1)[1]: e for e in request["extension"] if "matched" not in e["url"]}
    assert extensions["referral-compliant"]["valueBoolean"] is True
    assert extensions["referral-policy-version"]["valueString"] == "default@2026.1"

    task = await _fhir(client, spec, f"Task/{rid}")
    check_task(task)
    assert task["status"] == "requested"
    assert task["businessStatus"]["coding"][0]["code"] == "submitted"
    assert task["owner"]["reference"] == f"Organization/{community.facilities['county_hospital']}"
    assert _instant(task["restriction"]["period"]["end"]) - _instant(task["authoredOn"]) <= dt.timedelta(minutes=31)
    assert task["input"][0]["valueReference"]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"

    reads = await audit_records(app, resource_type="referral", action="R", resource_id=rid)
    assert {r.detail.get("format") for r in reads} == {"fhir:ServiceRequest", "fhir:Task"}


async def test_every_status_of_the_workflow_maps_into_the_r4_value_sets(
    client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    rid = await emergency_referral(client, community, patient)
    spec, td = await community.login(client, "spec"), await community.login(client, "td_a")
    seen: list[tuple[str, str, str]] = []

    async def snapshot(referral_id: str) -> None:
        task = check_task(await _fhir(client, spec, f"Task/{referral_id}")).model_dump(mode="json", by_alias=True)
        request = check_service_request(await _fhir(client, spec, f"ServiceRequest/{referral_id}"))
        seen.append((task["businessStatus"]["coding"][0]["code"], task["status"], str(request.status)))

    await snapshot(rid)
    for action, body in (("receive", {}), ("accept", {}), ("arrive", {}), ("complete", {"summary": "溶栓后好转"})):
        assert (await act(client, spec, rid, action, **body)).status_code == 200
        await snapshot(rid)
    down = await refer(
        client, spec, patient, community.facilities["centre_a"], ["I69.3"], STABLE_FOR_DOWN, based_on=rid
    )
    down_id = down.json()["id"]
    await snapshot(rid)
    down_request = await _fhir(client, spec, f"ServiceRequest/{down_id}")
    assert down_request["basedOn"] == [{"reference": f"ServiceRequest/{rid}", "type": "ServiceRequest"}]
    assert down_request["category"][1]["coding"][0]["code"] == "down"
    assert (await act(client, td, down_id, "return", reason_code="incomplete-info")).status_code == 200
    await snapshot(down_id)
    task = await _fhir(client, spec, f"Task/{down_id}")
    assert task["statusReason"]["coding"][0]["code"] == "incomplete-info"
    withdrawn = await emergency_referral(client, community, patient)
    assert (await act(client, await community.login(client, "vd_a1"), withdrawn, "withdraw")).status_code == 200
    await snapshot(withdrawn)

    assert seen == [
        ("submitted", "requested", "active"),
        ("received", "received", "active"),
        ("accepted", "accepted", "active"),
        ("arrived", "in-progress", "active"),
        ("completed", "completed", "completed"),
        ("down_referred", "completed", "completed"),
        ("returned", "rejected", "on-hold"),
        ("withdrawn", "cancelled", "revoked"),
    ]
    completed = await _fhir(client, spec, f"Task/{rid}")
    assert completed["output"][0]["valueString"] == "溶栓后好转"
    assert completed["executionPeriod"]["start"] <= completed["executionPeriod"]["end"]


async def test_search_returns_a_searchset_bundle_of_what_the_caller_may_see(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    patient = await new_patient(client, community)
    first = await emergency_referral(client, community, patient)
    second = await emergency_referral(client, community, patient)
    other_patient = await new_patient(client, community)
    await emergency_referral(client, community, other_patient)
    spec, vd = await community.login(client, "spec"), await community.login(client, "vd_a1")
    assert (await act(client, spec, second, "accept")).status_code == 200

    bundle = await _fhir(client, spec, f"ServiceRequest?patient=Patient/{patient}")
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 2
    assert {e["resource"]["id"] for e in bundle["entry"]} == {first, second}
    for entry in bundle["entry"]:
        check_service_request(entry["resource"])
        assert entry["search"]["mode"] == "match"
        assert entry["fullUrl"].endswith(f"/fhir/R4/ServiceRequest/{entry['resource']['id']}")

    tasks = await _fhir(client, spec, f"Task?patient={patient}&status=accepted")
    Bundle.model_validate(tasks)
    assert [e["resource"]["id"] for e in tasks["entry"]] == [second]
    check_task(tasks["entry"][0]["resource"])
    requested = await _fhir(client, spec, f"Task?patient={patient}&status=requested,received")
    assert [e["resource"]["id"] for e in requested["entry"]] == [first]
    assert (await _fhir(client, vd, "ServiceRequest"))["total"] == 3  # the sending clinic sees its own three

    outsider = await community.login(client, "vd_b1")
    empty = await _fhir(client, outsider, f"ServiceRequest?patient={patient}")
    assert empty["total"] == 0
    assert empty.get("entry", []) == []

    bad = await client.get("/fhir/R4/Task?status=returned", headers=spec)  # a business status, not an R4 code
    assert bad.status_code == 400
    OperationOutcome.model_validate(bad.json())
    queries = await audit_records(app, resource_type="referral", action="Q")
    assert any(q.detail.get("format") == "fhir:ServiceRequest" and q.detail["patient_refs"] == [patient]
               for q in queries)  # fmt: skip


async def test_fhir_errors_are_operation_outcomes(client: httpx.AsyncClient, community: Community) -> None:
    rid = await emergency_referral(client, community)
    outsider = await community.login(client, "vd_b1")
    hidden = await client.get(f"/fhir/R4/ServiceRequest/{rid}", headers=outsider)
    assert hidden.status_code == 404
    assert hidden.headers["content-type"] == "application/fhir+json"
    outcome = OperationOutcome.model_validate(hidden.json())
    assert outcome.issue[0].code == "not-found"
    assert (await client.get("/fhir/R4/Task/not-a-uuid", headers=outsider)).status_code == 404
    analyst = await community.login(client, "analyst")
    forbidden = await client.get(f"/fhir/R4/Task/{rid}", headers=analyst)
    assert forbidden.status_code == 403
    assert OperationOutcome.model_validate(forbidden.json()).issue[0].code == "forbidden"
    assert (await client.get("/fhir/R4/ServiceRequest?patient=x", headers=analyst)).status_code == 403
    assert (await client.get(f"/fhir/R4/Task/{rid}")).status_code == 401
