"""The unit of work: one transaction per request or job, and the only place that commits.

Services change models, record domain events and audit entries on it; ``commit`` writes the events to the outbox
and chains the audit entries in the same transaction, then wakes the outbox relay. Audit entries of refused
access (``outcome=denied``) are kept even when the request fails, in a transaction of their own.
"""

from __future__ import annotations

import logging
import os
import signal
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession

from telemed.core.audit import (
    CHECKPOINT_PREFIX,
    AuditActor,
    AuditEntry,
    AuditOutcome,
    AuditRecord,
    append_audit,
    checkpoint_document,
)
from telemed.core.config import Environment
from telemed.core.context import AppContext
from telemed.core.errors import ServiceUnavailable
from telemed.core.events import DomainEvent, to_outbox

log = logging.getLogger(__name__)


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"
    title_zh = "审计记录无法写入，操作已取消"
    title_en = "The audit trail could not be written; the request was not carried out"


class UnitOfWork:
    def __init__(self, ctx: AppContext, session: AsyncSession, actor: AuditActor) -> None:
        self.ctx = ctx
        self.session = session
        self.actor = actor
        self.events: list[DomainEvent] = []
        self.audit_entries: list[AuditEntry] = []
        self._committed = False

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
        records: list[AuditRecord] = []
        try:
            # The domain's own changes go first, so that their errors (a lost uniqueness race, say) surface as
            # themselves and only a failure of the audit append itself is reported as the audit failing.
            await self.session.flush()
            if entries:
                try:
                    records = await append_audit(
                        self.session, self.ctx.audit_key, self.actor, entries, lock=not self.ctx.db.is_sqlite
                    )
                except Exception as exc:
                    log.exception("audit write failed; the request is refused")
                    raise AuditUnavailable() from exc
            await self.session.commit()
        except Exception:
            await self.session.rollback()
            raise
        self._committed = True
        if events:
            if (
                self.ctx.settings.chaos_kill_after_commit
                and self.ctx.settings.environment is not Environment.production
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            self.ctx.relay.poke()
        await self._write_checkpoints(records)

    async def _write_checkpoints(self, records: list[AuditRecord]) -> None:
        every = self.ctx.settings.audit_checkpoint_every
        for record in records:
            if record.seq % every == 0:
                document = checkpoint_document(self.ctx.audit_key, record.seq, record.hash)
                try:
                    await self.ctx.storage.put(f"{CHECKPOINT_PREFIX}{record.seq:012d}.json", document)
                except Exception:
                    log.exception("audit checkpoint could not be written", extra={"seq": record.seq})

    async def rollback(self) -> None:
        await self.session.rollback()
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
        if exc_type is not None and not self._committed:
            await self.rollback()
        await self.session.close()
