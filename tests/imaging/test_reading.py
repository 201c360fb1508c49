"""The reading workflow: a study sent by a village doctor is routed to the county worklist, claimed, reported and
signed by a county radiologist, and the village doctor is told (DICOM PS3.4 Annex CC states)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from imaging.reading import REPORT_SIGNED, TRANSITIONS, Command, TaskStatus, next_status
from telemed.core.audit import AuditRecord
from telemed.core.auth import Role, UserAccount
from telemed.core.events import OutboxRecord
from telemed.core.security import hash_password
from tests.conftest import PASSWORD, Community
from tests.imaging.helpers import make_xray, new_uid, quick_settings, stow

WORKLIST = "/api/v1/imaging/worklist"

ROUTING = """
rules:
  - name: ct-head-stroke
    match: {modality: [CT], body_part: [HEAD]}
    worklist: {facility: COUNTY_HOSPITAL, department: radiology}
    priority: stat
default:
  name: default
  worklist: {facility: COUNTY_HOSPITAL, department: radiology}
  priority: routine
"""


async def add_user(app: FastAPI, community: Community, username: str, role: Role, facility: str) -> None:
    async with app.state.ctx.db.session() as session, session.begin():
        uid = community.users[username] = uuid.uuid4()
        session.add(UserAccount(id=uid, username=username, password_hash=hash_password(PASSWORD),
                                display_name=f"测试{username}", role=role.value,
                                facility_id=community.facilities[facility], disabled=False,
                                failed_attempts=0))  # fmt: skip


def route_to_county(app: FastAPI, tmp_path: Path) -> None:
    """Routing rules naming the test community's county hospital, and a short quiet period."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(ROUTING, encoding="utf-8")
    quick_settings(app.state.ctx, imaging_routing_file=rules, imaging_stable_seconds=0.4)


async def send_study(client: httpx.AsyncClient, headers: dict[str, str], tmp_path: Path) -> str:
    study_uid = new_uid()
    xray = make_xray(tmp_path / f"{study_uid}.dcm", study_uid=study_uid, series_uid=new_uid(), sop_uid=new_uid(),
                     patient_name="Chen^Mei=陈^梅", charset="GB18030", rows=32, cols=32)  # fmt: skip
    response = await stow(client, headers, [xray])
    assert response.status_code == 200, response.text
    return study_uid


async def wait_for_task(client: httpx.AsyncClient, headers: dict[str, str], study_uid: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        response = await client.get(WORKLIST, headers=headers)
        assert response.status_code == 200, response.text
        found = [t for t in response.json() if t["study_uid"] == study_uid]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, "the routed study never reached the worklist"
        await asyncio.sleep(0.1)


async def routed_task(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> tuple[dict[str, Any], str, dict[str, str]]:
    """A village doctor's study on the county radiologist's worklist: (task, study UID, radiologist headers)."""
    route_to_county(app, tmp_path)
    study_uid = await send_study(client, await community.login(client, "vd_a1"), tmp_path)
    rad = await community.login(client, "rad")
    return await wait_for_task(client, rad, study_uid), study_uid, rad


async def wait_for_notification(client: httpx.AsyncClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        response = await client.get("/api/v1/notifications", headers=headers)
        assert response.status_code == 200
        found = [n for n in response.json() if n["name"] == name]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"no {name} notification"
        await asyncio.sleep(0.1)


def test_the_transition_table_is_the_ups_state_diagram() -> None:
    assert next_status(TaskStatus.scheduled, Command.claim) is TaskStatus.in_progress
    assert next_status(TaskStatus.in_progress, Command.release) is TaskStatus.scheduled
    assert next_status(TaskStatus.in_progress, Command.sign) is TaskStatus.completed
    # COMPLETED is final (PS3.4 CC.1.1): no move leaves it.
    assert not [key for key in TRANSITIONS if key[0] is TaskStatus.completed]


async def test_the_whole_loop_from_village_to_signed_report_and_back(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    task, study_uid, rad = await routed_task(app, client, community, tmp_path)
    assert task["status"] == "scheduled"
    assert task["worklist_code"] == "COUNTY_HOSPITAL/radiology"
    assert task["priority"] == "routine"
    assert task["target_facility_id"] == str(community.facilities["county_hospital"])
    assert task["sending_facility_id"] == str(community.facilities["clinic_a1"])
    assert task["allowed_commands"] == ["claim"]

    filtered = await client.get(WORKLIST, headers=rad, params={"status": "scheduled", "priority": "routine"})
    assert [t["id"] for t in filtered.json()] == [task["id"]]
    assert (await client.get(WORKLIST, headers=rad, params={"priority": "stat"})).json() == []
    assert (await client.get(WORKLIST, headers=rad, params={"status": "bogus"})).status_code == 422

    url = f"{WORKLIST}/{task['id']}"
    claimed = await client.post(f"{url}/claim", headers=rad)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["status"] == "in_progress"
    assert claimed.json()["claimed_by"] == str(community.users["rad"])

    # Release and claim again: back to the worklist and out of it.
    released = await client.post(f"{url}/release", headers=rad)
    assert released.json()["status"] == "scheduled"
    assert released.json()["claimed_by"] is None
    assert (await client.post(f"{url}/claim", headers=rad)).status_code == 200

    body = {"findings": "双肺纹理清晰，未见实变。", "impression": "胸片未见明显异常。"}
    drafted = await client.put(f"{url}/report", headers=rad, json=body)
    assert drafted.status_code == 200, drafted.text
    assert drafted.json()["report"]["status"] == "draft"
    body["impression"] = "胸部正位片未见明显异常。"
    assert (await client.put(f"{url}/report", headers=rad, json=body)).json()["report"]["impression"] == body[
        "impression"
    ]

    signed = await client.post(f"{url}/sign", headers=rad)
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "completed"
    assert signed.json()["report"]["status"] == "signed"
    assert signed.json()["turnaround_seconds"] >= 0

    village = await community.login(client, "vd_a1")
    note = await wait_for_notification(client, village, REPORT_SIGNED)
    assert note["payload"]["study_uid"] == study_uid
    assert note["payload"]["task_id"] == task["id"]
    assert note["payload"]["facility_id"] == str(community.facilities["clinic_a1"])
    assert note["payload"]["turnaround_seconds"] >= 0
    text = json.dumps(note["payload"], ensure_ascii=False)
    for name in ("Chen", "陈", "测试", "未见"):
        assert name not in text

    async with app.state.ctx.db.read_session() as session:
        outbox = (await session.scalars(select(OutboxRecord).where(OutboxRecord.name == REPORT_SIGNED))).one()
        audited = await session.scalars(select(AuditRecord).where(AuditRecord.resource_type == "imaging_report"))
        actions = [(r.action, r.detail.get("command")) for r in audited]
    assert outbox.audience == {"users": [], "facilities": [str(community.facilities["clinic_a1"])]}
    assert ("C", None) in actions
    assert ("U", "sign") in actions

    # Another village clinic is not told.
    other = await community.login(client, "vd_b1")
    names = [n["name"] for n in (await client.get("/api/v1/notifications", headers=other)).json()]
    assert REPORT_SIGNED not in names


async def test_illegal_moves_answer_409(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    task, _uid, rad = await routed_task(app, client, community, tmp_path)
    url = f"{WORKLIST}/{task['id']}"
    body = {"findings": "所见", "impression": "印象"}
    for method, path in (("post", "release"), ("post", "sign"), ("put", "report")):
        response = await client.request(method, f"{url}/{path}", headers=rad, json=body if path == "report" else None)
        assert response.status_code == 409, (path, response.text)
        assert response.json()["code"] == "imaging.illegal_transition"
    assert (await client.post(f"{url}/claim", headers=rad)).status_code == 200
    assert (await client.post(f"{url}/claim", headers=rad)).status_code == 409
    missing = await client.post(f"{url}/sign", headers=rad)
    assert missing.status_code == 409
    assert missing.json()["code"] == "imaging.report_missing"
    assert (await client.put(f"{url}/report", headers=rad, json=body)).status_code == 200
    assert (await client.post(f"{url}/sign", headers=rad)).status_code == 200
    for method, path in (("post", "claim"), ("post", "release"), ("post", "sign"), ("put", "report")):
        response = await client.request(method, f"{url}/{path}", headers=rad, json=body if path == "report" else None)
        assert response.status_code == 409, (path, response.text)


async def test_only_the_claimer_reports_and_signs(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    await add_user(app, community, "rad2", Role.radiologist, "county_hospital")
    task, _uid, rad = await routed_task(app, client, community, tmp_path)
    rad2 = await community.login(client, "rad2")
    url = f"{WORKLIST}/{task['id']}"
    assert (await client.post(f"{url}/claim", headers=rad)).status_code == 200
    assert (
        await client.put(f"{url}/report", headers=rad, json={"findings": "a", "impression": "b"})
    ).status_code == 200
    assert (await client.post(f"{url}/claim", headers=rad2)).status_code == 409
    for method, path in (("post", "sign"), ("post", "release"), ("put", "report")):
        json_body = {"findings": "x", "impression": "y"} if path == "report" else None
        response = await client.request(method, f"{url}/{path}", headers=rad2, json=json_body)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == "imaging.not_claimer"
    # Once released, the other radiologist may take it over and sign.
    assert (await client.post(f"{url}/release", headers=rad)).status_code == 200
    assert (await client.post(f"{url}/claim", headers=rad2)).status_code == 200
    assert (await client.post(f"{url}/sign", headers=rad2)).status_code == 200
    async with app.state.ctx.db.read_session() as session:
        denied = (await session.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied"))).all()
    assert any(r.detail.get("reason") == "not_claimer" for r in denied)


async def test_out_of_scope_is_404_and_other_roles_403(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    await add_user(app, community, "rad_b", Role.radiologist, "centre_b")
    task, _uid, _rad = await routed_task(app, client, community, tmp_path)
    url = f"{WORKLIST}/{task['id']}"
    township = await community.login(client, "rad_b")
    assert (await client.get(WORKLIST, headers=township)).json() == []
    assert (await client.post(f"{url}/claim", headers=township)).status_code == 404
    assert (await client.post(f"{WORKLIST}/{uuid.uuid4()}/claim", headers=township)).status_code == 404
    for username in ("analyst", "vd_a1", "spec", "admin"):
        headers = await community.login(client, username)
        assert (await client.get(WORKLIST, headers=headers)).status_code == 403, username
        assert (await client.post(f"{url}/claim", headers=headers)).status_code == 403, username
    assert (await client.get(WORKLIST)).status_code == 401


async def test_two_radiologists_racing_for_one_task_one_wins(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    await add_user(app, community, "rad2", Role.radiologist, "county_hospital")
    task, _uid, rad = await routed_task(app, client, community, tmp_path)
    rad2 = await community.login(client, "rad2")
    url = f"{WORKLIST}/{task['id']}/claim"
    first, second = await asyncio.gather(client.post(url, headers=rad), client.post(url, headers=rad2))
    assert sorted([first.status_code, second.status_code]) == [200, 409]
