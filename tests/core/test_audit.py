"""The audit trail: append-only, tamper-evident (changed, removed, truncated), queryable by admins, and
fail-closed (no audit record, no patient data)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from telemed.core.audit import (
    GENESIS,
    AuditRecord,
    canonical_record,
    chain_hash,
    read_checkpoint,
    stored_checkpoints,
    verify_chain,
)
from telemed.core.config import Settings
from telemed.org.idcard import make_id_number
from tests.conftest import Community, register


@pytest.fixture(autouse=True)
async def _restore_guards(app: FastAPI) -> AsyncIterator[None]:
    """PostgreSQL keeps triggers across tests (only the rows are truncated): undo what a test tampered with."""
    yield
    if app.state.ctx.db.is_sqlite:
        return  # every SQLite test starts from a fresh copy of the migrated file
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(text("DROP TRIGGER IF EXISTS audit_event_broken ON audit_event"))
        await session.execute(text("DROP FUNCTION IF EXISTS audit_broken()"))
        await session.execute(text("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only"))


async def _make_trail(client: httpx.AsyncClient, community: Community, n: int = 4) -> list[str]:
    headers = await community.login(client, "vd_a1")
    ids = []
    for i in range(n):
        response = await register(client, headers, make_id_number("331121", dt.date(1960, 1, 1 + i), 100 + i))
        ids.append(response.json()["id"])
        await client.get(f"/api/v1/patients/{ids[-1]}", headers=headers)
    return ids


async def _verify(app: FastAPI) -> tuple[bool, int | None, list[str]]:
    ctx = app.state.ctx
    checkpoints = await stored_checkpoints(ctx.storage, ctx.audit_key)
    async with ctx.db.read_session() as session:
        report = await verify_chain(session, ctx.audit_key, checkpoints)
    return report.ok, report.first_bad_seq, report.problems


async def _drop_append_only_guard(app: FastAPI) -> None:
    """What an attacker with database superuser rights would do first."""
    async with app.state.ctx.db.session() as session, session.begin():
        if app.state.ctx.db.is_sqlite:
            await session.execute(text("DROP TRIGGER audit_event_no_update"))
            await session.execute(text("DROP TRIGGER audit_event_no_delete"))
        else:
            await session.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))


async def test_intact_trail_verifies(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    await _make_trail(client, community)
    ok, _first_bad, problems = await _verify(app)
    assert ok, problems


async def test_audit_rows_cannot_be_updated_or_deleted(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    await _make_trail(client, community, n=1)
    for statement in ("UPDATE audit_event SET outcome = 'denied'", "DELETE FROM audit_event"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with app.state.ctx.db.session() as session, session.begin():
                await session.execute(text(statement))


async def test_changed_record_is_detected(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    await _make_trail(client, community)
    await _drop_append_only_guard(app)
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(text("UPDATE audit_event SET actor_user_id = 'someone-else' WHERE seq = 3"))
    ok, first_bad, problems = await _verify(app)
    assert not ok
    assert first_bad == 3
    assert any("altered" in p for p in problems)


async def test_removed_record_is_detected(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    await _make_trail(client, community)
    await _drop_append_only_guard(app)
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    ok, first_bad, _ = await _verify(app)
    assert not ok
    assert first_bad == 2


async def test_truncated_tail_is_detected_even_with_the_head_rewritten(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    await _make_trail(client, community, n=4)  # 8+ records: a signed checkpoint exists at 5 (every 5 in tests)
    await _drop_append_only_guard(app)
    async with app.state.ctx.db.session() as session, session.begin():
        keep = (await session.scalars(select(AuditRecord).where(AuditRecord.seq == 3))).one()
        await session.execute(text("DELETE FROM audit_event WHERE seq > 3"))
        await session.execute(text("UPDATE audit_head SET last_seq = 3, last_hash = :h"), {"h": keep.hash})
    ok, _, problems = await _verify(app)
    assert not ok
    assert any("truncated" in p for p in problems)


async def test_audit_verify_command_detects_a_record_changed_in_the_database(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings
) -> None:
    await _make_trail(client, community, n=2)
    env = {**os.environ, "TELEMED_DATABASE_URL": settings.resolved_database_url,
           "TELEMED_DATA_DIR": str(settings.data_dir), "TELEMED_LOG_JSON": "false"}  # fmt: skip
    telemed = [sys.executable, "-m", "telemed"]
    intact = await asyncio.to_thread(
        subprocess.run, [*telemed, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout
    await _drop_append_only_guard(app)
    async with app.state.ctx.db.session() as session, session.begin():
        await session.execute(text("UPDATE audit_event SET purpose = 'marketing' WHERE seq = 2"))
    damaged = await asyncio.to_thread(
        subprocess.run, [*telemed, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert damaged.returncode == 1
    assert "record 2 was altered" in damaged.stderr


async def test_reads_fail_closed_when_the_audit_cannot_be_written(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    headers = await community.login(client, "vd_a1")
    pid = (await register(client, headers, make_id_number("331121", dt.date(1970, 5, 5), 321))).json()["id"]
    async with app.state.ctx.db.session() as session, session.begin():
        if app.state.ctx.db.is_sqlite:
            await session.execute(text(
                "CREATE TRIGGER audit_event_broken BEFORE INSERT ON audit_event "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            ))  # fmt: skip
        else:
            await session.execute(text(
                "CREATE FUNCTION audit_broken() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'disk full'; END $$"
            ))  # fmt: skip
            await session.execute(text(
                "CREATE TRIGGER audit_event_broken BEFORE INSERT ON audit_event "
                "FOR EACH ROW EXECUTE FUNCTION audit_broken()"
            ))  # fmt: skip
    read = await client.get(f"/api/v1/patients/{pid}", headers=headers)
    assert read.status_code == 503
    assert read.headers["content-type"] == "application/problem+json"
    assert read.json()["code"] == "audit_unavailable"
    assert "王小明" not in read.text
    assert pid not in read.text.replace(f"/api/v1/patients/{pid}", "")
    listing = await client.get("/api/v1/patients", headers=headers)
    assert listing.status_code == 503
    assert "王小明" not in listing.text


async def test_admin_queries_the_trail_by_patient(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    ids = await _make_trail(client, community, n=2)
    admin = await community.login(client, "admin")
    response = await client.get("/api/v1/audit", params={"patient_ref": ids[0]}, headers=admin)
    assert response.status_code == 200
    records = response.json()
    assert [r["action"] for r in records] == ["R", "C"]  # newest first
    assert all(r["actor_user_id"] == str(community.users["vd_a1"]) for r in records)
    assert all(r["ts"].endswith("Z") or "+00:00" in r["ts"] for r in records)
    doctor = await community.login(client, "vd_a1")
    assert (await client.get("/api/v1/audit", headers=doctor)).status_code == 403
    assert (await client.get("/api/v1/audit", headers=await community.login(client, "analyst"))).status_code == 403


def test_checkpoints_are_signed(tmp_path: Path) -> None:
    from telemed.core.audit import checkpoint_document

    doc = checkpoint_document(b"k" * 32, 10, "ab" * 32)
    assert read_checkpoint(b"k" * 32, doc) == (10, "ab" * 32)
    assert read_checkpoint(b"x" * 32, doc) is None


async def test_a_forged_checkpoint_is_refused(app: FastAPI, client: httpx.AsyncClient, community: Community) -> None:
    from telemed.core.audit import CHECKPOINT_PREFIX, BadCheckpoint, checkpoint_document

    await _make_trail(client, community, n=3)
    ctx = app.state.ctx
    assert await stored_checkpoints(ctx.storage, ctx.audit_key)  # a genuine one exists (every 5 records here)
    await ctx.storage.put(f"{CHECKPOINT_PREFIX}999999999999.json", checkpoint_document(b"not-the-key", 2, "00" * 32))
    with pytest.raises(BadCheckpoint):
        await stored_checkpoints(ctx.storage, ctx.audit_key)


def test_a_records_hash_covers_the_same_canonical_form_as_always() -> None:
    """Trails written by earlier versions must still verify: the hashed form of a record (fields, UTC time,
    Chinese text as is) is pinned here by a hash computed with the code that wrote the first trails."""
    values = {
        "seq": 7,
        "ts": dt.datetime(2026, 11, 29, 8, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "actor_user_id": "u-1",
        "actor_role": "radiologist",
        "actor_facility_id": None,
        "action": "C",
        "resource_type": "imaging_study",
        "resource_id": "1.2.3",
        "patient_ref": "张三",
        "purpose": "treatment",
        "outcome": "success",
        "source_ip": "127.0.0.1",
        "request_id": "r1",
        "detail": {"stored": 2, "reasons": ["dicom.truncated"], "名": "李四"},
    }
    pinned = "657c16e570b7211bdf3713d545aa1036c3661c41fc6f92b9df54886208514e6c"
    record = AuditRecord(**values, prev_hash=GENESIS, hash="")

    assert chain_hash(b"k" * 32, GENESIS, record.canonical()) == pinned
    assert chain_hash(b"k" * 32, GENESIS, canonical_record(values)) == pinned
