"""The imaging flow on object storage: STOW-RS, QIDO-RS, WADO-RS/URI and ``telemed imaging repair`` with the blobs
in S3 (moto's server on 127.0.0.1, a real HTTP endpoint), checked side by side with files on disk.

What a sender and a viewer see must not depend on where the files are: the same stored/failed lists, the same
bytes back, frames and rendered images alike.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from imaging.models import ImagingInstance
from imaging.multipart import PartSource
from telemed.core.config import Settings
from telemed.core.s3storage import S3Storage
from telemed.core.storage import BlobStorage, FileStorage
from tests.conftest import Community, new_s3_bucket, s3_client, s3_url
from tests.imaging.dicom_factory import CT_IMAGE_STORAGE, copy_truncated, make_dataset, write
from tests.imaging.helpers import (
    count_blobs,
    count_rows,
    first,
    make_ct_slice,
    make_xray,
    new_uid,
    parse_multipart,
    sequence,
    stow,
)

DICOM_MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTET_MULTIPART = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
PREFIX = "county/dicom"
#: A multi-frame instance bigger than S3Storage's 8 MiB part: it goes up as a multipart upload.
CINE_FRAMES, CINE_SIZE = 20, 512


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    if backend == "file":
        return settings
    endpoint: str = request.getfixturevalue("moto_endpoint")
    request.getfixturevalue("aws_env")
    return settings.model_copy(update={"storage_url": s3_url(endpoint, new_s3_bucket(endpoint), PREFIX)})


@pytest.fixture
def downloads(app: FastAPI, tmp_path: Path) -> Path:
    """Where S3 puts the temporary downloads of ``local_file`` in these tests, to see that none is left."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    storage = app.state.ctx.storage
    if isinstance(storage, S3Storage):
        storage.temp_dir = folder
    return folder


def _frame(number: int, size: int) -> bytes:
    return bytes([(number * 37 + i) % 256 for i in range(256)]) * (size // 256)


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


async def _listed_keys(storage: BlobStorage) -> set[str]:
    return {key async for key in storage.list("dicom/")}


def _object_keys(storage: S3Storage) -> set[str]:
    listed = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=f"{PREFIX}/dicom/")
    return {entry["Key"].removeprefix(f"{PREFIX}/") for entry in listed.get("Contents", [])}


async def _blob_keys(app: FastAPI) -> dict[str, str]:
    async with app.state.ctx.db.read_session() as session:
        rows = (await session.execute(select(ImagingInstance.sop_instance_uid, ImagingInstance.blob_key))).all()
    return {str(sop): str(key) for sop, key in rows}


async def test_stow_qido_and_wado_give_the_same_answers_on_object_storage(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, backend: str, downloads: Path
) -> None:
    ctx = app.state.ctx
    assert isinstance(ctx.storage, S3Storage if backend == "s3" else FileStorage)
    village = await community.login(client, "vd_a1")
    study_uid, ct_series, cine_series, enc_series = new_uid(), new_uid(), new_uid(), new_uid()
    slices = [
        make_ct_slice(tmp_path / f"ct-{number}.dcm", study_uid=study_uid, series_uid=ct_series, sop_uid=new_uid(),
                      patient_name="Zhang^San=张^三", charset="GB18030", rows=32, cols=32, instance_number=number)
        for number in (1, 2, 3)
    ]  # fmt: skip
    cine = make_dataset(sop_class_uid=CT_IMAGE_STORAGE, modality="CT", study_uid=study_uid, series_uid=cine_series,
                        sop_uid=new_uid(), patient_name="Zhang^San=张^三", charset="GB18030", rows=CINE_SIZE,
                        cols=CINE_SIZE, frames=CINE_FRAMES, series_number=2)  # fmt: skip
    frame_bytes = CINE_SIZE * CINE_SIZE * 2
    cine.PixelData = b"".join(_frame(n, frame_bytes) for n in range(CINE_FRAMES))
    cine_path = write(cine, tmp_path / "cine.dcm")
    assert cine_path.stat().st_size > 8 * 1024 * 1024
    encapsulated = write(
        make_dataset(sop_class_uid=CT_IMAGE_STORAGE, modality="CT", study_uid=study_uid, series_uid=enc_series,
                     sop_uid=new_uid(), patient_name="Zhang^San=张^三", charset="GB18030", rows=16, cols=16,
                     frames=2, series_number=3, transfer_syntax="1.2.840.10008.1.2.4.70"),
        tmp_path / "encapsulated.dcm",
    )  # fmt: skip
    whole = make_ct_slice(tmp_path / "whole.dcm", study_uid=study_uid, series_uid=ct_series, sop_uid=new_uid(),
                          patient_name="Zhang^San", charset=None, rows=32, cols=32)  # fmt: skip
    truncated = copy_truncated(whole, tmp_path / "truncated.dcm", -700)
    missing_uid = make_ct_slice(tmp_path / "missing.dcm", study_uid=study_uid, series_uid=ct_series,
                                sop_uid=new_uid(), patient_name="Zhang^San", charset=None, rows=32, cols=32,
                                omit=["SOPInstanceUID"])  # fmt: skip
    good = [*slices, cine_path, encapsulated]

    response = await stow(
        client,
        village,
        [
            slices[0],
            b"this is not a DICOM file, it is a note from the village clinic" * 10,
            truncated,
            slices[1],
            missing_uid,
            PartSource(b'{"not": "dicom"}', {"Content-Type": "application/json"}),
            slices[2],
            cine_path,
            encapsulated,
        ],
    )

    # The sender's view: the good ones stored, each bad one refused with its reason.
    assert response.status_code == 202, response.text
    body = response.json()
    assert {first(item, "00081155") for item in sequence(body, "00081199")} == {_sop(p) for p in good}
    assert [first(item, "00000902") for item in sequence(body, "00081198")] == [
        "dicom.not_dicom",
        "dicom.truncated",
        "dicom.missing_uid",
        "imaging.part_not_dicom",
    ]
    assert await count_rows(ctx) == 5
    assert await count_blobs(ctx) == 5
    keys = await _blob_keys(app)
    assert await _listed_keys(ctx.storage) == set(keys.values())
    if isinstance(ctx.storage, S3Storage):  # in the bucket, under the URL's prefix, and nowhere on disk
        assert _object_keys(ctx.storage) == set(keys.values())
        assert not (ctx.settings.data_dir / "blobs").exists()
    assert not [p for p in (ctx.settings.data_dir / "spool").rglob("*") if p.is_file()]

    # QIDO-RS finds them.
    radiologist = await community.login(client, "rad")
    studies = (await client.get("/dicomweb/studies?PatientName=zhang*", headers=radiologist)).json()
    assert [first(s, "0020000D") for s in studies] == [study_uid]
    assert first(studies[0], "00201208") == 5
    instances = (await client.get(f"/dicomweb/studies/{study_uid}/instances", headers=radiologist)).json()
    assert {first(i, "00080018") for i in instances} == {_sop(p) for p in good}

    # Nothing below reads a whole blob into memory: instances stream from storage, files come as files.
    storage = ctx.storage

    def no_whole_blob(key: str) -> Any:
        raise AssertionError("retrieval must stream or use a file, not hold a whole blob in memory")

    storage.get = no_whole_blob  # an instance attribute over the method, deleted again below
    try:
        # WADO-RS gives back the very bytes that were sent: the study, a series, an instance (multipart and bare).
        study = await client.get(f"/dicomweb/studies/{study_uid}", headers={**radiologist, "Accept": DICOM_MULTIPART})
        assert study.status_code == 200
        assert sorted(data for _, data in parse_multipart(study)) == sorted(p.read_bytes() for p in good)
        series = await client.get(f"/dicomweb/studies/{study_uid}/series/{ct_series}", headers=radiologist)
        assert [data for _, data in parse_multipart(series)] == [p.read_bytes() for p in slices]
        cine_url = f"/dicomweb/studies/{study_uid}/series/{cine_series}/instances/{_sop(cine_path)}"
        bare = await client.get(cine_url, headers={**radiologist, "Accept": "application/dicom"})
        assert bare.status_code == 200
        assert bare.headers["content-length"] == str(cine_path.stat().st_size)
        assert bare.headers["content-type"].startswith("application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
        assert bare.content == cine_path.read_bytes()
        [(part_headers, data)] = parse_multipart(await client.get(cine_url, headers=radiologist))
        assert data == cine_path.read_bytes()
        assert part_headers["content-location"].endswith(cine_url)

        # Frames: the first request reads the layout from the file; later ones read just the frames, by byte range.
        first_frame = await client.get(f"{cine_url}/frames/2", headers={**radiologist, "Accept": OCTET_MULTIPART})
        assert [data for _, data in parse_multipart(first_frame)] == [_frame(1, frame_bytes)]

        def no_whole_file(key: str) -> Any:
            raise AssertionError("a frame of a known layout must not fetch the whole instance")

        storage.local_file = no_whole_file  # an instance attribute over the method, deleted again below
        try:
            several = await client.get(f"{cine_url}/frames/20,1", headers={**radiologist, "Accept": OCTET_MULTIPART})
            assert [data for _, data in parse_multipart(several)] == [_frame(19, frame_bytes), _frame(0, frame_bytes)]
            assert (await client.get(f"{cine_url}/frames/21", headers=radiologist)).status_code == 404
        finally:
            del storage.local_file
        enc_url = f"/dicomweb/studies/{study_uid}/series/{enc_series}/instances/{_sop(encapsulated)}"
        enc_frame = await client.get(f"{enc_url}/frames/2", headers={**radiologist, "Accept": OCTET_MULTIPART})
        [(part_headers, data)] = parse_multipart(enc_frame)
        assert part_headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.70"
        assert len(data) >= 16 * 16 * 2

        # Bulk data, rendered images, thumbnails and WADO-URI work from the file of the instance.
        slice_url = f"/dicomweb/studies/{study_uid}/series/{ct_series}/instances/{_sop(slices[0])}"
        bulk = await client.get(f"{slice_url}/bulkdata/7FE00010", headers={**radiologist, "Accept": OCTET_MULTIPART})
        [(_, pixels)] = parse_multipart(bulk)
        assert pixels == pydicom.dcmread(slices[0]).PixelData
        png = await client.get(f"{slice_url}/rendered?viewport=16,16", headers={**radiologist, "Accept": "image/png"})
        assert png.status_code == 200
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
        cine_jpeg = await client.get(f"{cine_url}/rendered", headers={**radiologist, "Accept": "image/jpeg"})
        assert cine_jpeg.status_code == 200
        assert cine_jpeg.content[:2] == b"\xff\xd8"
        thumbnail = await client.get(f"{slice_url}/thumbnail", headers=radiologist)
        assert thumbnail.content[:2] == b"\xff\xd8"
        query = f"requestType=WADO&studyUID={study_uid}&seriesUID={ct_series}&objectUID={_sop(slices[1])}"
        dicom = await client.get(f"/wado?{query}&contentType=application/dicom", headers=radiologist)
        assert dicom.content == slices[1].read_bytes()
        jpeg = await client.get(f"/wado?{query}", headers=radiologist)
        assert jpeg.headers["content-type"] == "image/jpeg"
        assert jpeg.content[:2] == b"\xff\xd8"
    finally:
        del storage.get
    assert os.listdir(downloads) == []  # every temporary download was removed


async def test_a_blob_gone_from_storage_is_a_503_everywhere(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path, downloads: Path
) -> None:
    village = await community.login(client, "vd_a1")
    study_uid, series_uid = new_uid(), new_uid()
    dx = make_xray(tmp_path / "dx.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=new_uid(),
                   patient_name="Li^Si", charset=None, rows=64, cols=64)  # fmt: skip
    assert (await stow(client, village, [dx])).status_code == 200
    [key] = (await _blob_keys(app)).values()
    await app.state.ctx.storage.delete(key)
    radiologist = await community.login(client, "rad")
    base = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{_sop(dx)}"

    for url, accept in [
        (base, "application/dicom"),
        (base, DICOM_MULTIPART),
        (f"/dicomweb/studies/{study_uid}", DICOM_MULTIPART),
        (f"{base}/frames/1", OCTET_MULTIPART),
        (f"{base}/rendered", "image/jpeg"),
        (f"{base}/bulkdata/7FE00010", OCTET_MULTIPART),
        (f"/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={_sop(dx)}", "*/*"),
    ]:
        response = await client.get(url, headers={**radiologist, "Accept": accept})
        assert response.status_code == 503, (url, response.status_code)
        assert response.json()["code"] == "imaging.blob_missing"
    assert os.listdir(downloads) == []


def _repair(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,  # with the AWS_* credentials of the aws_env fixture
        "TELEMED_ENVIRONMENT": "test",
        "TELEMED_DATABASE_URL": settings.resolved_database_url,
        "TELEMED_DATA_DIR": str(settings.data_dir),
        "TELEMED_STORAGE_URL": settings.resolved_storage_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "telemed", "imaging", "repair", *arguments],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["s3"])
async def test_repair_removes_orphans_from_the_bucket_and_keeps_what_the_index_names(
    app: FastAPI,
    client: httpx.AsyncClient,
    community: Community,
    settings: Settings,
    tmp_path: Path,
    moto_endpoint: str,
) -> None:
    storage = app.state.ctx.storage
    assert isinstance(storage, S3Storage)
    village = await community.login(client, "vd_a1")
    study_uid, series_uid = new_uid(), new_uid()
    slices = [
        make_ct_slice(tmp_path / f"ct-{number}.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=new_uid(),
                      patient_name="Wang^Wu", charset=None, rows=16, cols=16, instance_number=number)
        for number in (1, 2, 3)
    ]  # fmt: skip
    assert (await stow(client, village, slices)).status_code == 200
    referenced = set((await _blob_keys(app)).values())

    # Left by a crash between the blob and its index row: an old one, and one that may be an upload in progress.
    orphan = f"dicom/{study_uid}/{series_uid}/1.2.3.4_{int(time.time()) - 7200}_00c0ffee.dcm"
    fresh = f"dicom/{study_uid}/{series_uid}/1.2.3.5_{int(time.time())}_00c0ffee.dcm"
    raw = s3_client(moto_endpoint)
    for key in (orphan, fresh):
        raw.put_object(Bucket=storage.bucket, Key=f"{PREFIX}/{key}", Body=b"left behind by a crash")
    assert _object_keys(storage) == referenced | {orphan, fresh}

    report = await asyncio.to_thread(_repair, settings, "--dry-run")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "orphan blobs: 1 (would remove 1, 1 too recent to judge)" in report.stdout
    assert _object_keys(storage) == referenced | {orphan, fresh}

    report = await asyncio.to_thread(_repair, settings)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "index rows: 3; blobs: 5;" in report.stdout
    assert "index rows without blob: 0" in report.stdout
    assert _object_keys(storage) == referenced | {fresh}

    report = await asyncio.to_thread(_repair, settings, "--min-age", "0")
    assert report.returncode == 0, report.stdout + report.stderr
    assert _object_keys(storage) == referenced

    # What the index names is intact and still served byte for byte.
    radiologist = await community.login(client, "rad")
    study = await client.get(f"/dicomweb/studies/{study_uid}", headers={**radiologist, "Accept": DICOM_MULTIPART})
    assert sorted(data for _, data in parse_multipart(study)) == sorted(p.read_bytes() for p in slices)

    # A row whose blob has gone from the bucket is reported, and the exit status says so.
    lost = sorted(referenced)[0]
    raw.delete_object(Bucket=storage.bucket, Key=f"{PREFIX}/{lost}")
    report = await asyncio.to_thread(_repair, settings)
    assert report.returncode == 1
    assert "index rows without blob: 1" in report.stdout
    assert f"MISSING {lost}" in report.stderr
