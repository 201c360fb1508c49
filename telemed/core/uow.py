"""The unit of work: one transaction per request or job, and the only place that commits.

Services change models, record domain events and audit entries on it; ``commit`` writes the events to the outbox
and chains the audit entries in the same transaction, then wakes the outbox relay. Audit entries of refused
access (``outcome=denied``) are kept even when the request fails, in a transaction of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from telemed.core.audit import (
    CHECKPOINT_PREFIX,
    Appended,
    AuditActor,
    AuditEntry,
    AuditOutcome,
    append_audit,
    append_audit_sync,
    checkpoint_document,
)
from telemed.core.config import Environment
from telemed.core.context import AppContext
from telemed.core.errors import ServiceUnavailable
from telemed.core.events import DomainEvent, to_outbox

log = logging.getLogger(__name__)

T = TypeVar("T")


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"
    title_zh = "审计记录无法写入，操作已取消"
    title_en = "The audit trail could not be written; the request was not carried out"


class UnitOfWork:
    def __init__(self, ctx: AppContext, sessions: Callable[[], AsyncSession], actor: AuditActor) -> None:
        """``sessions`` makes the unit's database session (``Database.session``), on first use: a request whose
        writes all go through :meth:`commit_work` (image ingest) never opens one."""
        self.ctx = ctx
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self.actor = actor
        self.events: list[DomainEvent] = []
        self.audit_entries: list[AuditEntry] = []
        self._committed = False
        #: A :meth:`commit_work` whose caller was cancelled: the unit does not end before it does.
        self._in_flight: asyncio.Future[Any] | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessions()
        return self._session

    @property
    def committed(self) -> bool:
        return self._committed

    def record(self, event: DomainEvent) -> None:
        self.events.append(event)

    def audit(self, entry: AuditEntry) -> None:
        self.audit_entries.append(entry)

    async def commit(self) -> None:
        events, entries = self.events, self.audit_entries
        self.events, self.audit_entries = [], []
        for event in events:
            self.session.add(to_outbox(event))
        try:
            # The domain's own changes go first, so that their errors (a lost uniqueness race, say) surface as
            # themselves and only a failure of the audit append itself is reported as the audit failing.
            await self.session.flush()
            records = await self.session.run_sync(self._chain, entries)
            await self.session.commit()
        except Exception:
            await self.session.rollback()
            raise
        await self._committed_with(events, records)

    def _chain(self, session: Session, entries: list[AuditEntry]) -> list[Appended]:
        """Chain ``entries`` onto the trail in ``session``'s transaction (after the domain's own changes, so that
        their errors surface as themselves); a failure of the append itself refuses the request."""
        if not entries:
            return []
        try:
            return append_audit_sync(session, self.ctx.audit_key, self.actor, entries, lock=not self.ctx.db.is_sqlite)
        except Exception as exc:
            log.exception("audit write failed; the request is refused")
            raise AuditUnavailable() from exc

    async def commit_work(self, work: Callable[[Session], T]) -> T:
        """Commit ``work`` (a function of a synchronous session) with this unit's events and audit entries, as
        one transaction of :meth:`Database.submit_write`: the fast path for hot writes such as image ingest.

        ``work`` may record events and audit entries on this unit; they are committed with its changes. The
        unit's own session must hold no changes (they would not be part of the transaction); a read it began is
        ended first, so that it holds no lock the writer waits for. Like ``Database.write``, the transaction goes
        on when the caller is cancelled.

        When the transaction fails, the events and audit entries ``work`` recorded are dropped with it, so that
        the caller can try again, or record what happened instead.
        """
        session = self._session
        if session is not None:
            if session.new or session.dirty or session.deleted:
                raise RuntimeError("commit_work: the unit's own session has changes; commit them with commit()")
            await session.rollback()

        def run(sync: Session) -> tuple[T, list[DomainEvent], list[Appended]]:
            result = work(sync)
            events = list(self.events)
            sync.add_all([to_outbox(event) for event in events])
            sync.flush()
            return result, events, self._chain(sync, list(self.audit_entries))

        marks = (len(self.events), len(self.audit_entries))
        finishing = asyncio.ensure_future(self._finish_work(self.ctx.db.submit_write(run), marks))
        self._in_flight = finishing
        try:
            return await asyncio.shield(finishing)
        finally:
            if finishing.done():
                self._in_flight = None  # when the caller was cancelled it stays, for __aexit__ to wait on

    async def _finish_work(
        self, transaction: asyncio.Future[tuple[T, list[DomainEvent], list[Appended]]], marks: tuple[int, int]
    ) -> T:
        """What follows a :meth:`commit_work` transaction, done once, whether or not its caller still waits."""
        try:
            result, events, records = await transaction
        except BaseException:
            del self.events[marks[0] :], self.audit_entries[marks[1] :]
            raise
        self.events, self.audit_entries = [], []
        await self._committed_with(events, records)
        return result

    async def _committed_with(self, events: list[DomainEvent], records: list[Appended]) -> None:
        self._committed = True
        if events:
            if (
                self.ctx.settings.chaos_kill_after_commit
                and self.ctx.settings.environment is not Environment.production
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            self.ctx.relay.poke()
        await self._write_checkpoints(records)

    async def _write_checkpoints(self, records: list[Appended]) -> None:
        every = self.ctx.settings.audit_checkpoint_every
        for record in records:
            if record.seq % every == 0:
                document = checkpoint_document(self.ctx.audit_key, record.seq, record.hash)
                try:
                    await self.ctx.storage.put(f"{CHECKPOINT_PREFIX}{record.seq:012d}.json", document)
                except Exception:
                    log.exception("audit checkpoint could not be written", extra={"seq": record.seq})

    async def rollback(self) -> None:
        if self._session is not None:
            await self._session.rollback()
        denied = [e for e in self.audit_entries if e.outcome is AuditOutcome.denied]
        self.events, self.audit_entries = [], []
        if denied:
            async with self.ctx.db.session() as session:
                await append_audit(session, self.ctx.audit_key, self.actor, denied, lock=not self.ctx.db.is_sqlite)
                await session.commit()

    async def __aenter__(self) -> UnitOfWork:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(in_flight)
        if exc_type is not None and not self._committed:
            await self.rollback()
        if self._session is not None:
            await self._session.close()
