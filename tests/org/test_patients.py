"""Patients: registration with validated ID numbers, facility scope for every role, and an audit record on
every read."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from telemed.core.audit import AuditRecord
from telemed.org.idcard import make_id_number
from telemed.org.models import Patient
from tests.conftest import ACCOUNTS, Community, register

ID_A = make_id_number("331121", dt.date(1956, 3, 14), 123)  # male
ID_B = make_id_number("331121", dt.date(1988, 11, 2), 246)  # female


async def _count(app: FastAPI, model: type[Patient] | type[AuditRecord]) -> int:
    async with app.state.ctx.db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _audit(app: FastAPI) -> list[AuditRecord]:
    async with app.state.ctx.db.read_session() as session:
        return list((await session.scalars(select(AuditRecord).order_by(AuditRecord.seq))).all())


async def test_register_derives_sex_and_birth_date_and_masks(client: httpx.AsyncClient, community: Community) -> None:
    headers = await community.login(client, "vd_a1")
    response = await register(client, headers, ID_A, phone="13800138000")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sex"] == "male"
    assert body["birth_date"] == "1956-03-14"
    assert body["id_number_masked"] == ID_A[:6] + "*" * 8 + ID_A[-4:]
    assert body["phone_masked"] == "138****8000"
    assert ID_A not in response.text
    assert "13800138000" not in response.text
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("id_number", "reason"),
    [
        (ID_A[:-1] + ("0" if ID_A[-1] != "0" else "1"), "id_number.checksum"),
        ("33112119561314123X", "id_number.birth_date"),
        ("3311211956031412", "id_number.format"),
        ("991121195603141238", "id_number.province"),
        ("abc", "id_number.format"),
    ],
)
async def test_bad_id_number_is_422_naming_field_and_reason_and_stores_nothing(
    app: FastAPI, client: httpx.AsyncClient, community: Community, id_number: str, reason: str
) -> None:
    headers = await community.login(client, "vd_a1")
    before = await _count(app, Patient)
    response = await register(client, headers, id_number)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == "id_number"
    assert problem["errors"][0]["code"] == reason
    assert problem["errors"][0]["message"]  # zh-CN text by default
    assert id_number not in response.text  # the bad input is named, never echoed
    assert await _count(app, Patient) == before


async def test_validation_messages_follow_accept_language(client: httpx.AsyncClient, community: Community) -> None:
    headers = await community.login(client, "vd_a1")
    bad = ID_A[:-1] + ("0" if ID_A[-1] != "0" else "1")
    zh = await register(client, headers, bad)
    en = await register(client, {**headers, "Accept-Language": "en-US,en;q=0.9"}, bad)
    assert zh.json()["errors"][0]["message"] == "身份证号校验码错误"
    assert "check character" in en.json()["errors"][0]["message"]
    assert en.json()["title"] == "The submitted data is not valid"


async def test_sex_mismatch_is_422(client: httpx.AsyncClient, community: Community) -> None:
    headers = await community.login(client, "vd_a1")
    response = await register(client, headers, ID_A, sex="female")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "sex"


async def test_duplicate_patient_is_409_and_stores_nothing(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    first = await register(client, await community.login(client, "vd_a1"), ID_A)
    assert first.status_code == 201
    before_patients = await _count(app, Patient)
    # Same person again, from another clinic and with a lower-case x variant where applicable.
    duplicate = await register(client, await community.login(client, "vd_b1"), ID_A, name="别名")
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"] == "application/problem+json"
    assert duplicate.json()["code"] == "patient.duplicate"
    assert await _count(app, Patient) == before_patients


async def test_village_doctor_cannot_see_another_clinics_patients(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    a1, b1 = await community.login(client, "vd_a1"), await community.login(client, "vd_b1")
    pid = (await register(client, a1, ID_A)).json()["id"]
    (await register(client, b1, ID_B)).raise_for_status()

    listing = (await client.get("/api/v1/patients", headers=b1)).json()
    assert [p["id"] for p in listing["items"]] != []
    assert pid not in [p["id"] for p in listing["items"]]
    assert listing["total"] == 1

    read = await client.get(f"/api/v1/patients/{pid}", headers=b1)
    assert read.status_code == 404  # not 403: existence is not revealed
    denied = [r for r in await _audit(app) if r.outcome == "denied"]
    assert len(denied) == 1
    assert denied[0].patient_ref == pid
    assert denied[0].actor_user_id == str(community.users["vd_b1"])
    search = await client.post("/api/v1/patients/search", json={"id_number": ID_A}, headers=b1)
    assert search.status_code == 200
    assert search.json() == []
    reveal = await client.post(f"/api/v1/patients/{pid}/identifiers", headers=b1)
    assert reveal.status_code == 404


# Who sees the patient registered at clinic A1 (township A): the expected outcome per role.
VISIBILITY = {
    "vd_a1": 200,  # own clinic
    "vd_a2": 404,  # another clinic in the same township
    "vd_b1": 404,  # another township
    "td_a": 200,  # the township centre above the clinic
    "td_b": 404,  # another township's centre
    "spec": 200,  # county hospital: the whole county
    "rad": 200,
    "analyst": 403,  # no patient data at all
    "admin": 403,
}


@pytest.mark.parametrize("username", list(ACCOUNTS))
async def test_patient_access_by_role(
    app: FastAPI, client: httpx.AsyncClient, community: Community, username: str
) -> None:
    pid = (await register(client, await community.login(client, "vd_a1"), ID_A)).json()["id"]
    headers = await community.login(client, username)
    audit_before = len(await _audit(app))

    read = await client.get(f"/api/v1/patients/{pid}", headers=headers)
    assert read.status_code == VISIBILITY[username]
    listing = await client.get("/api/v1/patients", headers=headers)
    search = await client.post("/api/v1/patients/search", json={"name": "王"}, headers=headers)
    if VISIBILITY[username] == 403:
        for response in (read, listing, search):
            assert response.status_code == 403
            assert response.headers["content-type"] == "application/problem+json"
            assert "王小明" not in response.text
        return
    visible = VISIBILITY[username] == 200
    assert (pid in [p["id"] for p in listing.json()["items"]]) is visible
    assert (pid in [p["id"] for p in search.json()]) is visible
    # Every read of patient data leaves an audit record: the read, the list and the search.
    records = (await _audit(app))[audit_before:]
    assert [(r.action, r.outcome) for r in records] == [
        ("R", "success" if visible else "denied"),
        ("Q", "success"),
        ("Q", "success"),
    ]
    assert all(r.actor_user_id == str(community.users[username]) for r in records)
    if visible:
        assert records[1].detail["patient_refs"] == [pid] or pid in records[1].detail["patient_refs"]
        assert records[2].detail["criteria"] == ["name"]


async def test_reveal_identifiers_only_in_the_registering_facility(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    a1 = await community.login(client, "vd_a1")
    pid = (await register(client, a1, ID_A, phone="13912345678")).json()["id"]
    own = await client.post(f"/api/v1/patients/{pid}/identifiers", headers=a1)
    assert own.status_code == 200
    assert own.json() == {"id": pid, "id_number": ID_A, "phone": "13912345678"}
    county = await client.post(f"/api/v1/patients/{pid}/identifiers", headers=await community.login(client, "spec"))
    assert county.status_code == 404
    assert [r.detail.get("op") for r in await _audit(app) if r.action == "E"] == ["reveal_identifiers"] * 2


async def test_unauthenticated_is_401_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/patients")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
