"""``Database.submit_write``: hot write transactions as functions of a synchronous session.

On SQLite they run on one writer thread that commits whatever queued up meanwhile in one transaction, each in a
savepoint of its own; on PostgreSQL each is an ordinary transaction. Both must keep every caller's changes
apart: one that fails leaves nothing, the others are committed, and a caller that stops waiting can still learn
what became of its transaction. The audit trail is the table written here, as every hot path writes it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from sqlalchemy import Table, event, func, insert, make_url, select
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from telemed.core.audit import (
    AuditAction,
    AuditActor,
    AuditEntry,
    AuditHead,
    AuditRecord,
    append_audit_sync,
    verify_chain,
)
from telemed.core.db import READ_ONLY, Database, Prepared, _configure_sqlite, utcnow
from telemed.core.events import OutboxRecord
from telemed.core.uow import UnitOfWork

KEY = b"k" * 32
ACTOR = AuditActor(user_id="tester", role="system", facility_id=None)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def appending(
    resource: str, *, fail: bool = False, wait: threading.Event | None = None, key: bytes = KEY
) -> Callable[[Session], int]:
    """A transaction that chains one audit record for ``resource`` (then raises, when ``fail``)."""

    def work(session: Session) -> int:
        if wait is not None:
            assert wait.wait(timeout=30)
        lock = session.get_bind().dialect.name == "postgresql"
        entry = AuditEntry(action=AuditAction.create, resource_type="test", resource_id=resource)
        records = append_audit_sync(session, key, ACTOR, [entry], lock=lock)
        if fail:
            raise ValueError(f"{resource} fails after writing")
        return records[0].seq

    return work


async def trail(db: Database) -> list[str]:
    async with db.read_session() as session:
        report = await verify_chain(session, KEY)
        assert report.ok, report.problems
        resources = (await session.scalars(select(AuditRecord.resource_id).order_by(AuditRecord.seq))).all()
        return [resource or "" for resource in resources]


async def test_a_write_is_committed_and_gives_back_what_its_work_returned(db: Database) -> None:
    assert await db.write(appending("first")) == 1
    assert await db.write(appending("second")) == 2
    assert await trail(db) == ["first", "second"]


async def test_concurrent_writes_keep_apart_and_a_failing_one_leaves_nothing(db: Database) -> None:
    names = [f"r{n:02d}" for n in range(12)]
    futures = [db.submit_write(appending(name, fail=name == "r05")) for name in names]
    results = await asyncio.gather(*futures, return_exceptions=True)

    failed = [name for name, result in zip(names, results, strict=True) if isinstance(result, Exception)]
    assert failed == ["r05"]
    assert isinstance(results[5], ValueError)
    stored = await trail(db)  # the chain is whole: r05's record and head move were rolled back together
    assert sorted(stored) == sorted(name for name in names if name != "r05")
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 12))


async def test_a_failing_write_leaves_nothing_when_its_first_statement_is_a_prepared_one(db: Database) -> None:
    """Each transaction of a group is in its savepoint from its first statement on, a :class:`Prepared` one too
    (the study upsert of an ingest batch, before ``ScopeNeeded`` sends it back to be staged again)."""
    outbox = cast(Table, OutboxRecord.__table__)
    add = Prepared.of(insert(outbox))

    def work(name: str) -> Callable[[Session], str]:
        def run(session: Session) -> str:
            add.rows(session, {
                "event_id": uuid.uuid4(), "name": name, "payload": {}, "audience": {"facilities": []},
                "occurred_at": utcnow(), "published_at": None, "claimed_at": None,
            })  # fmt: skip
            if name == "test.fails":
                raise ValueError("fails after its first statement")
            return name

        return run

    names = ["test.a", "test.b", "test.fails", "test.c", "test.d"]
    results = await asyncio.gather(*(db.submit_write(work(name)) for name in names), return_exceptions=True)
    assert [name for name, result in zip(names, results, strict=True) if isinstance(result, Exception)] == [
        "test.fails"
    ]
    async with db.read_session() as session:
        stored = sorted((await session.scalars(select(OutboxRecord.name))).all())
    assert stored == ["test.a", "test.b", "test.c", "test.d"]


async def test_writes_that_queue_meanwhile_are_committed_together_on_sqlite(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("PostgreSQL takes concurrent writers itself: one transaction each")
    commits: list[int] = []
    writer = db._writer
    assert writer is not None
    event.listen(writer.engine, "commit", lambda connection: commits.append(1))
    gate = threading.Event()
    first = db.submit_write(appending("first", wait=gate))
    await asyncio.sleep(0.05)  # the writer has taken the first and waits on the gate
    rest = [db.submit_write(appending(f"later{n}")) for n in range(9)]
    gate.set()
    await asyncio.gather(first, *rest)

    assert len(commits) == 2  # the first alone, the nine that queued behind it in one commit
    assert len(await trail(db)) == 10


async def test_a_cancelled_caller_can_still_learn_that_its_write_was_committed(db: Database) -> None:
    # On SQLite the transaction is held on the writer thread until its caller is gone; on PostgreSQL it runs on
    # the event loop, so there it is simply not started yet when its caller goes.
    gate = threading.Event()
    future = db.submit_write(appending("late", wait=gate if db.is_sqlite else None))
    waiter = asyncio.ensure_future(asyncio.shield(future))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    assert await future == 1  # the transaction went on without its caller
    assert await trail(db) == ["late"]


async def test_dispose_finishes_the_writes_already_queued(database_url: str) -> None:
    db = Database(database_url)
    futures = [db.submit_write(appending(f"q{n}")) for n in range(5)]
    await db.dispose()
    assert sorted(await asyncio.gather(*futures)) == [1, 2, 3, 4, 5]
    reopened = Database(database_url)
    try:
        async with reopened.read_session() as session:
            assert await session.scalar(select(func.count()).select_from(AuditRecord)) == 5
    finally:
        await reopened.dispose()


async def test_a_unit_of_work_does_not_end_before_the_transaction_its_cancelled_caller_left(app: FastAPI) -> None:
    """A request cancelled (the client went away) while its ``commit_work`` transaction waits for a lock: the
    transaction commits, with the audit entry its work recorded, and the unit waits for it, not rolling back."""
    ctx = app.state.ctx
    await ctx.db.write(
        appending("seed", key=ctx.audit_key)
    )  # the trail's head row exists, so that it can be locked below
    started = asyncio.Event()

    async def request() -> None:
        async with UnitOfWork(ctx, ctx.db.session, ACTOR) as uow:

            def work(session: Session) -> int:
                uow.audit(AuditEntry(action=AuditAction.create, resource_type="test", resource_id="left"))
                return 1

            started.set()
            await uow.commit_work(work)

    async with ctx.db.session() as blocker:
        # Another writer holds the lock the transaction needs: SQLite's write lock (BEGIN IMMEDIATE), or the
        # head row on PostgreSQL.
        await blocker.execute(select(AuditHead.last_seq).where(AuditHead.id == 1).with_for_update())
        task = asyncio.ensure_future(request())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # the unit is waiting for its transaction
        await blocker.commit()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with ctx.db.read_session() as session:
        report = await verify_chain(session, ctx.audit_key)
        resources = (await session.scalars(select(AuditRecord.resource_id))).all()
    assert report.ok, report.problems
    assert resources == ["seed", "left"]


async def test_a_write_alone_that_fails_leaves_nothing_and_the_next_one_goes_on(db: Database) -> None:
    with pytest.raises(ValueError, match="alone fails"):
        await db.write(appending("alone", fail=True))
    assert await db.write(appending("after")) == 1
    assert await trail(db) == ["after"]


async def test_the_writer_keeps_its_connection_until_a_group_fails(db: Database) -> None:
    """The writer thread's connection serves group after group; a group that fails (here its BEGIN IMMEDIATE,
    the database locked by another process) lets it go, and the next group starts on a fresh one."""
    writer = db._writer
    if writer is None:
        pytest.skip("PostgreSQL: each write is an ordinary transaction, no writer thread")
    database = make_url(db.url).database
    assert database

    @event.listens_for(writer.engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=50")

    assert await db.write(appending("first")) == 1
    kept = writer._connection
    assert kept is not None
    assert await db.write(appending("second")) == 2
    assert writer._connection is kept

    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"):
            await db.write(appending("locked out"))
        assert writer._connection is None
        assert kept.closed
    finally:
        holder.close()
    assert await db.write(appending("after")) == 3
    assert writer._connection is not None
    assert writer._connection is not kept
    assert await trail(db) == ["first", "second", "after"]


async def test_work_that_raises_a_base_exception_fails_its_caller_only(db: Database) -> None:
    """SystemExit or KeyboardInterrupt raised by a transaction's work must neither stop the writer (later writes
    would wait forever) nor reach the event loop as itself (it would stop the server)."""

    def interrupted(session: Session) -> int:
        appending("interrupted")(session)
        raise KeyboardInterrupt

    with pytest.raises(RuntimeError, match="interrupted") as raised:
        await db.write(interrupted)
    assert isinstance(raised.value.__cause__, KeyboardInterrupt)
    assert await db.write(appending("later")) == 1
    assert await trail(db) == ["later"]


async def test_a_unit_of_work_drops_what_a_failed_transaction_recorded(app: FastAPI) -> None:
    """Events and audit entries recorded by the work of a transaction that failed are not committed later."""
    ctx = app.state.ctx
    async with UnitOfWork(ctx, ctx.db.session, ACTOR) as uow:
        uow.audit(AuditEntry(action=AuditAction.query, resource_type="test", resource_id="before"))

        def work(session: Session) -> int:
            uow.audit(AuditEntry(action=AuditAction.create, resource_type="test", resource_id="rolled back"))
            raise ValueError("the transaction fails")

        with pytest.raises(ValueError, match="fails"):
            await uow.commit_work(work)
        uow.audit(AuditEntry(action=AuditAction.create, resource_type="test", resource_id="instead"))
        await uow.commit()

    async with ctx.db.read_session() as session:
        resources = (await session.scalars(select(AuditRecord.resource_id).order_by(AuditRecord.seq))).all()
    assert [r for r in resources if r in ("before", "rolled back", "instead")] == ["before", "instead"]


async def test_a_unit_of_work_opens_its_own_session_only_when_it_is_used(app: FastAPI) -> None:
    """A unit whose writes all go through ``commit_work`` (image ingest) never makes a session; one that reads or
    changes models through ``uow.session`` makes one, once, and closes it at the end."""
    ctx = app.state.ctx
    made: list[AsyncSession] = []

    def sessions() -> AsyncSession:
        made.append(ctx.db.session())
        return made[-1]

    async with UnitOfWork(ctx, sessions, ACTOR) as uow:
        uow.audit(AuditEntry(action=AuditAction.create, resource_type="test", resource_id="by commit_work"))
        assert await uow.commit_work(lambda session: 7) == 7
    assert made == []

    async with UnitOfWork(ctx, sessions, ACTOR) as uow:
        assert uow.session is uow.session
        uow.audit(AuditEntry(action=AuditAction.create, resource_type="test", resource_id="by commit"))
        await uow.commit()
    assert len(made) == 1

    async with ctx.db.read_session() as session:
        resources = (await session.scalars(select(AuditRecord.resource_id).order_by(AuditRecord.seq))).all()
    assert [r for r in resources if r and r.startswith("by ")] == ["by commit_work", "by commit"]


def test_a_sqlite_transaction_that_cannot_begin_fails_as_sqlalchemys_error(tmp_path: Path) -> None:
    """``BEGIN IMMEDIATE`` runs on the driver's cursor; a database locked beyond the busy timeout still comes as
    SQLAlchemy's ``OperationalError``, and a read transaction (plain ``BEGIN``) is not held up by the lock."""
    path = tmp_path / "locked.db"
    engine = create_sync_engine(f"sqlite:///{path}")
    _configure_sqlite(engine)

    @event.listens_for(engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:  # after the 30 s of _configure_sqlite
        dbapi_connection.execute("PRAGMA busy_timeout=50")

    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (a INTEGER)")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        reader = engine.execution_options(**{READ_ONLY: True})
        with reader.begin() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
    finally:
        holder.close()
        engine.dispose()
