"""The benchmark's durable floor (``loadtests/ceilings.py``): a yardstick must itself do the work it stands for.

Its figures only mean something if it really stores what it acknowledges: the bytes under their own name, the
index row, and nothing for a part it could not read.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE

from imaging.multipart import build_multipart_related
from tests.conftest import free_port
from tests.imaging.helpers import small_study

CEILINGS = Path(__file__).resolve().parents[2] / "loadtests" / "ceilings.py"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _start(kind: str, port: int, data: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # a file, not a pipe: nothing the server prints can block it
        command = [sys.executable, str(CEILINGS), kind, str(port), str(data)]
        return subprocess.Popen(command, stdout=output, stderr=output)


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture
def floor_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    port, data, log = free_port(), tmp_path / "floor", tmp_path / "floor.log"
    process = _start(request.param, port, data, log)
    try:
        _wait_for_port(process, port, log)
        yield port, data
    finally:
        process.terminate()
        process.wait(timeout=30)


def _rows(data: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data / "index.db") as db:
        return list(db.execute("SELECT sop_instance_uid, path, sha256 FROM instance ORDER BY sop_instance_uid"))


@pytest.mark.parametrize("floor_server", ["stow-floor"], indirect=True)
def test_the_stow_floor_stores_what_it_acknowledges_and_nothing_of_a_request_it_cannot_read(
    floor_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, data = floor_server
    files = small_study(tmp_path / "in", count=2)
    content_type, body = build_multipart_related(files)

    response = httpx.post(f"http://127.0.0.1:{port}/studies", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 200
    stored = {item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]}
    sent = {str(dcmread(path).SOPInstanceUID): path for path in files}
    assert stored == set(sent)
    rows = _rows(data)
    assert {uid for uid, _, _ in rows} == set(sent)
    for uid, path, _ in rows:
        assert Path(path).read_bytes() == sent[uid].read_bytes()

    content_type, bad = build_multipart_related([b"not DICOM at all", files[0]])
    refused = httpx.post(f"http://127.0.0.1:{port}/studies", content=bad, headers={"Content-Type": content_type})

    assert refused.status_code == 400
    assert refused.json()["00081199"]["Value"] == []
    assert _rows(data) == rows


@pytest.mark.parametrize("floor_server", ["cstore-floor"], indirect=True)
def test_the_cstore_floor_moves_each_data_set_into_place_and_indexes_it(
    floor_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, data = floor_server
    files = small_study(tmp_path / "in", count=2)
    ae = AE(ae_title="FLOORTEST")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="CEILING")
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(dcmread(path)).Status) for path in files]
    finally:
        assoc.release()

    assert statuses == [0, 0]
    rows = _rows(data)
    assert {uid for uid, _, _ in rows} == {str(dcmread(path).SOPInstanceUID) for path in files}
    for uid, path, _ in rows:
        assert dcmread(path).SOPInstanceUID == uid
