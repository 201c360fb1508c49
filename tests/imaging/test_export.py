"""De-identified export of a study (PS3.15 E.1 Basic Profile) for teaching and second opinions: a county
radiologist exports a Chinese-named study sent by a village clinic, and the ZIP they download names nobody."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.dataset import Dataset
from sqlalchemy import func, select, update

import imaging.export
from imaging.export import (
    EXPORT_FINISHED,
    MAX_ATTEMPTS,
    TRANSITIONS,
    ExportStatus,
    export_blob_key,
    wake_export_worker,
)
from imaging.export_models import ImagingExport
from imaging.models import ImagingStudy
from telemed.app import create_app
from telemed.core.audit import AuditRecord
from telemed.core.auth import Role, UserAccount
from telemed.core.config import Settings
from telemed.core.db import utcnow
from telemed.core.security import hash_password
from telemed.org.models import Facility, Region
from tests.conftest import PASSWORD, Community
from tests.imaging.dicom_factory import CT_IMAGE_STORAGE
from tests.imaging.helpers import make_ct_slice, new_uid, stow

EXPORTS = "/api/v1/imaging/exports"
PATIENT_NAME = "Zhang^San=张^三"
PATIENT_ID = "QT-000123"
#: Bytes that must not appear in any exported file, in the manifest or in a file name: the patient's name in
#: every character set the study uses (GB18030 and GB 2312 share 张 = D5 C5; UTF-8 for the manifest), the
#: other identifiers and the acquisition date.
FORBIDDEN = (
    "张".encode("gb18030"),
    "张".encode(),
    "王".encode("gb18030"),
    b"Zhang",
    PATIENT_ID.encode(),
    b"19580704",
    b"20240315",
    b"A20240315001",
    b"13800138000",
    b"Li^Si",
    b"County Hospital",
)


@dataclass(frozen=True)
class Original:
    path: Path
    sop_uid: str
    series_uid: str
    series_number: int
    instance_number: int


@dataclass(frozen=True)
class SentStudy:
    study_uid: str
    instances: list[Original]

    def by_position(self) -> dict[tuple[int, int], Original]:
        return {(item.series_number, item.instance_number): item for item in self.instances}

    def uids(self) -> list[bytes]:
        found = {self.study_uid} | {i.sop_uid for i in self.instances} | {i.series_uid for i in self.instances}
        return [uid.encode() for uid in found]


async def send_study(
    client: httpx.AsyncClient, community: Community, tmp_path: Path, *, burned_in: bool = False
) -> SentStudy:
    """A village clinic's CT study of 张三: series 1 in GB18030, series 2 in ISO 2022 IR 58 and (as Chinese
    equipment often writes) GB18030 bytes with no Specific Character Set; series 2 references series 1."""
    study_uid = new_uid()
    series = [(1, new_uid(), new_uid()), (2, new_uid(), new_uid())]  # (number, series UID, frame of reference)
    first_slice = new_uid()
    identifying = {
        "OtherPatientNames": "张^三",
        "PatientAddress": "青田县温溪镇东岙村",
        "PatientTelephoneNumbers": "13800138000",
        "PatientAge": "066Y",
        "OperatorsName": "王^五",
        "ImageComments": "患者张三 复查",
        "InstitutionAddress": "浙江省丽水市青田县",
    }
    plan: list[tuple[int, int, str, Any, str | None, dict[str, Any]]] = [
        (1, 1, first_slice, "GB18030", None, dict(identifying)),
        (1, 2, new_uid(), "GB18030", None, dict(identifying)),
        (2, 1, new_uid(), ["", "ISO 2022 IR 58"], None, dict(identifying)),
        (2, 2, new_uid(), None, "GB18030", {}),
    ]
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    reference.ReferencedSOPInstanceUID = first_slice
    plan[2][5]["ReferencedImageSequence"] = [reference]
    if burned_in:
        plan[3][5]["BurnedInAnnotation"] = "YES"
    originals = []
    for series_number, instance_number, sop_uid, charset, text_encoding, extra in plan:
        _, series_uid, frame_of_reference = series[series_number - 1]
        path = make_ct_slice(
            tmp_path / "sent" / f"{series_number}-{instance_number}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            patient_name=PATIENT_NAME,
            charset=charset,
            text_encoding=text_encoding,
            rows=16,
            cols=16,
            series_number=series_number,
            instance_number=instance_number,
            patient_id=PATIENT_ID,
            extra={**extra, "FrameOfReferenceUID": frame_of_reference},
        )
        originals.append(Original(path, sop_uid, series_uid, series_number, instance_number))
    response = await stow(client, await community.login(client, "vd_a1"), [o.path for o in originals])
    assert response.status_code == 200, response.text
    return SentStudy(study_uid, originals)


async def wait_for(
    client: httpx.AsyncClient, headers: dict[str, str], export_id: str, *statuses: str
) -> dict[str, Any]:
    """Poll the job until it reaches one of ``statuses`` (the deadline only keeps a broken worker from hanging)."""
    wanted = statuses or ("done", "failed")
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        response = await client.get(f"{EXPORTS}/{export_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in wanted:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"the export stayed {job['status']}"
        await asyncio.sleep(0.05)


async def start_export(
    client: httpx.AsyncClient, headers: dict[str, str], study_uid: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(EXPORTS, headers=headers, json={"study_uid": study_uid, "purpose": "teaching", **body})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{EXPORTS}/{job['id']}"
    return job


def dicom_files(archive: zipfile.ZipFile) -> Iterator[tuple[str, bytes, Dataset]]:
    for name in sorted(archive.namelist()):
        if name.endswith(".dcm"):
            data = archive.read(name)
            yield name, data, pydicom.dcmread(io.BytesIO(data))


def assert_nothing_identifying(data: bytes, sent: SentStudy, where: str) -> None:
    for needle in (*FORBIDDEN, *sent.uids()):
        assert needle not in data, f"{needle!r} found in {where}"


async def add_other_county_radiologist(app: FastAPI, community: Community) -> None:
    """A radiologist of the neighbouring county's hospital (缙云县): a clinician, but not of this county."""
    async with app.state.ctx.db.session() as session, session.begin():
        region = Region(id=uuid.uuid4(), code="331122", name="缙云县", level="county",
                        parent_id=community.regions["3311"], path="33/3311/331122/")  # fmt: skip
        session.add(region)
        await session.flush()
        facility = Facility(id=uuid.uuid4(), code="JINYUN_HOSPITAL", name="缙云县人民医院", tier="county",
                            kind="test", region_id=region.id, latitude=28.6, longitude=120.1, modalities=[],
                            flags=[], icd10_ranges=[])  # fmt: skip
        session.add(facility)
        await session.flush()
        community.users["rad_jinyun"] = uuid.uuid4()
        session.add(UserAccount(id=community.users["rad_jinyun"], username="rad_jinyun",
                                password_hash=hash_password(PASSWORD), display_name="测试rad_jinyun",
                                role=Role.radiologist.value, facility_id=facility.id, disabled=False,
                                failed_attempts=0))  # fmt: skip


async def audit_records(app: FastAPI, **where: Any) -> list[AuditRecord]:
    async with app.state.ctx.db.read_session() as session:
        query = select(AuditRecord).order_by(AuditRecord.seq)
        for name, value in where.items():
            query = query.where(getattr(AuditRecord, name) == value)
        return list((await session.scalars(query)).all())


def test_the_job_states_end_in_done_failed_or_expired() -> None:
    sources = {status for status, _ in TRANSITIONS}
    assert ExportStatus.failed not in sources
    assert ExportStatus.expired not in sources
    assert TRANSITIONS[(ExportStatus.done, imaging.export.Command.expire)] is ExportStatus.expired


async def test_export_of_a_chinese_named_study_names_nobody_and_keeps_its_structure(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    sent_bytes = b"".join(original.path.read_bytes() for original in sent.instances)
    missing = [needle for needle in FORBIDDEN if needle != "张".encode() and needle not in sent_bytes]
    assert missing == [], "the study sent must carry every identifier the export is checked for"
    assert b"\x1b$)A" + "张".encode("gb2312") in sent_bytes  # ISO 2022 IR 58, with its escape sequence
    rad = await community.login(client, "rad")
    created = await start_export(client, rad, sent.study_uid)
    assert created["status"] in ("queued", "running")
    assert created["progress"]["total"] == 4
    assert created["purpose"] == "teaching"
    assert created["options"] == {
        "retain_long_full_dates": False,
        "retain_patient_characteristics": False,
        "skip_burned_in_annotation": False,
    }

    job = await wait_for(client, rad, created["id"])
    assert job["status"] == "done", job
    assert job["progress"] == {"done": 4, "total": 4, "skipped": 0}
    assert job["reason"] is None
    finished = dt.datetime.fromisoformat(job["finished_at"])
    assert dt.datetime.fromisoformat(job["expires_at"]) - finished == dt.timedelta(days=7)
    assert job["download_url"] == f"{EXPORTS}/{job['id']}/download"

    response = await client.get(job["download_url"], headers=rad)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert disposition.isascii()
    assert sent.study_uid not in disposition
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["content-length"]) == len(response.content) == job["size_bytes"]

    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert "manifest.json" in names
    assert len([n for n in names if n.endswith(".dcm")]) == 4
    assert_nothing_identifying("\n".join(names).encode(), sent, "the file names")
    manifest_bytes = archive.read("manifest.json")
    assert_nothing_identifying(manifest_bytes, sent, "the manifest")
    manifest = json.loads(manifest_bytes)
    pseudonym = manifest["patient_pseudonym"]

    originals = sent.by_position()
    exported: dict[tuple[int, int], Dataset] = {}
    for name, data, ds in dicom_files(archive):
        assert_nothing_identifying(data, sent, name)
        assert data[128:132] == b"DICM"  # a Part 10 file
        position = (int(ds.SeriesNumber), int(ds.InstanceNumber))
        original = pydicom.dcmread(originals[position].path)
        exported[position] = ds
        assert str(ds.PatientName) == pseudonym
        assert ds.PatientID == pseudonym
        assert ds.PatientBirthDate == ""
        assert ds.StudyDate == ""
        removed = ("OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientAge", "ImageComments",
                   "InstitutionAddress", "RequestAttributesSequence")  # fmt: skip
        for keyword in removed:
            assert keyword not in ds, keyword
        if position != (2, 2):
            assert str(ds.OperatorsName) == "ANONYMIZED"  # a dummy value (X/Z/D)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.PixelData == original.PixelData  # the image itself is untouched

    # One new study, one new series UID per original series, new and distinct instance UIDs; references follow.
    assert {str(ds.StudyInstanceUID) for ds in exported.values()} == set(manifest["study_instance_uids"])
    assert len(manifest["study_instance_uids"]) == 1
    assert exported[(1, 1)].SeriesInstanceUID == exported[(1, 2)].SeriesInstanceUID
    assert exported[(2, 1)].SeriesInstanceUID == exported[(2, 2)].SeriesInstanceUID
    assert exported[(1, 1)].SeriesInstanceUID != exported[(2, 1)].SeriesInstanceUID
    assert exported[(1, 1)].FrameOfReferenceUID == exported[(1, 2)].FrameOfReferenceUID
    assert len({str(ds.SOPInstanceUID) for ds in exported.values()}) == 4
    reference = exported[(2, 1)].ReferencedImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == exported[(1, 1)].SOPInstanceUID
    assert {f["sop_instance_uid"] for f in manifest["files"]} == {str(ds.SOPInstanceUID) for ds in exported.values()}
    assert [s["instances"] for s in manifest["series"]] == [2, 2]
    assert manifest["purpose"] == "teaching"

    # Requested, run and downloaded: each audited on the study, with the export's purpose and no name.
    records = await audit_records(app, resource_id=sent.study_uid)
    made = [(r.action, r.actor_role, r.detail.get("what"), r.purpose) for r in records]
    assert ("E", "radiologist", "deidentified_export", "teaching") in made
    assert ("R", "system", "deidentified_export_run", "teaching") in made
    assert ("R", "radiologist", "deidentified_export_download", "teaching") in made
    assert "张" not in json.dumps([r.detail for r in records], ensure_ascii=False)

    # The requester is told, with ids and codes only.
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        notes = (await client.get("/api/v1/notifications", headers=rad)).json()
        finished_notes = [n for n in notes if n["name"] == EXPORT_FINISHED]
        if finished_notes:
            break
        assert asyncio.get_running_loop().time() < deadline, "no export notification"
        await asyncio.sleep(0.05)
    assert finished_notes[0]["payload"] == {"export_id": job["id"], "status": "done", "reason": None}

    listed = await client.get(EXPORTS, headers=rad)
    assert [item["id"] for item in listed.json()] == [job["id"]]


async def test_asked_for_options_keep_dates_and_characteristics_and_nothing_else(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    spec = await community.login(client, "spec")
    options = {"retain_long_full_dates": True, "retain_patient_characteristics": True}
    created = await start_export(client, spec, sent.study_uid, purpose="second_opinion", options=options)
    job = await wait_for(client, spec, created["id"])
    assert job["status"] == "done", job
    archive = zipfile.ZipFile(io.BytesIO((await client.get(job["download_url"], headers=spec)).content))
    for _name, _data, ds in dicom_files(archive):
        assert ds.StudyDate == "20240315"
        assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
        assert ds.PatientSex == "M"
        assert str(ds.PatientName) != PATIENT_NAME
        assert "OtherPatientNames" not in ds
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert codes == {"113100", "113106", "113108"}
    assert json.loads(archive.read("manifest.json"))["purpose"] == "second_opinion"

    # Options that would keep identifiers are not offered at all.
    for unsafe in ({"retain_uids": True}, {"allow_burned_in_annotation": True}):
        response = await client.post(
            EXPORTS, headers=spec, json={"study_uid": sent.study_uid, "purpose": "teaching", "options": unsafe}
        )
        assert response.status_code == 422, unsafe
        assert response.headers["content-type"] == "application/problem+json"
    bad_purpose = await client.post(EXPORTS, headers=spec, json={"study_uid": sent.study_uid, "purpose": "research"})
    assert bad_purpose.status_code == 422


async def test_burned_in_annotation_stops_the_export_unless_such_instances_are_left_out(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path, burned_in=True)
    rad = await community.login(client, "rad")

    refused = await wait_for(client, rad, (await start_export(client, rad, sent.study_uid))["id"])
    assert refused["status"] == "failed"
    assert refused["reason"] == "imaging.export.burned_in_annotation"
    assert refused["download_url"] is None
    english = await client.get(f"{EXPORTS}/{refused['id']}", headers={**rad, "Accept-Language": "en"})
    assert "Burned In Annotation" in english.json()["reason_message"]
    assert "像素" in refused["reason_message"]
    not_ready = await client.get(f"{EXPORTS}/{refused['id']}/download", headers=rad)
    assert not_ready.status_code == 409
    assert not_ready.headers["content-type"] == "application/problem+json"
    assert not_ready.json()["code"] == "imaging.export_not_ready"
    assert not await app.state.ctx.storage.exists(export_blob_key(uuid.UUID(refused["id"])))

    created = await start_export(client, rad, sent.study_uid, options={"skip_burned_in_annotation": True})
    job = await wait_for(client, rad, created["id"])
    assert job["status"] == "done", job
    assert job["progress"] == {"done": 4, "total": 4, "skipped": 1}
    archive = zipfile.ZipFile(io.BytesIO((await client.get(job["download_url"], headers=rad)).content))
    positions = {(int(ds.SeriesNumber), int(ds.InstanceNumber)) for _n, _d, ds in dicom_files(archive)}
    assert positions == {(1, 1), (1, 2), (2, 1)}
    assert json.loads(archive.read("manifest.json"))["instances_left_out_for_burned_in_annotation"] == 1


async def test_who_may_export_and_see_an_export(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    await add_other_county_radiologist(app, community)
    body = {"study_uid": sent.study_uid, "purpose": "second_opinion"}

    # Another county's radiologist: the study is not theirs to see, so it "does not exist" (and that is audited).
    other = await community.login(client, "rad_jinyun")
    hidden = await client.post(EXPORTS, headers=other, json=body)
    assert hidden.status_code == 404
    assert hidden.headers["content-type"] == "application/problem+json"
    assert hidden.json()["code"] == "imaging.not_found"
    denied = await audit_records(app, resource_id=sent.study_uid, outcome="denied")
    assert [(r.action, r.actor_user_id, r.detail["reason"]) for r in denied] == [
        ("E", str(community.users["rad_jinyun"]), "not_found_or_out_of_scope")
    ]

    # Roles that see no images, and clinicians who may view but not hand studies on: 403.
    for username in ("analyst", "admin", "vd_a1", "td_a"):
        headers = await community.login(client, username)
        forbidden = await client.post(EXPORTS, headers=headers, json=body)
        assert forbidden.status_code == 403, username
        assert forbidden.json()["code"] == "imaging.export_forbidden"
        assert (await client.get(EXPORTS, headers=headers)).status_code == 403, username
    english = await client.post(EXPORTS, headers={**headers, "Accept-Language": "en"}, json=body)
    assert english.json()["title"] == "Your role may not export studies"
    assert forbidden.json()["title"] == "您的角色无权导出影像"
    assert (await client.post(EXPORTS, json=body)).status_code == 401

    # Only the requester sees and downloads their export; a colleague in the same scope gets 404.
    rad = await community.login(client, "rad")
    job = await wait_for(client, rad, (await start_export(client, rad, sent.study_uid))["id"])
    spec = await community.login(client, "spec")
    for url in (f"{EXPORTS}/{job['id']}", f"{EXPORTS}/{job['id']}/download"):
        response = await client.get(url, headers=spec)
        assert response.status_code == 404, url
        assert response.json()["code"] == "imaging.export_not_found"
        assert (await client.get(url, headers=other)).status_code == 404
    assert (await client.get(EXPORTS, headers=spec)).json() == []
    assert (await client.get(f"{EXPORTS}/{uuid.uuid4()}", headers=rad)).status_code == 404
    denied = await audit_records(app, resource_id=job["id"], outcome="denied")
    assert {r.actor_user_id for r in denied} == {str(community.users["spec"]), str(community.users["rad_jinyun"])}


async def test_a_study_that_does_not_exist_is_404_and_leaves_no_job(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    rad = await community.login(client, "rad")
    missing = await client.post(EXPORTS, headers=rad, json={"study_uid": new_uid(), "purpose": "teaching"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "未找到"
    assert "location" not in missing.headers
    malformed = await client.post(EXPORTS, headers=rad, json={"study_uid": "张三", "purpose": "teaching"})
    assert malformed.status_code == 422
    async with app.state.ctx.db.read_session() as session:
        assert await session.scalar(select(func.count(ImagingExport.id))) == 0


async def test_progress_is_visible_while_the_export_runs(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = await send_study(client, community, tmp_path)
    rad = await community.login(client, "rad")
    # The worker is held before its second instance until the test has looked at the job.
    held, release = threading.Event(), threading.Event()
    original_add = imaging.export._ZipWriter.add
    calls = 0

    def add(writer: Any, source: Path, transfer_syntax_uid: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            held.set()
            release.wait(timeout=60)
        original_add(writer, source, transfer_syntax_uid)

    monkeypatch.setattr(imaging.export._ZipWriter, "add", add)
    try:
        created = await start_export(client, rad, sent.study_uid)
        assert await asyncio.to_thread(held.wait, 60), "the worker never reached the second instance"
        running = (await client.get(f"{EXPORTS}/{created['id']}", headers=rad)).json()
        assert running["status"] == "running"
        assert running["progress"] == {"done": 1, "total": 4, "skipped": 0}
        assert running["started_at"] is not None
        assert running["download_url"] is None
        early = await client.get(f"{EXPORTS}/{created['id']}/download", headers=rad)
        assert early.status_code == 409
    finally:
        release.set()
    job = await wait_for(client, rad, created["id"])
    assert job["status"] == "done"
    assert job["progress"] == {"done": 4, "total": 4, "skipped": 0}


async def test_a_job_left_running_by_a_crash_is_taken_up_again_at_restart(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    async with app.state.ctx.db.read_session() as session:
        study_pk = await session.scalar(select(ImagingStudy.id).where(ImagingStudy.study_uid == sent.study_uid))
    # What a worker killed mid-export leaves: a running job whose lease has run out, and a half-written ZIP.
    now = utcnow()
    crashed_token = uuid.uuid4()
    rows = {
        "crashed": (1, crashed_token),
        "crashed_too_often": (MAX_ATTEMPTS, uuid.uuid4()),
    }
    ids = {name: uuid.uuid4() for name in rows}
    async with app.state.ctx.db.session() as session, session.begin():
        for name, (attempts, token) in rows.items():
            session.add(
                ImagingExport(id=ids[name], study_pk=study_pk, study_uid=sent.study_uid,
                              requested_by=community.users["rad"], purpose="teaching", options={},
                              status="running", instances_total=4, instances_done=2, instances_skipped=0,
                              attempts=attempts, lease_token=token, lease_until=now - dt.timedelta(seconds=1),
                              created_at=now - dt.timedelta(minutes=5), started_at=now - dt.timedelta(minutes=4))
            )  # fmt: skip
    spool = settings.data_dir / "spool" / "exports"
    spool.mkdir(parents=True, exist_ok=True)
    leftover = spool / f"{ids['crashed']}.{crashed_token.hex}.zip"
    leftover.write_bytes(b"PK\x03\x04 half a zip")

    restarted = create_app(settings, configure_logs=False)
    async with restarted.router.lifespan_context(restarted):
        transport = httpx.ASGITransport(app=restarted)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as again:
            rad = await community.login(again, "rad")
            job = await wait_for(again, rad, str(ids["crashed"]))
            assert job["status"] == "done", job
            assert job["progress"] == {"done": 4, "total": 4, "skipped": 0}
            archive = zipfile.ZipFile(io.BytesIO((await again.get(job["download_url"], headers=rad)).content))
            assert len([n for n in archive.namelist() if n.endswith(".dcm")]) == 4

            given_up = await wait_for(again, rad, str(ids["crashed_too_often"]))
            assert given_up["status"] == "failed"
            assert given_up["reason"] == "imaging.export.interrupted"
    async with app.state.ctx.db.read_session() as session:
        retried = await session.get(ImagingExport, ids["crashed"])
    assert retried is not None
    assert retried.attempts == 2
    assert retried.lease_token is None
    assert not leftover.exists()


async def test_expired_exports_are_deleted_by_the_worker(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    rad = await community.login(client, "rad")
    job = await wait_for(client, rad, (await start_export(client, rad, sent.study_uid))["id"])
    key = export_blob_key(uuid.UUID(job["id"]))
    ctx = app.state.ctx
    assert await ctx.storage.exists(key)

    async with ctx.db.session() as session, session.begin():
        await session.execute(
            update(ImagingExport)
            .where(ImagingExport.id == uuid.UUID(job["id"]))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    wake_export_worker(ctx)
    expired = await wait_for(client, rad, job["id"], "expired")
    assert expired["download_url"] is None
    assert not await ctx.storage.exists(key)
    gone = await client.get(f"{EXPORTS}/{job['id']}/download", headers=rad)
    assert gone.status_code == 410
    assert gone.json()["code"] == "imaging.export_expired"
    deleted = await audit_records(app, resource_id=job["id"], action="D")
    assert [(r.actor_role, r.detail) for r in deleted] == [("system", {"reason": "retention"})]


def _cli(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TELEMED_ENVIRONMENT": "test",
        "TELEMED_DATABASE_URL": settings.resolved_database_url,
        "TELEMED_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "telemed", "imaging", "export", *arguments],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_the_command_line_export_for_the_administrator_on_the_server(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path
) -> None:
    sent = await send_study(client, community, tmp_path)
    out = tmp_path / "out" / "case.zip"
    out.parent.mkdir()
    done = await asyncio.to_thread(_cli, settings, sent.study_uid, "--out", str(out), "--purpose", "second_opinion")
    assert done.returncode == 0, done.stderr
    assert "4 de-identified instances" in done.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.zip"]  # nothing half-written beside it

    archive = zipfile.ZipFile(out)
    files = list(dicom_files(archive))
    assert len(files) == 4
    for name, data, ds in files:
        assert_nothing_identifying(data, sent, name)
        assert ds.PatientIdentityRemoved == "YES"
    assert len({str(ds.StudyInstanceUID) for _n, _d, ds in files}) == 1
    assert json.loads(archive.read("manifest.json"))["purpose"] == "second_opinion"

    records = await audit_records(app, resource_id=sent.study_uid, action="E")
    assert [(r.actor_role, r.actor_user_id, r.purpose, r.detail["source"], r.detail["instances"]) for r in records] == [
        ("system", None, "second_opinion", "cli", 4)
    ]

    unknown = await asyncio.to_thread(_cli, settings, new_uid(), "--out", str(tmp_path / "out" / "none.zip"))
    assert unknown.returncode == 1
    assert "no such study" in unknown.stderr
    assert not (tmp_path / "out" / "none.zip").exists()
