"""STOW-RS (PS3.18 §10.5): what a sender sees, what is stored, and what never is."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from imaging import ingest, service
from imaging.errors import FailureReason
from imaging.models import ImagingInstance, ImagingStudy
from imaging.multipart import PartSource
from telemed.core.audit import AuditHead, AuditRecord
from telemed.core.config import Settings
from telemed.core.plugins import HotRoute
from tests.conftest import Community, free_port
from tests.imaging.dicom_factory import copy_truncated, set_element_length
from tests.imaging.helpers import count_blobs, count_rows, first, make_ct_slice, new_uid, sequence, small_study, stow

FAILED = "00081198"
REFERENCED = "00081199"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_port": free_port()})


def failures(body: dict[str, object]) -> dict[str | None, int]:
    """Failed items as {SOP Instance UID (None when unknown): Failure Reason}."""
    return {first(item, "00081155"): first(item, "00081197") for item in sequence(body, FAILED)}  # type: ignore[arg-type]


def spool_files(ctx: Any) -> list[Path]:
    """What is left in the spool folders (a request cleans up after itself)."""
    return [p for p in (ctx.settings.data_dir / "spool").rglob("*") if p.is_file()]


async def cancel_when_reached(request: asyncio.Future[Any], reached: threading.Event, release: threading.Event) -> None:
    """The client goes away once a worker thread has reached ``reached``; then that thread is let go on."""
    await asyncio.to_thread(reached.wait, 30)
    request.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await request


async def until_spool_empty(ctx: Any, *, also: Callable[[], bool] = lambda: True) -> None:
    """Wait (at most 10 s) for the clean-up that outlives a cancelled request."""
    for _ in range(200):
        if also() and not spool_files(ctx):
            return
        await asyncio.sleep(0.05)


async def test_stow_stores_a_study_that_qido_and_wado_then_serve(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path / "study", 3, patient_name="Wang^Xiaoming=王^小明")

    response = await stow(client, headers, paths)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert len(sequence(body, REFERENCED)) == 3
    assert FAILED not in body
    study_url = first(body, "00081190")
    assert study_url.startswith("http://testserver/dicomweb/studies/")

    radiologist = await community.login(client, "rad")
    studies = (await client.get("/dicomweb/studies", headers=radiologist)).json()
    assert len(studies) == 1
    study = studies[0]
    assert first(study, "00100010") == {"Alphabetic": "Wang^Xiaoming", "Ideographic": "王^小明"}
    assert first(study, "00201208") == 3
    assert first(study, "00080061") == "CT"

    instance_url = first(sequence(body, REFERENCED)[0], "00081190")
    retrieved = await client.get(instance_url, headers={**radiologist, "Accept": "application/dicom"})
    assert retrieved.status_code == 200
    assert retrieved.content == paths[0].read_bytes()
    assert await count_rows(app.state.ctx) == 3
    assert await count_blobs(app.state.ctx) == 3


async def test_bad_parts_are_refused_one_by_one_and_the_good_ones_stored(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    study_uid, series_uid = new_uid(), new_uid()

    def slice_(name: str, sop_uid: str | None = None, **options: object) -> Path:
        return make_ct_slice(
            tmp_path / name, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid or new_uid(),
            patient_name="Li^Hua", charset=None, rows=32, cols=32, **options,  # type: ignore[arg-type]
        )  # fmt: skip

    good_first, good_last = slice_("good1.dcm"), slice_("good2.dcm")
    truncated = copy_truncated(slice_("whole.dcm"), tmp_path / "truncated.dcm", -700)
    missing_uid = slice_("missing.dcm", omit=["SOPInstanceUID"])
    path_uid = slice_("path.dcm", sop_uid="1.2.3/../../../etc/passwd")
    far_length = slice_("far.dcm")
    set_element_length(far_length, 0x00400275, 0x7FFF0000)  # Request Attributes Sequence: 2 GB in a 3 kB file
    short_part = PartSource(slice_("short.dcm").read_bytes(), {"Content-Length": "999999"})

    response = await stow(
        client,
        headers,
        [
            good_first,
            b"this is not a DICOM file, it is a note from the village clinic" * 10,
            truncated,
            missing_uid,
            path_uid,
            far_length,
            short_part,
            PartSource(b'{"not": "dicom"}', {"Content-Type": "application/json"}),
            good_last,
        ],
    )

    assert response.status_code == 202, response.text
    body = response.json()
    stored = {first(item, "00081155") for item in sequence(body, REFERENCED)}
    assert stored == {_sop_uid(good_first), _sop_uid(good_last)}
    items = sequence(body, FAILED)
    assert len(items) == 7
    comments = [first(item, "00000902") for item in items]
    assert comments == [
        "dicom.not_dicom",
        "dicom.truncated",
        "dicom.missing_uid",
        "dicom.invalid_uid",
        "dicom.length_beyond_file",
        "multipart.content_length_mismatch",
        "imaging.part_not_dicom",
    ]
    reasons = [first(item, "00081197") for item in items]
    assert reasons[:5] == [
        FailureReason.cannot_understand,
        FailureReason.truncated,
        FailureReason.missing_uid,
        FailureReason.invalid_uid,
        FailureReason.length_beyond_file,
    ]
    assert all(0xC000 <= reason <= 0xCFFF for reason in reasons)  # PS3.18 Table I.2-2 "Cannot understand"

    # Nothing of the bad parts was kept: two rows, two blobs, no spool files left behind.
    ctx = app.state.ctx
    assert await count_rows(ctx) == 2
    assert await count_blobs(ctx) == 2
    assert not spool_files(ctx)
    radiologist = await community.login(client, "rad")
    listed = (await client.get(f"/dicomweb/studies/{study_uid}/instances", headers=radiologist)).json()
    assert {first(item, "00080018") for item in listed} == stored


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


async def test_a_wrong_content_type_is_415_and_stores_nothing(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    data = small_study(tmp_path, 1)[0].read_bytes()

    for content_type in ("application/dicom", "application/json", 'multipart/related; type="application/dicom+json"'):
        response = await client.post(
            "/dicomweb/studies", content=data, headers={**headers, "Content-Type": content_type}
        )
        assert response.status_code == 415, (content_type, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "imaging.unsupported_media_type"
    assert await count_rows(app.state.ctx) == 0
    assert await count_blobs(app.state.ctx) == 0


async def test_a_body_without_its_boundary_is_400(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    headers = await community.login(client, "vd_a1")
    response = await client.post(
        "/dicomweb/studies",
        content=b"no parts here",
        headers={**headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz'},
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_same_bytes_again_succeed_and_other_bytes_under_the_same_uid_conflict(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    study_uid, series_uid, sop_uid = new_uid(), new_uid(), new_uid()
    original = make_ct_slice(tmp_path / "a.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                             patient_name="Zhao^Yun", charset=None, rows=32, cols=32)  # fmt: skip
    changed = make_ct_slice(tmp_path / "b.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                            patient_name="Zhao^Yun", charset=None, rows=32, cols=32,
                            study_description="CT CHEST (edited)")  # fmt: skip

    assert (await stow(client, headers, [original])).status_code == 200
    again = await stow(client, headers, [original])
    assert again.status_code == 200, again.text
    assert len(sequence(again.json(), REFERENCED)) == 1

    conflict = await stow(client, headers, [changed])
    assert conflict.status_code == 409, conflict.text
    assert failures(conflict.json()) == {sop_uid: FailureReason.duplicate_sop_instance}

    # The same UID twice in one request, different bytes: the first is stored, the second refused.
    other_uid = new_uid()
    one = make_ct_slice(tmp_path / "c.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=other_uid,
                        patient_name="Zhao^Yun", charset=None, rows=32, cols=32)  # fmt: skip
    two = make_ct_slice(tmp_path / "d.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=other_uid,
                        patient_name="Zhao^Yun", charset=None, rows=32, cols=32, instance_number=9)  # fmt: skip
    mixed = await stow(client, headers, [one, two])
    assert mixed.status_code == 202
    assert failures(mixed.json()) == {other_uid: FailureReason.duplicate_sop_instance}

    radiologist = await community.login(client, "rad")
    kept = await client.get(
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
        headers={**radiologist, "Accept": "application/dicom"},
    )
    assert kept.content == original.read_bytes()
    assert await count_rows(app.state.ctx) == 2
    assert await count_blobs(app.state.ctx) == 2
    # The copies that were not stored left no spool file behind.
    assert not spool_files(app.state.ctx)


async def test_stow_into_a_study_refuses_instances_of_another_study(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path, 1)
    response = await stow(client, headers, paths, study_uid=new_uid())
    assert response.status_code == 409
    assert list(failures(response.json()).values()) == [FailureReason.study_mismatch]


async def test_stow_is_a_hot_route_that_signs_in_as_every_endpoint_does(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    """STOW-RS is matched before every router and resolves no FastAPI dependency; it refuses what
    ``CurrentPrincipal`` refuses, is counted in the request metrics under its route, and stays documented."""
    assert [(route.path, route.methods) for route in app.router.routes[:2] if isinstance(route, HotRoute)] == [
        ("/dicomweb/studies", {"POST"}),
        ("/dicomweb/studies/{study_uid}", {"POST"}),
    ]
    paths = small_study(tmp_path, 1)
    for headers in ({"Authorization": "Basic dmRfYTE6cGFzc3dvcmQ="}, {"Authorization": "Bearer forged"}):
        refused = await stow(client, headers, paths)
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.headers["www-authenticate"] == "Bearer"
    assert await count_rows(app.state.ctx) == 0
    user = await community.login(client, "vd_a1")
    stored = await stow(client, user, paths)
    assert stored.status_code == 200
    study_uid = first(sequence(stored.json(), REFERENCED)[0], "00081190").split("/studies/")[1].split("/")[0]
    again = await stow(client, user, paths, study_uid=study_uid)  # the same bytes again: a success
    assert again.status_code == 200

    metrics = (await client.get("/metrics")).text
    assert 'telemed_http_requests_total{method="POST",route="/dicomweb/studies",status="200"}' in metrics
    assert 'route="/dicomweb/studies/{study_uid}",status="200"' in metrics
    assert 'route="/dicomweb/studies",status="401"' in metrics
    documented = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study_uid}"):
        assert documented[path]["post"]["security"] == [{"OAuth2PasswordBearer": []}]


async def test_who_may_store_and_read(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    paths = small_study(tmp_path, 2)
    assert (await stow(client, {}, paths)).status_code == 401
    for role_user in ("analyst", "admin"):
        refused = await stow(client, await community.login(client, role_user), paths)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")
    response = await stow(client, await community.login(client, "vd_a1"), paths)
    assert response.status_code == 200
    study_uid = first(sequence(response.json(), REFERENCED)[0], "00081190").split("/studies/")[1].split("/")[0]

    # The county radiologist and the township of the sending clinic see it; another township does not.
    for username, visible in (("rad", True), ("td_a", True), ("vd_a1", True), ("vd_b1", False), ("td_b", False)):
        user = await community.login(client, username)
        listed = (await client.get("/dicomweb/studies", headers=user)).json()
        assert [first(s, "0020000D") for s in listed] == ([study_uid] if visible else []), username
        metadata = await client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=user)
        assert metadata.status_code == (200 if visible else 404), username
    for username in ("analyst", "admin"):
        user = await community.login(client, username)
        assert (await client.get("/dicomweb/studies", headers=user)).status_code == 403
        assert (await client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=user)).status_code == 403
    assert (await client.get("/dicomweb/studies")).status_code == 401

    # A clinic outside the study's scope cannot add instances to it either.
    other = small_study(tmp_path / "other", 1, study_uid=study_uid)
    sneaky = await stow(client, await community.login(client, "vd_b1"), other)
    assert sneaky.status_code == 409
    assert list(failures(sneaky.json()).values()) == [FailureReason.not_authorized]


async def test_every_stow_qido_and_wado_is_audited_with_the_study_uid(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path, 1)
    body = (await stow(client, headers, paths)).json()
    instance_url = first(sequence(body, REFERENCED)[0], "00081190")
    study_uid = instance_url.split("/studies/")[1].split("/")[0]
    await client.get("/dicomweb/studies", headers=headers)
    await client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=headers)
    await client.get(instance_url, headers=headers)
    outsider = await community.login(client, "vd_b1")
    await client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=outsider)

    async with app.state.ctx.db.read_session() as session:
        records = (
            await session.scalars(
                select(AuditRecord).where(AuditRecord.resource_type == "imaging_study").order_by(AuditRecord.seq)
            )
        ).all()
    summary = [(r.action, r.resource_id, r.outcome) for r in records]
    assert summary == [
        ("C", study_uid, "success"),
        ("Q", None, "success"),
        ("R", study_uid, "success"),
        ("R", study_uid, "success"),
        ("R", study_uid, "denied"),
    ]
    assert study_uid in records[1].detail["study_uids"]
    # No patient name in any audit record.
    assert all("Zhang" not in json.dumps(r.detail) for r in records)


async def test_names_in_chinese_character_sets_are_decoded(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    cases = [("GB18030", "GB18030", "张^三丰"), (None, "GB18030", "李^四"), ("ISO 2022 IR 58", None, "王^五"),
             ("ISO_IR 192", None, "赵^六")]  # fmt: skip
    paths = [
        make_ct_slice(
            tmp_path / f"{number}.dcm",
            study_uid=new_uid(),
            series_uid=new_uid(),
            sop_uid=new_uid(),
            patient_name=name,
            charset=charset,
            text_encoding=encoding,
            rows=16,
            cols=16,
        )
        for number, (charset, encoding, name) in enumerate(cases)
    ]
    response = await stow(client, headers, paths)
    assert response.status_code == 200, response.text
    async with app.state.ctx.db.read_session() as session:
        names = set((await session.scalars(select(ImagingStudy.patient_name))).all())
    assert names == {name for _, _, name in cases}
    listed = (await client.get("/dicomweb/studies?PatientName=张*", headers=headers)).json()
    assert [first(s, "00100010") for s in listed] == [{"Alphabetic": "张^三丰"}]


async def test_many_instances_in_one_request_are_stored_in_batches(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    from imaging.config import ImagingSettings, use_imaging_settings

    use_imaging_settings(app.state.ctx, ImagingSettings(imaging_batch_instances=7))
    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path, 30, rows=16, cols=16)
    response = await stow(client, headers, paths)
    assert response.status_code == 200
    assert len(sequence(response.json(), REFERENCED)) == 30
    async with app.state.ctx.db.read_session() as session:
        assert len((await session.scalars(select(ImagingInstance.id))).all()) == 30


async def test_concurrent_senders_are_committed_together_and_lose_nothing(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    """Nine STOW-RS requests at once into one study (on SQLite the writer thread commits them in groups): every
    instance is stored once, and the one UID sent twice with other bytes is refused once."""
    import asyncio

    headers = await community.login(client, "vd_a1")
    study_uid, series_uid = new_uid(), new_uid()
    paths = small_study(tmp_path / "many", 8, study_uid=study_uid, series_uid=series_uid)
    clash = make_ct_slice(
        tmp_path / "clash.dcm",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=_sop_uid(paths[0]),
        patient_name="Li^Si=李^四",
        charset="GB18030",
        rows=64,
        cols=64,
    )

    responses = await asyncio.gather(*(stow(client, headers, [path]) for path in [*paths, clash]))

    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 8
    assert statuses.count(409) == 1  # the later of the two bytes under one UID; the first is kept
    assert await count_rows(app.state.ctx) == 8
    assert await count_blobs(app.state.ctx) == 8


async def test_a_blob_that_cannot_be_written_fails_its_batch_and_indexes_nothing(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full: nothing of the batch is indexed or kept, the sender is told 'out of resources', the audit trail
    says so, and the same request succeeds once there is space again."""
    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path / "study", 3)
    ctx = app.state.ctx
    storage_type = type(ctx.storage)
    move = storage_type._move_durably
    doomed = _sop_uid(paths[1])

    def failing_move(self: object, key: str, source: Path) -> None:
        if doomed in key:
            raise OSError(28, "No space left on device")
        move(self, key, source)

    monkeypatch.setattr(storage_type, "_move_durably", failing_move)
    response = await stow(client, headers, paths)

    assert response.status_code == 409, response.text
    assert set(failures(response.json()).values()) == {FailureReason.out_of_resources}
    assert await count_rows(ctx) == 0
    assert await count_blobs(ctx) == 0
    assert not spool_files(ctx)
    async with ctx.db.read_session() as session:
        records = (await session.scalars(select(AuditRecord).where(AuditRecord.resource_type == "imaging_study"))).all()
    assert [(r.action, r.outcome, r.detail["stored"], r.detail["reasons"]) for r in records] == [
        ("C", "failed", 0, ["imaging.storage_failed"])
    ]

    monkeypatch.setattr(storage_type, "_move_durably", move)
    again = await stow(client, headers, paths)  # the space is back: the same request now succeeds
    assert again.status_code == 200, again.text
    assert await count_rows(ctx) == 3
    assert await count_blobs(ctx) == 3


async def test_a_sender_that_goes_away_while_a_part_is_read_leaves_no_spool_file(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small part is checked, hashed and written to the spool in one worker-thread call; when the client
    disconnects during that call, the file it writes is removed once it returns, and nothing is stored."""
    headers = await community.login(client, "vd_a1")
    ctx = app.state.ctx
    reached, release = threading.Event(), threading.Event()
    written: list[Path] = []
    receive = service.receive_bytes

    def slow_receive(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert release.wait(timeout=30)
        item = receive(*args, **kwargs)
        written.append(item.path)
        return item

    monkeypatch.setattr(service, "receive_bytes", slow_receive)
    request = asyncio.ensure_future(stow(client, headers, small_study(tmp_path / "study", 2)))
    await cancel_when_reached(request, reached, release)
    await until_spool_empty(ctx, also=lambda: bool(written))

    assert len(written) == 1
    assert not spool_files(ctx)
    assert await count_rows(ctx) == 0
    assert await count_blobs(ctx) == 0


async def test_a_spool_that_cannot_be_written_refuses_the_part_as_out_of_resources(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full before a part reaches storage: that part is refused 'out of resources', the others are stored."""
    from imaging import multipart

    headers = await community.login(client, "vd_a1")
    paths = small_study(tmp_path / "study", 3)
    doomed = paths[1].read_bytes()
    write_all = multipart._write_all

    def full_disk(descriptor: int, data: bytes) -> None:
        if data == doomed:
            raise OSError(28, "No space left on device")
        write_all(descriptor, data)

    monkeypatch.setattr(multipart, "_write_all", full_disk)
    response = await stow(client, headers, paths)

    assert response.status_code == 202, response.text
    assert list(failures(response.json()).values()) == [FailureReason.out_of_resources]
    assert await count_rows(app.state.ctx) == 2
    assert await count_blobs(app.state.ctx) == 2
    assert not spool_files(app.state.ctx)


async def test_a_spooled_part_whose_read_fails_after_the_sender_went_away_leaves_no_file_and_no_lost_error(
    app: FastAPI, client: httpx.AsyncClient, community: Community, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part larger than a spool block is read from its file; when the client has gone by the time that read
    fails, the file is removed and the failure is not reported as an unretrieved task exception."""
    from imaging.dicomfile import DicomProblem, InvalidDicom

    headers = await community.login(client, "vd_a1")
    ctx = app.state.ctx
    reached, release = threading.Event(), threading.Event()

    def failing_read(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert release.wait(timeout=30)
        raise InvalidDicom(DicomProblem.not_dicom, "not DICOM", "不是 DICOM")

    monkeypatch.setattr(service, "read_received", failing_read)
    lost: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: lost.append(context))
    try:
        request = asyncio.ensure_future(stow(client, headers, [b"x" * (2 * 1024 * 1024)]))
        await cancel_when_reached(request, reached, release)
        await until_spool_empty(ctx)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)

    assert not spool_files(ctx)
    assert lost == []


@pytest.mark.parametrize("cancelled_while", ["writing blobs", "committing"])
async def test_a_sender_that_goes_away_leaves_rows_and_blobs_that_agree(
    app: FastAPI,
    client: httpx.AsyncClient,
    community: Community,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancelled_while: str,
) -> None:
    """The client disconnects mid-request: while the blobs are being written (nothing is indexed, and the blobs
    are removed once written), or while the transaction is held up (it commits, and keeps its blobs). Either way
    no row lacks its blob and no blob is left without its row."""
    headers = await community.login(client, "vd_a1")
    assert (await stow(client, headers, small_study(tmp_path / "seed", 1))).status_code == 200
    paths = small_study(tmp_path / "study", 2)
    ctx = app.state.ctx
    reached, release = threading.Event(), threading.Event()
    moved: list[str] = []
    if cancelled_while == "writing blobs":
        storage_type = type(ctx.storage)
        move = storage_type._move_durably

        def slow_move(self: object, key: str, source: Path) -> None:
            reached.set()
            assert release.wait(timeout=30)
            try:
                move(self, key, source)
            finally:
                moved.append(key)  # moved, or failed: the request may have removed its spool file meanwhile

        monkeypatch.setattr(storage_type, "_move_durably", slow_move)
    elif ctx.db.is_sqlite:
        stage_rows = ingest._stage_rows

        def slow_stage(*args: Any) -> Any:  # on the writer thread
            reached.set()
            assert release.wait(timeout=30)
            return stage_rows(*args)

        monkeypatch.setattr(ingest, "_stage_rows", slow_stage)
    async with contextlib.AsyncExitStack() as stack:
        if cancelled_while == "committing" and not ctx.db.is_sqlite:
            # The audit head row, which the transaction locks, is held by another one.
            blocker = await stack.enter_async_context(ctx.db.session())
            await blocker.execute(select(AuditHead.last_seq).where(AuditHead.id == 1).with_for_update())
            reached.set()
        request = asyncio.ensure_future(stow(client, headers, paths))
        await asyncio.to_thread(reached.wait, 30)
        await asyncio.sleep(0.2)
        request.cancel()
        release.set()
        if cancelled_while == "committing" and not ctx.db.is_sqlite:
            await blocker.commit()
        with pytest.raises(asyncio.CancelledError):
            await request  # a transaction under way is waited for: the unit of work ends after it
    for _ in range(200):  # the writes and the clean-up run on after the request is gone
        if not ingest._SETTLING and (cancelled_while == "committing" or len(moved) == 2):
            break
        await asyncio.sleep(0.05)

    expected = 1 + (2 if cancelled_while == "committing" else 0)
    assert await count_rows(ctx) == expected
    assert await count_blobs(ctx) == expected
