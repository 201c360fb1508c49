"""Runtime ceilings for the imaging benchmark: what our stack does when the server does no work at all.

Two servers that store nothing, run on the same machine in the same run as Orthanc and ours:

* ``cstore``: a pynetdicom C-STORE SCP (the library our DICOM listener is built on, configured as ours: data
  sets received into a file, unrestricted storage, reactors that wait for work) whose handler answers Success at
  once;
* ``stow``: uvicorn (httptools, uvloop, as ``telemed serve`` runs) with a bare ASGI app that reads a POST body
  and answers 200 with a few bytes of JSON, no framework, no sign-in, no parsing, no storage.

They bound what any ingest built on these parts can reach here, so the printed figures show how much of a gap
to Orthanc is our code and how much is the runtime. Started as ``python loadtests/ceilings.py cstore PORT`` or
``... stow PORT``; bound to 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from typing import Any

LOOPBACK = "127.0.0.1"


def serve_cstore(port: int) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from imaging.dimse import ReactorWakeups

    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title="CEILING")
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def on_store(event: Any) -> int:
        return 0x0000

    handlers = [(evt.EVT_C_STORE, on_store), *ReactorWakeups().handlers()]
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


def serve_stow(port: int) -> None:
    import uvicorn

    uvicorn.run(_drain_app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="on")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("cstore", "stow"):
        print("usage: ceilings.py cstore|stow PORT", file=sys.stderr)
        return 2
    port = int(argv[2])
    serve_cstore(port) if argv[1] == "cstore" else serve_stow(port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
