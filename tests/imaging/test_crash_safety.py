"""Crash safety of ingest: kill -9 in the middle of a STOW-RS upload, restart, and check what was promised.

An instance listed as stored in a response the client received must be retrievable after the crash; an index row
without its blob must never exist; blobs left without a row by the crash are removed by ``telemed imaging repair``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from imaging.models import ImagingInstance
from imaging.multipart import build_multipart_related
from telemed.core.config import Settings
from tests.conftest import PASSWORD, Community, ServerProcess, free_port
from tests.imaging.helpers import first, sequence, small_study

pytestmark = pytest.mark.slow

REQUESTS_BEFORE_THE_CRASH = 30
PER_REQUEST = 10
LAST_REQUEST = 200  # 30 x 10 + 200 = 500 instances


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_port": free_port()})


def _token(server: ServerProcess) -> dict[str, str]:
    response = httpx.post(f"{server.url}/api/v1/auth/token", data={"username": "vd_a1", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _stow(http: httpx.Client, server: ServerProcess, headers: dict[str, str], paths: list[Path]) -> set[str]:
    """STOW ``paths``; the SOP Instance UIDs the response says are stored."""
    content_type, body = build_multipart_related(paths)
    response = http.post(
        f"{server.url}/dicomweb/studies", content=body, headers={**headers, "Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    return {first(item, "00081155") for item in sequence(response.json(), "00081199")}


def _start(settings: Settings, log: Path, servers: list[ServerProcess]) -> ServerProcess:
    server = ServerProcess(settings, log, TELEMED_DICOM_PORT=str(free_port()), TELEMED_IMAGING_BATCH_INSTANCES="50")
    servers.append(server)
    return server.start()


def _repair(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TELEMED_ENVIRONMENT": "test",
        "TELEMED_DATABASE_URL": settings.resolved_database_url,
        "TELEMED_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "telemed", "imaging", "repair", *arguments],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _crash_run(settings: Settings, servers: list[ServerProcess], tmp_path: Path) -> tuple[set[str], dict[str, Path]]:
    paths = small_study(tmp_path / "study", REQUESTS_BEFORE_THE_CRASH * PER_REQUEST + LAST_REQUEST, rows=16, cols=16)
    by_uid = {path.name: path for path in paths}
    server = _start(settings, tmp_path / "server-1.log", servers)
    headers = _token(server)
    acknowledged: set[str] = set()
    with httpx.Client(timeout=60) as http:
        for number in range(REQUESTS_BEFORE_THE_CRASH):
            acknowledged |= _stow(http, server, headers, paths[number * PER_REQUEST : (number + 1) * PER_REQUEST])
    assert len(acknowledged) == REQUESTS_BEFORE_THE_CRASH * PER_REQUEST

    # The last 200 go in one request, and the server is killed while it works on them.
    last = paths[REQUESTS_BEFORE_THE_CRASH * PER_REQUEST :]
    outcome: dict[str, object] = {}

    def send_last() -> None:
        try:
            with httpx.Client(timeout=60) as http:
                outcome["stored"] = _stow(http, server, headers, last)
        except (httpx.HTTPError, AssertionError) as error:
            outcome["error"] = error

    sender = threading.Thread(target=send_last)
    sender.start()
    time.sleep(0.25)
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.wait()
    sender.join(timeout=60)
    stored_late = outcome.get("stored")
    if isinstance(stored_late, set):  # the response made it out before the kill: those are promised too
        acknowledged |= stored_late
    return acknowledged, by_uid


async def test_kill_minus_nine_mid_stow_loses_nothing_acknowledged(
    app: FastAPI, community: Community, settings: Settings, servers: list[ServerProcess], tmp_path: Path
) -> None:
    acknowledged, _ = await asyncio.to_thread(_crash_run, settings, servers, tmp_path)
    sop_to_file = {}
    from pydicom import dcmread

    for path in (tmp_path / "study").glob("*.dcm"):
        sop_to_file[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path

    # Restart on the same database and files.
    server = await asyncio.to_thread(_start, settings, tmp_path / "server-2.log", servers)
    ctx = app.state.ctx
    async with ctx.db.read_session() as session:
        rows = (await session.execute(select(ImagingInstance.sop_instance_uid, ImagingInstance.blob_key))).all()
    indexed = {sop for sop, _ in rows}
    assert acknowledged <= indexed
    for _, key in rows:
        assert await ctx.storage.exists(key), f"index row without its blob: {key}"

    headers = await asyncio.to_thread(_token, server)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        study_uid = str(dcmread(next(iter(sop_to_file.values())), stop_before_pixels=True).StudyInstanceUID)
        series_uid = str(dcmread(next(iter(sop_to_file.values())), stop_before_pixels=True).SeriesInstanceUID)
        for sop in sorted(acknowledged):
            response = await http.get(
                f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}",
                headers={**headers, "Accept": "application/dicom"},
            )
            assert response.status_code == 200, sop
            assert response.content == sop_to_file[sop].read_bytes()

    # An orphan blob as a crash between writing a file and committing its row leaves one (an hour old).
    orphan = (
        settings.data_dir
        / "blobs"
        / "dicom"
        / study_uid
        / series_uid
        / f"1.2.3.4_{int(time.time()) - 7200}_00c0ffee.dcm"
    )
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left behind by a crash")
    report = await asyncio.to_thread(_repair, settings, "--dry-run")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "index rows without blob: 0" in report.stdout
    assert orphan.exists()

    # A fresh orphan may belong to an upload in progress: --min-age keeps it; the old one goes.
    fresh = orphan.with_name(f"1.2.3.5_{int(time.time())}_00c0ffee.dcm")
    fresh.write_bytes(b"an upload in progress")
    report = await asyncio.to_thread(_repair, settings)
    assert report.returncode == 0, report.stdout + report.stderr
    assert not orphan.exists()
    assert fresh.exists()
    report = await asyncio.to_thread(_repair, settings, "--min-age", "0")
    assert report.returncode == 0
    assert not fresh.exists()
    blobs = {
        p.relative_to(settings.data_dir / "blobs").as_posix()
        for p in (settings.data_dir / "blobs" / "dicom").rglob("*.dcm")
    }
    assert blobs == {key for _, key in rows}

    # The sender retries the whole study after the crash: everything is stored once, nothing conflicts.
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        content_type, body = build_multipart_related(sorted(sop_to_file.values()))
        retry = await http.post("/dicomweb/studies", content=body, headers={**headers, "Content-Type": content_type})
    assert retry.status_code == 200, retry.text
    async with ctx.db.read_session() as session:
        assert len((await session.scalars(select(ImagingInstance.id))).all()) == len(sop_to_file) == 500
