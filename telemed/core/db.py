"""Database engine, portable column types and the declarative base.

SQLite is the embedded default: WAL so readers never block the writer, foreign keys on, a busy timeout, and
``BEGIN IMMEDIATE`` for write transactions so two writers queue instead of failing on a lock upgrade.
PostgreSQL (asyncpg) is the production backend. Both go through the same models and migrations.

Hot write paths (image ingest) hand their transaction to :meth:`Database.submit_write` as a plain function of a
synchronous session. On SQLite it runs on one writer thread of the process, through the synchronous driver:
each statement costs a few microseconds there instead of several thread hops through aiosqlite, and the
transactions that arrive while one commits are committed together, each inside a savepoint of its own (group
commit: one WAL sync for many senders; a transaction alone needs no savepoint). On PostgreSQL the same function
runs in an ordinary asynchronous session (``run_sync``), one transaction each, since the server takes concurrent
writers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

from sqlalchemy import JSON, DateTime, Engine, MetaData, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.schema import ColumnDefault
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

READ_ONLY: Final = "telemed_read_only"

log = logging.getLogger(__name__)

T = TypeVar("T")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every backend; naive values are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: store aware UTC times")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite keeps no offset; we only ever wrote UTC
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


#: JSON that is JSONB on PostgreSQL.
PortableJSON = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: Bind parameter names in the order the DBAPI takes them (positional paramstyles), with their processors and,
    #: for a value written into the statement itself (``.where(c.id == 1)``), that value.
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]
    #: The names of ``binds``, in their order.
    names: tuple[str, ...]
    positional: bool
    #: Python-side column defaults SQLAlchemy would fill in for the columns not given.
    defaults: tuple[tuple[str, Callable[[], Any]], ...]
    #: Result processors of the columns returned (RETURNING or SELECT); None when nothing is returned.
    results: tuple[Callable[[Any], Any] | None, ...] | None


#: Marks a bind parameter whose value comes with each call.
_GIVEN: Final = object()


def _default_maker(default: ColumnDefault) -> Callable[[], Any]:
    value = default.arg
    if default.is_scalar:
        return lambda: value
    return lambda: value(None)  # SQLAlchemy wraps a default's function to take the execution context


class Prepared:
    """A Core statement run straight on the DBAPI cursor of a session's connection, compiled once per dialect and
    set of parameter names.

    For the few statements that every ingested instance runs: ``Connection.execute`` spends several times what
    the database does on one row (about 90 µs against 12 µs per statement on SQLite here; seven statements per
    instance). The SQL is SQLAlchemy's own, compiled for the connection's dialect, and values pass through the
    column types' own bind and result processors, so what is stored and read back is what ``Connection.execute``
    would store and read. One parameter set per call; Python-side column defaults are filled in as SQLAlchemy
    does; no expanding (``IN``) parameters. Database errors come as SQLAlchemy's (``IntegrityError`` ...).

    ``build`` makes the statement for a dialect (the ``ON CONFLICT`` constructs differ between them).
    """

    def __init__(self, build: Callable[[Dialect], ClauseElement]) -> None:
        self._build = build
        self._statements: dict[str, ClauseElement] = {}
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}

    @classmethod
    def of(cls, statement: ClauseElement) -> Prepared:
        """The same statement on every dialect."""
        return cls(lambda _dialect: statement)

    def many(self, session: Session, parameter_sets: Sequence[Mapping[str, Any]]) -> Sequence[Sequence[Any]]:
        """:meth:`rows` for one parameter set; several go through ``Connection.execute`` as one executemany batch
        (insertmanyvalues for an INSERT) of the same statement, which SQLAlchemy's compiled cache keeps: there its
        per-execution cost is shared by every row."""
        if len(parameter_sets) == 1:
            return self.rows(session, parameter_sets[0])
        connection = session.connection()
        statement = cast(Executable, self._statement(connection.dialect))  # INSERT, UPDATE or SELECT: executable
        result = connection.execute(statement, list(parameter_sets))
        return result.all() if result.returns_rows else []

    def rows(self, session: Session, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement in ``session``'s transaction; the rows it returns (RETURNING or SELECT), processed."""
        connection = session.connection()
        dialect = connection.dialect
        key = (dialect.name, frozenset(parameters))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(dialect, sorted(parameters))
        values = dict(parameters)
        for name, default in compiled.defaults:
            values[name] = default()
        ordered: list[Any] = []
        for name, process, constant in compiled.binds:
            value = values[name] if constant is _GIVEN else constant
            ordered.append(value if process is None else process(value))
        arguments: Any = tuple(ordered) if compiled.positional else dict(zip(compiled.names, ordered, strict=True))
        fetched = _on_driver(connection, compiled.sql, arguments, fetch=compiled.results is not None)
        if not compiled.results or not any(compiled.results):
            return [tuple(row) for row in fetched]
        processors = compiled.results
        return [
            tuple(value if process is None else process(value) for process, value in zip(processors, row, strict=True))
            for row in fetched
        ]

    def _statement(self, dialect: Dialect) -> ClauseElement:
        statement = self._statements.get(dialect.name)
        if statement is None:
            statement = self._statements[dialect.name] = self._build(dialect)
        return statement

    def _compile(self, dialect: Dialect, names: list[str]) -> _Compiled:
        statement = self._statement(dialect)
        compiled = statement.compile(dialect=dialect, column_keys=names)
        assert isinstance(compiled, SQLCompiler)
        if compiled.update_prefetch or any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("Prepared: onupdate defaults and expanding parameters are not supported")
        defaults: list[tuple[str, Callable[[], Any]]] = []
        names = [*names, *(column.key for column in compiled.insert_prefetch)]
        for column in compiled.insert_prefetch:
            default = column.default
            if not isinstance(default, ColumnDefault) or not (default.is_scalar or default.is_callable):
                raise ValueError(f"Prepared: give a value for {column.key} (its default is not Python-side)")
            defaults.append((column.key, _default_maker(default)))
        order = compiled.positiontup if dialect.positional else list(compiled.binds)
        assert order is not None
        given = set(names)
        binds = tuple(
            (
                name,
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
                _GIVEN if name in given else compiled.binds[name].effective_value,
            )
            for name in order
        )
        returned: list[ColumnElement[Any]] = list(getattr(statement, "exported_columns", ()))
        results = None
        if returned:
            results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in returned)
        names_in_order = tuple(name for name, _, _ in binds)
        return _Compiled(compiled.string, binds, names_in_order, dialect.positional, tuple(defaults), results)


def _on_driver(connection: Connection, sql: str, arguments: Any, *, fetch: bool) -> list[Any]:
    """Execute ``sql`` on a DBAPI cursor of ``connection``: the rows (when ``fetch``); a database error comes as
    SQLAlchemy's (``IntegrityError``, ``OperationalError`` ...), as ``Connection.execute`` would raise it."""
    dbapi_error = connection.dialect.loaded_dbapi.Error
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, arguments)
        return list(cursor.fetchall()) if fetch else []
    except dbapi_error as error:
        raise DBAPIError.instance(sql, arguments, error, dbapi_error) from error
    finally:
        cursor.close()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # On the driver's own cursor: every transaction starts here, and exec_driver_sql costs several times
        # what SQLite does for it. A failure (the database locked beyond busy_timeout) comes as SQLAlchemy's.
        statement = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        _on_driver(conn, statement, (), fetch=False)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """The engine and the session factories of one process."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo)
        self.is_sqlite = url.startswith("sqlite")
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.read_sessions = async_sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False, autoflush=False
        )
        self._writer: _SqliteWriter | None = None
        self._writing: set[asyncio.Future[Any]] = set()  # write transactions in flight (not on the writer)
        database = make_url(url).database
        if self.is_sqlite and database and database != ":memory:" and not database.startswith("file:"):
            self._writer = _SqliteWriter(url, echo=echo)

    def submit_write(self, work: Callable[[Session], T]) -> asyncio.Future[T]:
        """Run ``work(session)`` in a write transaction and commit it; the future gives what ``work`` returned.

        The transaction goes on when the caller stops waiting (await it through :func:`asyncio.shield`), so a
        caller that is cancelled can still learn whether its rows were committed. ``work`` must not touch the
        event loop: on SQLite it runs on the writer thread. An exception from ``work`` rolls back its changes
        only and is raised to its caller (as a ``RuntimeError`` when it is not an ``Exception``, such as
        ``KeyboardInterrupt``); a failed commit is raised to every transaction of the group.
        """
        if self._writer is not None:
            return self._writer.submit(work)
        task = asyncio.ensure_future(self._write_async(work))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        return task

    async def write(self, work: Callable[[Session], T]) -> T:
        """:meth:`submit_write` and wait for it."""
        return await asyncio.shield(self.submit_write(work))

    async def _write_async(self, work: Callable[[Session], T]) -> T:
        def guarded(session: Session) -> T:
            try:
                return work(session)
            except Exception:
                raise
            except BaseException as error:
                raise _ordinary(error) from error

        async with self.sessions() as session, session.begin():
            return await session.run_sync(guarded)

    def session(self) -> AsyncSession:
        return self.sessions()

    def read_session(self) -> AsyncSession:
        return self.read_sessions()

    async def dispose(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self._writing:
            await asyncio.wait(set(self._writing))
        await self.engine.dispose()


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Session], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


def _ordinary(error: BaseException) -> Exception:
    """SystemExit, KeyboardInterrupt and the like raised in a write transaction: on the event loop they would stop
    the whole process, so its caller gets an ordinary error that names them instead."""
    if isinstance(error, Exception):
        return error
    wrapped = RuntimeError(f"the write transaction was interrupted: {error!r}")
    wrapped.__cause__ = error
    return wrapped


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(_ordinary(error))
    else:
        future.set_result(value)


class _SqliteWriter:
    """The thread that runs this process's :meth:`Database.submit_write` transactions on SQLite.

    SQLite admits one writer at a time anyway; one thread that commits whatever has queued up meanwhile turns
    N waiting senders into one ``BEGIN IMMEDIATE`` and one WAL sync instead of N of each.

    The thread keeps its connection from one group to the next: taking one from the pool and giving it back (with
    its reset) for every group cost about a sixth of the Python work of an ingest transaction. A group that fails
    closes it, so that the next one starts on a fresh connection whatever state the failure left.
    """

    #: Transactions committed together at most; more wait for the next commit.
    GROUP: Final = 64

    def __init__(self, url: str, *, echo: bool) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        # check_same_thread off: connections are made and used on the writer thread, but closed by dispose().
        self.engine = create_sync_engine(sync_url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(self.engine)
        self._sessions = sessionmaker(expire_on_commit=False, autoflush=False)
        #: The writer thread's connection, kept between groups (only that thread uses it; ``close`` closes it).
        self._connection: Connection | None = None
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, work: Callable[[Session], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
                self._thread.start()
        self._jobs.put(_Job(work, loop, future))
        return future

    def close(self) -> None:
        """Finish what is queued, stop the thread and close its connections (blocking)."""
        with self._start:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
        self._let_go()
        self.engine.dispose()

    def _let_go(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: the pool's disposal drops it anyway
                connection.close()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            group = [job]
            stop = False
            while len(group) < self.GROUP:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Job[Any]]) -> None:
        # Each transaction in a savepoint of its own, so that one that fails is rolled back alone; a transaction
        # alone in the group needs none (two statements fewer on every quiet-time write): its failure rolls back
        # the whole, which is just itself.
        alone = len(group) == 1
        results: list[tuple[Any, BaseException | None]] = []
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            # Bound to a connection outside any transaction, the session begins (BEGIN IMMEDIATE), commits or
            # rolls back its own transaction and leaves the connection open.
            with self._sessions(bind=self._connection) as session, session.begin():
                for job in group:
                    try:
                        with contextlib.nullcontext() if alone else session.begin_nested():
                            results.append((job.work(session), None))
                    except BaseException as failure:  # raised to its caller; the thread carries on
                        if alone:
                            raise
                        results.append((None, failure))
        except BaseException as failure:
            if results or not alone:  # BEGIN or COMMIT failed: nothing of the group was stored
                log.exception("a group of write transactions could not be committed")
            results = [(None, failure)] * len(group)
            self._let_go()
        for job, (value, error) in zip(group, results, strict=True):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                job.loop.call_soon_threadsafe(_settle, job.future, value, error)
