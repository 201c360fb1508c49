"""Runtime ceilings for the imaging benchmark: what our stack does with no work, and with only the work the
issue requires.

Two servers that store nothing, run on the same machine in the same run as Orthanc and ours:

* ``cstore``: a pynetdicom C-STORE SCP (the library our DICOM listener is built on, configured as ours: data
  sets received into a file, unrestricted storage, reactors that wait for work) whose handler answers Success at
  once;
* ``stow``: uvicorn (httptools, uvloop, as ``telemed serve`` runs) with a bare ASGI app that reads a POST body
  and answers 200 with a few bytes of JSON, no framework, no sign-in, no parsing, no storage.

They bound what any ingest built on these parts can reach here, so the printed figures show how much of a gap
to Orthanc is our code and how much is the runtime.

Two more servers, the "durable floor", do for each instance only what issue #4 requires of ingest, with nothing
else (no sign-in, audit trail, study and series index, events, framework or worker threads), inline in the one
thread that received it:

* read the header with our reader (``imaging.dicomfile.read_header``: no pixel data, the UIDs checked, names
  decoded), hash the file (SHA-256), write it under a key of its own and make it durable (fsync of the file and
  of its folder), then insert its index row with its DICOM JSON in an SQLite transaction (WAL,
  ``synchronous=FULL``, as ours) that commits before the answer;
* ``stow-floor``: uvicorn with a bare ASGI app, one transaction per request, a PS3.18 answer listing the stored
  instances; ``cstore-floor``: the pynetdicom SCP above, the file pynetdicom received moved into place, one
  transaction per C-STORE.

It is an estimate of what the mandated work costs on these parts, not a server: it trusts the multipart body it is
sent (the benchmark's own), and answers a bad file with a 400 or a failure status and nothing more. Where our
server is far below it, our own layers cost the difference; where the floor itself is below a goal, no design on
these parts reaches that goal on this machine.

Started as ``python loadtests/ceilings.py KIND PORT [DATA_DIR]`` (``DATA_DIR`` for the floors); bound to 127.0.0.1
only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imaging.dicomfile import InstanceHeader

LOOPBACK = "127.0.0.1"
KINDS = ("cstore", "stow", "cstore-floor", "stow-floor")


def serve_cstore(port: int, floor: _DurableFloor | None = None) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from imaging.dicomfile import InvalidDicom
    from imaging.dimse import ReactorWakeups

    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title="CEILING")
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def on_store(event: Any) -> int:
        if floor is None:
            return 0x0000
        try:
            floor.commit([floor.move(Path(event.dataset_path))])
        except (InvalidDicom, OSError, sqlite3.Error):
            return 0xC000  # Cannot Understand / not stored
        return 0x0000

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store), *ReactorWakeups().handlers()]
    ae.start_server((LOOPBACK, port), block=True, evt_handlers=handlers)


async def _drain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b'{"received":%d}' % received
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_stow(port: int, floor: _DurableFloor | None = None) -> None:
    import uvicorn

    app = _drain_app if floor is None else floor.stow_app
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="on", interface="asgi3")


class _DurableFloor:
    """The ingest work issue #4 requires, and nothing else (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # One connection, used by one thread at a time (the lock: pynetdicom may run associations side by side).
        self.lock = threading.Lock()
        self.db = sqlite3.connect(root / "index.db", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS instance (id INTEGER PRIMARY KEY, sop_instance_uid TEXT NOT NULL UNIQUE,"
            " study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " dataset_json TEXT NOT NULL)"
        )

    def _row(self, header: InstanceHeader, data_or_path: bytes | Path, target: Path) -> tuple[str, ...]:
        import orjson

        if isinstance(data_or_path, bytes):
            sha256 = hashlib.sha256(data_or_path).hexdigest()
        else:
            with data_or_path.open("rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        document = orjson.dumps(header.dataset_json).decode()
        uids = (header.sop_instance_uid, header.study_instance_uid, header.series_instance_uid)
        return (*uids, str(target), sha256, document)

    def _target(self, header: InstanceHeader) -> Path:
        folder = self.root / header.study_instance_uid / header.series_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{header.sop_instance_uid}.dcm"

    def write(self, data: bytes) -> tuple[str, ...]:
        """A STOW-RS part: header, hash, then the bytes written to a new file, durably."""
        from imaging.dicomfile import read_header
        from telemed.core.storage import fsync_path

        header = read_header(io.BytesIO(data), default_charset="GB18030")
        target = self._target(header)
        with target.open("wb") as file:  # a buffered write: every byte, however the kernel splits the writes
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        fsync_path(target.parent)
        return self._row(header, data, target)

    def move(self, received: Path) -> tuple[str, ...]:
        """A C-STORE data set pynetdicom wrote to a file: header, hash, then the file moved into place, durably."""
        from imaging.dicomfile import read_header
        from telemed.core.storage import fsync_path

        header = read_header(received, default_charset="GB18030")
        row = self._row(header, received, self._target(header))
        fsync_path(received)
        target = Path(row[3])
        try:
            os.replace(received, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            self.write(received.read_bytes())  # --tmpdir on another file system than pynetdicom's temp files
            received.unlink()
            return row
        fsync_path(target.parent)
        return row

    def commit(self, rows: list[tuple[str, ...]]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO instance (sop_instance_uid, study_uid, series_uid, path, sha256, dataset_json)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    rows,
                )
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    async def stow_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from imaging.dicomfile import InvalidDicom

        if scope["type"] != "http" or scope["method"] != "POST":  # lifespan, and the benchmark's readiness GET
            await _drain_app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        boundary = content_type.partition(b"boundary=")[2].split(b";")[0].strip().strip(b'"')
        rows: list[tuple[str, ...]] = []
        status = 200
        try:
            if not boundary:
                raise ValueError("no boundary")
            for part in b"".join(chunks).split(b"--" + boundary)[1:-1]:
                rows.append(self.write(part.partition(b"\r\n\r\n")[2][:-2]))
            self.commit(rows)
        except (InvalidDicom, ValueError, OSError, sqlite3.Error):
            status, rows = 400, []
        sequence = [{"00081155": {"vr": "UI", "Value": [row[0]]}} for row in rows]
        body = json.dumps({"00081199": {"vr": "SQ", "Value": sequence}}).encode()
        headers = [(b"content-type", b"application/dicom+json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[1] not in KINDS or (argv[1].endswith("-floor") != (len(argv) == 4)):
        print("usage: ceilings.py cstore|stow PORT, or cstore-floor|stow-floor PORT DATA_DIR", file=sys.stderr)
        return 2
    kind, port = argv[1], int(argv[2])
    floor = _DurableFloor(Path(argv[3])) if len(argv) == 4 else None
    serve_cstore(port, floor) if kind.startswith("cstore") else serve_stow(port, floor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
