"""The DICOM listener against real peers: dcmtk's storescu and findscu, and pynetdicom (C-ECHO, C-STORE)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from imaging import dimse
from imaging.config import ImagingSettings, use_imaging_settings
from imaging.dimse import DicomListener
from imaging.models import ImagingInstance, ImagingStudy
from telemed.core.audit import AuditRecord
from telemed.core.config import Settings
from tests.conftest import Community, free_port
from tests.imaging.dicom_factory import copy_truncated
from tests.imaging.helpers import count_blobs, count_rows, dcmtk, first, new_uid, small_study

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_port": free_port(), "dicom_ae_title": "TELEMED"})


async def _register_node(client: httpx.AsyncClient, community: Community, ae_title: str, facility: str) -> None:
    admin = await community.login(client, "admin")
    response = await client.post(
        "/api/v1/imaging/nodes",
        json={"ae_title": ae_title, "facility_id": str(community.facilities[facility]), "description": "DR room"},
        headers=admin,
    )
    assert response.status_code == 201, response.text


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a peer as a subprocess without blocking the loop (the listener's handlers need it)."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, output.decode(errors="replace")


async def test_storescu_sends_a_folder_and_findscu_finds_the_study(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path
) -> None:
    await _register_node(client, community, "DR_ROOM", "centre_a")
    await _register_node(client, community, "READER", "county_hospital")
    study_uid = new_uid()
    folder = tmp_path / "study"
    small_study(folder, 12, study_uid=study_uid, patient_name="Zhou^Li=周^丽", charset="GB18030")

    code, output = await _run(
        dcmtk("storescu"), "-aet", "DR_ROOM", "-aec", "TELEMED", "--scan-directories", "--required",
        "127.0.0.1", str(settings.dicom_port), str(folder),
        env={"TCP_NODELAY": "1"},
    )  # fmt: skip
    assert code == 0, output

    ctx = app.state.ctx
    assert await count_rows(ctx) == 12
    assert await count_blobs(ctx) == 12
    async with ctx.db.read_session() as session:
        study = (await session.scalars(select(ImagingStudy).where(ImagingStudy.study_uid == study_uid))).one()
        aes = set((await session.scalars(select(ImagingInstance.calling_ae))).all())
    assert study.facility_id == community.facilities["centre_a"]
    assert study.patient_name == "Zhou^Li=周^丽"
    assert aes == {"DR_ROOM"}

    # The same folder again: every instance is already there, and storescu is told success.
    code, output = await _run(
        dcmtk("storescu"), "-aet", "DR_ROOM", "--scan-directories", "127.0.0.1", str(settings.dicom_port), str(folder)
    )
    assert code == 0, output
    assert await count_rows(ctx) == 12

    # findscu at study level, from the county reading room (whose scope covers the township).
    code, output = await _run(
        dcmtk("findscu"), "-S", "-aet", "READER", "-aec", "TELEMED", "127.0.0.1", str(settings.dicom_port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "-k", "PatientName",
        "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
    )  # fmt: skip
    assert code == 0, output
    assert study_uid in output
    assert "Zhou^Li" in output
    assert "12" in output

    # Series level, with a wildcard.
    code, output = await _run(
        dcmtk("findscu"), "-S", "-aet", "READER", "127.0.0.1", str(settings.dicom_port),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}", "-k", "Modality=C*",
        "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances",
    )  # fmt: skip
    assert code == 0, output
    assert "(0020,1209) IS [12]" in output

    # The study is in the index and the DICOMweb side sees it too.
    radiologist = await community.login(client, "rad")
    listed = (await client.get(f"/dicomweb/studies?StudyInstanceUID={study_uid}", headers=radiologist)).json()
    assert first(listed[0], "00201208") == 12

    async with ctx.db.read_session() as session:
        audited = (
            await session.scalars(
                select(AuditRecord.actor_role).where(AuditRecord.resource_type == "imaging_study").distinct()
            )
        ).all()
    assert "dicom_node" in audited


def _echo_and_store(
    port: int, ae_title: str, dataset_path: Path | None, listener: DicomListener | None = None
) -> tuple[int | None, int | None, bool]:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="TELEMED")
    if not assoc.is_established:
        return None, None, assoc.is_rejected
    try:
        # pynetdicom never sets TCP_NODELAY itself (dicom-notes §5, pitfall 4).
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echo = assoc.send_c_echo()
        if listener is not None:  # the listener's side of this association has Nagle off
            accepted = listener.accepted_sockets()
            assert accepted
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted)
        stored = assoc.send_c_store(dcmread(dataset_path)) if dataset_path else None
        return (
            int(echo.Status) if echo else None,
            int(stored.Status) if stored is not None and "Status" in stored else None,
            False,
        )
    finally:
        assoc.release()


async def test_pynetdicom_echo_store_and_a_refused_unknown_ae(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path
) -> None:
    [good] = small_study(tmp_path / "good", 1)
    listener = app.state.ctx.extras["imaging.dicom_listener"]
    echo, stored, _ = await asyncio.to_thread(_echo_and_store, settings.dicom_port, "ANYONE", good, listener)
    assert echo == 0x0000
    assert stored == 0x0000  # development and test accept unknown AEs, attributing no facility
    async with app.state.ctx.db.read_session() as session:
        study = (await session.scalars(select(ImagingStudy))).one()
    assert study.facility_id is None

    use_imaging_settings(app.state.ctx, ImagingSettings(dicom_accept_unknown=False))
    echo, stored, rejected = await asyncio.to_thread(_echo_and_store, settings.dicom_port, "STRANGER", None)
    assert (echo, rejected) == (None, True)

    await _register_node(client, community, "KNOWN", "clinic_a1")
    echo, _, _ = await asyncio.to_thread(_echo_and_store, settings.dicom_port, "KNOWN", None)
    assert echo == 0x0000


def _find(port: int, ae_title: str, study_uid: str) -> list[Dataset]:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="TELEMED")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.PatientName = ""
    found = [identifier for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND) if status and
             status.Status == 0xFF00 and identifier is not None]  # fmt: skip
    assoc.release()
    return found


async def test_a_truncated_c_store_is_refused_and_c_find_respects_the_node_scope(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings, tmp_path: Path
) -> None:
    await _register_node(client, community, "CLINIC_A1", "clinic_a1")
    await _register_node(client, community, "CLINIC_B1", "clinic_b1")
    [whole] = small_study(tmp_path / "whole", 1)
    truncated = copy_truncated(whole, tmp_path / "cut.dcm", -500)

    def send(path: Path) -> int:
        ae = AE(ae_title="CLINIC_A1")
        ae.add_requested_context(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TELEMED")
        assert assoc.is_established
        try:
            # Sent as raw bytes behind the header, so that the SCP receives exactly what the file holds.
            from pynetdicom import _config

            _config.STORE_SEND_CHUNKED_DATASET = True
            status = assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
            assoc.release()
        return int(status.Status)

    assert await asyncio.to_thread(send, truncated) == 0xC002
    assert await count_rows(app.state.ctx) == 0
    assert await count_blobs(app.state.ctx) == 0
    assert await asyncio.to_thread(send, whole) == 0x0000

    study_uid = str(dcmread(whole, stop_before_pixels=True).StudyInstanceUID)
    assert len(await asyncio.to_thread(_find, settings.dicom_port, "CLINIC_A1", study_uid)) == 1
    assert await asyncio.to_thread(_find, settings.dicom_port, "CLINIC_B1", study_uid) == []


async def test_an_accepted_associations_reactors_wait_for_work_and_let_go_when_it_ends(
    app: FastAPI, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's reactor polls become waits that end when data, a DIMSE message or a response is there; the
    instances are stored as ever, the release is answered, and when the association ends its waits and wake-up
    sockets are gone."""
    paths = small_study(tmp_path / "study", 3)
    made: list[tuple[Any, dimse._Wakeups]] = []
    waited = {"data": 0, "message": 0}
    make, wait_for_data, wait_for_message = (
        dimse._Wakeups.__init__,
        dimse._Wakeups._wait_for_data,
        dimse._Wakeups._wait_for_message,
    )

    def counting_init(self: dimse._Wakeups, assoc: Any) -> None:
        make(self, assoc)
        made.append((assoc, self))

    def counting_data(self: dimse._Wakeups) -> None:
        waited["data"] += 1
        wait_for_data(self)

    def counting_message(self: dimse._Wakeups) -> None:
        waited["message"] += 1
        wait_for_message(self)

    monkeypatch.setattr(dimse._Wakeups, "__init__", counting_init)
    monkeypatch.setattr(dimse._Wakeups, "_wait_for_data", counting_data)
    monkeypatch.setattr(dimse._Wakeups, "_wait_for_message", counting_message)

    statuses = await asyncio.to_thread(_store_all, settings.dicom_port, paths)

    assert statuses == [0x0000] * 3
    assert await count_rows(app.state.ctx) == 3
    assert waited["data"] > 0
    assert waited["message"] > 0
    [(assoc, wakeups)] = made
    for _ in range(200):  # the connection closes in the listener's threads, after the release was answered
        if assoc not in dimse._WAITS and assoc.dul not in dimse._WAITS:
            break
        await asyncio.sleep(0.02)
    assert assoc not in dimse._WAITS
    assert assoc.dul not in dimse._WAITS
    assert wakeups._reader.fileno() == -1
    assert wakeups._writer.fileno() == -1


def _store_all(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="WAKEUPS")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="TELEMED")
    assert assoc.is_established
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return [int(assoc.send_c_store(dcmread(path)).Status) for path in paths]
    finally:
        assoc.release()


def test_reactor_time_is_the_time_module_but_for_the_polls_of_accepted_associations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stand_in = dimse._ReactorTime()
    slept: list[float] = []
    waited: list[str] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    assert stand_in.monotonic is time.monotonic
    stand_in.sleep(0.001)  # not a reactor thread of an accepted association: a plain sleep
    dimse._WAITS[threading.current_thread()] = lambda: waited.append("waited")
    try:
        stand_in.sleep(0.001)  # a reactor's poll: the wait for work
        stand_in.sleep(0.0001)  # other sleeps (pausing, shutting down, aborting) stay sleeps
        stand_in.sleep(0.1)
    finally:
        del dimse._WAITS[threading.current_thread()]

    assert slept == [0.001, 0.0001, 0.1]
    assert waited == ["waited"]


async def test_an_association_moves_its_files_into_storage_and_a_move_that_fails_there_is_tried_again(
    app: FastAPI, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The association's own thread moves each received file into storage (no hand-over to the loop's pool);
    when that move fails, the file is still where pynetdicom wrote it, the loop's ingest stores it, and the
    instance is stored once, with its blob."""
    storage_type = type(app.state.ctx.storage)
    real_put = storage_type.put_file_blocking
    moved_in: list[str] = []
    failures = [OSError(errno.EIO, "simulated I/O error")]

    def watched(self: Any, key: str, source: Path, *, move: bool = False) -> None:
        moved_in.append(threading.current_thread().name)
        if failures:
            raise failures.pop()
        real_put(self, key, source, move=move)

    monkeypatch.setattr(storage_type, "put_file_blocking", watched)
    paths = small_study(tmp_path / "study", 2)

    assert await asyncio.to_thread(_store_all, settings.dicom_port, paths) == [0x0000, 0x0000]

    assert len(moved_in) == 3  # first instance: failed in the association, then stored by the loop's pool
    assert moved_in[0] == moved_in[2] != moved_in[1]
    assert await count_rows(app.state.ctx) == 2
    assert await count_blobs(app.state.ctx) == 2


async def test_an_instance_sent_again_keeps_one_blob_though_its_association_stored_the_second_copy(
    app: FastAPI, settings: Settings, tmp_path: Path
) -> None:
    """The second copy is in storage before its transaction finds the instance indexed: it is deleted then."""
    [path] = small_study(tmp_path / "study", 1)

    assert await asyncio.to_thread(_store_all, settings.dicom_port, [path, path]) == [0x0000, 0x0000]

    assert await count_rows(app.state.ctx) == 1
    assert await count_blobs(app.state.ctx) == 1
