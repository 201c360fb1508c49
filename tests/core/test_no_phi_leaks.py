"""Canary patient data must never reach the logs, the outbox payloads or Redis (security notes C7)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from telemed.core.config import Settings
from telemed.core.events import OutboxRecord
from telemed.core.logging import JsonFormatter, scrub
from telemed.org.idcard import is_valid_id_number, make_id_number
from tests.conftest import TEST_REDIS_URL, Community, ServerProcess, register

CANARY_NAME = "测试患者甲乙"
CANARY_ID = make_id_number("331121", dt.date(1961, 9, 19), 919)
CANARY_PHONE = "13800138000"
_ID_SHAPED = re.compile(r"(?<!\d)\d{17}[\dX](?!\d)")


def _leaks(text: str) -> list[str]:
    found = [c for c in (CANARY_NAME, CANARY_ID, CANARY_PHONE) if c in text]
    found += [m for m in _ID_SHAPED.findall(text) if is_valid_id_number(m)]
    return found


async def _exercise(http: httpx.AsyncClient, community: Community) -> str:
    """Everything a clinician does with a patient, including the failures that tempt code to log input."""
    headers = await community.login(http, "vd_a1")
    created = await register(http, headers, CANARY_ID, name=CANARY_NAME, phone=CANARY_PHONE)
    assert created.status_code == 201, created.text
    pid = str(created.json()["id"])
    await register(http, headers, CANARY_ID, name=CANARY_NAME, phone=CANARY_PHONE)  # 409
    await register(http, headers, CANARY_ID[:-1] + "0" if CANARY_ID[-1] != "0" else CANARY_ID[:-1] + "1",
                   name=CANARY_NAME, phone=CANARY_PHONE)  # fmt: skip
    await http.get(f"/api/v1/patients/{pid}", headers=headers)
    await http.get("/api/v1/patients", headers=headers)
    for criteria in ({"name": CANARY_NAME}, {"id_number": CANARY_ID}, {"phone": CANARY_PHONE}):
        await http.post("/api/v1/patients/search", json=criteria, headers=headers)
    await http.post(f"/api/v1/patients/{pid}/identifiers", headers=headers)
    other = await community.login(http, "vd_b1")
    await http.get(f"/api/v1/patients/{pid}", headers=other)
    # Identifiers smuggled into places that end up in logs: the path and the query string.
    await http.get(f"/api/v1/patients/{CANARY_ID}", headers=headers)
    await http.get(f"/api/v1/patients?name={CANARY_NAME}&phone={CANARY_PHONE}", headers=headers)
    return pid


async def test_in_process_logs_and_outbox_hold_no_canary(
    app: FastAPI, client: httpx.AsyncClient, community: Community, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="telemed")
    await _exercise(client, community)
    formatter = JsonFormatter()
    # The test's own HTTP client logs the URLs it requests; that is the caller's log, not the server's.
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(formatter.format(record) for record in server_records)
    assert "request" in logged  # the access log did run
    assert _leaks(logged) == []
    async with app.state.ctx.db.read_session() as session:
        outbox = (await session.scalars(select(OutboxRecord))).all()
    assert outbox
    assert _leaks(repr([(o.name, o.payload, o.audience) for o in outbox])) == []


def test_scrubber_masks_identifiers_and_escapes_line_breaks() -> None:
    assert scrub(f"id {CANARY_ID} tel {CANARY_PHONE}") == "id [id-number] tel [phone]"
    assert scrub("evil\nlevel=error forged") == "evil\\x0alevel=error forged"


@pytest.mark.slow
async def test_server_process_output_and_redis_hold_no_canary(
    app: FastAPI, community: Community, settings: Settings, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    extra = {"TELEMED_REDIS_URL": TEST_REDIS_URL} if TEST_REDIS_URL else {}
    server = ServerProcess(settings, tmp_path / "server.log", TELEMED_LOG_LEVEL="DEBUG", **extra).start()
    servers.append(server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        await _exercise(http, community)
    server.stop()
    output = server.log_path.read_text(errors="replace")
    assert '"route"' in output  # the server did log its requests
    assert _leaks(output) == []
    if TEST_REDIS_URL:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(TEST_REDIS_URL)
        try:
            dump = []
            async for key in redis.scan_iter():
                kind = (await redis.type(key)).decode()
                dump.append(key.decode(errors="replace"))
                if kind == "stream":
                    dump.append(repr(await redis.xrange(key)))
                elif kind == "string":
                    dump.append(repr(await redis.get(key)))
            text = "\n".join(dump)
            assert "patient.registered" in text  # the events did travel through Redis
            assert _leaks(text) == []
        finally:
            await redis.aclose()
