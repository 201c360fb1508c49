"""Domain events: written to an outbox in the same transaction as the change, published after commit.

The unit of work records events; on commit they become ``outbox`` rows in the same transaction, so a change
and the news of it commit or vanish together. A relay publishes unpublished rows to the bus (in-process, or
Redis Streams when ``REDIS_URL`` is set) and marks them; a process killed between commit and publish leaves the
rows unpublished, and the relay of the next start delivers them. Delivery is at least once: handlers must be
idempotent (see :func:`first_delivery`).

Two kinds of consumer, as pynetdicom distinguishes notification from intervention events:
- *handlers* (domain reactions, storing notifications) run once per event across all workers;
- *fan-out* (live WebSocket delivery) runs in every worker, for the clients connected to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sqlalchemy import BigInteger, Integer, String, Uuid, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.aio import wait_event
from telemed.core.db import Base, Database, PortableJSON, UTCDateTime, utcnow

log = logging.getLogger(__name__)

STREAM_KEY: Final = "telemed:events"
HANDLER_GROUP: Final = "telemed-handlers"
STREAM_MAXLEN: Final = 100_000
CLAIM_TIMEOUT: Final = dt.timedelta(seconds=30)
RECLAIM_EVERY_SECONDS: Final = 30.0
RECLAIM_IDLE_MS: Final = 60_000

Envelope = dict[str, Any]
Handler = Callable[[Envelope], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A fact that happened, named in the past tense (``patient.registered``).

    The payload holds identifiers and codes only, never names, ID numbers or phone numbers: events travel
    through Redis and logs. ``audience_*`` say who is notified (users and whole facilities).
    """

    name: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    audience_users: Sequence[str] = ()
    audience_facilities: Sequence[str] = ()
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    occurred_at: dt.datetime = field(default_factory=utcnow)


class OutboxRecord(Base):
    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    audience: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    #: A relay claims rows before publishing outside any transaction; an expired claim (a relay that died
    #: mid-publish) is taken over, so at worst an event goes out twice, never not at all.
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    def envelope(self) -> Envelope:
        return {
            "id": str(self.event_id),
            "seq": self.seq,
            "name": self.name,
            "payload": self.payload,
            "audience": self.audience,
            "occurred_at": self.occurred_at.isoformat(),
        }


class ProcessedEvent(Base):
    """Which handler has already handled which event: the idempotency ledger of at-least-once delivery."""

    __tablename__ = "processed_event"

    handler: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


def to_outbox(event: DomainEvent) -> OutboxRecord:
    return OutboxRecord(
        event_id=event.id,
        name=event.name,
        payload=json.loads(json.dumps(dict(event.payload), default=str)),
        audience={"users": [str(u) for u in event.audience_users],
                  "facilities": [str(f) for f in event.audience_facilities]},
        occurred_at=event.occurred_at,
    )  # fmt: skip


async def first_delivery(session: AsyncSession, handler: str, event_id: str) -> bool:
    """Claim ``event_id`` for ``handler`` in the handler's transaction; False when it was handled already."""
    eid = uuid.UUID(event_id)
    existing = await session.get(ProcessedEvent, (handler, eid))
    if existing is not None:
        return False
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        await session.execute(
            sqlite_insert(ProcessedEvent)
            .values(handler=handler, event_id=eid, processed_at=utcnow())
            .on_conflict_do_nothing()
        )
    else:
        session.add(ProcessedEvent(handler=handler, event_id=eid, processed_at=utcnow()))
        await session.flush()
    return True


class EventBus(Protocol):
    """Transport of published events. ``publish`` returns once the event is durably handed over."""

    async def publish(self, envelope: Envelope) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Dispatcher:
    """Routes an envelope to the handlers subscribed to its name (``*`` subscribes to every event)."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[tuple[str, Handler]]] = {}
        self.fanout: list[Callable[[Envelope], Awaitable[None]]] = []

    def subscribe(self, event_name: str, handler: Handler, *, handler_name: str | None = None) -> None:
        name = handler_name or f"{handler.__module__}.{getattr(handler, '__qualname__', repr(handler))}"
        self.handlers.setdefault(event_name, []).append((name, handler))

    async def handle(self, envelope: Envelope) -> bool:
        """Run every handler; True when all succeeded (the Redis transport then acknowledges)."""
        ok = True
        for name, handler in [*self.handlers.get(envelope["name"], ()), *self.handlers.get("*", ())]:
            try:
                await handler(envelope)
            except Exception:
                ok = False
                log.exception("event handler failed", extra={"handler": name, "event": envelope["name"]})
        return ok

    async def fan_out(self, envelope: Envelope) -> None:
        for deliver in self.fanout:
            try:
                await deliver(envelope)
            except Exception:
                log.exception("event fan-out failed", extra={"event": envelope["name"]})


class InProcessBus:
    """The embedded default: one process, so handlers and fan-out run right here."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def publish(self, envelope: Envelope) -> None:
        await self.dispatcher.handle(envelope)
        await self.dispatcher.fan_out(envelope)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class RedisStreamBus:
    """Redis Streams: every worker reads the stream for fan-out; a consumer group runs each handler once."""

    def __init__(self, dispatcher: Dispatcher, redis_url: str) -> None:
        import redis.asyncio as aioredis

        self.dispatcher = dispatcher
        self.redis: Any = aioredis.from_url(redis_url)
        self._tasks: list[asyncio.Task[None]] = []
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    async def publish(self, envelope: Envelope) -> None:
        await self.redis.xadd(STREAM_KEY, {"e": json.dumps(envelope)}, maxlen=STREAM_MAXLEN, approximate=True)

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # BUSYGROUP: another worker created it first
            await self.redis.xgroup_create(STREAM_KEY, HANDLER_GROUP, id="0", mkstream=True)
        last_id = "$"
        info = await self.redis.xinfo_stream(STREAM_KEY)
        if info and info.get("last-generated-id"):
            raw = info["last-generated-id"]
            last_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._tasks = [
            asyncio.create_task(self._fan_out_loop(last_id), name="events-fanout"),
            asyncio.create_task(self._handler_loop(), name="events-handlers"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.redis.aclose()

    async def _fan_out_loop(self, last_id: str) -> None:
        while True:
            try:
                batches = await self.redis.xread({STREAM_KEY: last_id}, count=100, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the event stream failed; retrying")
                await asyncio.sleep(1)
                continue
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    await self.dispatcher.fan_out(json.loads(fields[b"e"]))

    async def _handler_loop(self) -> None:
        pending_first = "0"  # after a restart, first finish what this consumer had claimed
        next_reclaim = 0.0
        while True:
            try:
                now = asyncio.get_running_loop().time()
                if now >= next_reclaim:
                    # Entries a dead worker read but never acknowledged are taken over after a minute.
                    next_reclaim = now + RECLAIM_EVERY_SECONDS
                    reclaimed = await self.redis.xautoclaim(
                        STREAM_KEY, HANDLER_GROUP, self.consumer, min_idle_time=RECLAIM_IDLE_MS, count=100
                    )
                    await self._handle_entries(reclaimed[1] if reclaimed else [])
                batches = await self.redis.xreadgroup(
                    HANDLER_GROUP, self.consumer, {STREAM_KEY: pending_first or ">"}, count=50, block=1000
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the handler group failed; retrying")
                await asyncio.sleep(1)
                continue
            if pending_first and not any(entries for _s, entries in batches or []):
                pending_first = ""
                continue
            for _stream, entries in batches or []:
                await self._handle_entries(entries)

    async def _handle_entries(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if fields is None:  # trimmed from the stream while pending
                await self.redis.xack(STREAM_KEY, HANDLER_GROUP, entry_id)
                continue
            if await self.dispatcher.handle(json.loads(fields[b"e"])):
                await self.redis.xack(STREAM_KEY, HANDLER_GROUP, entry_id)


class OutboxRelay:
    """Publishes committed outbox rows in order and marks them published."""

    def __init__(self, db: Database, bus: EventBus, *, batch: int = 200) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def poke(self) -> None:
        self._wake.set()

    async def drain(self) -> int:
        """Publish everything unpublished; returns how many events went out."""
        total = 0
        async with self._lock:
            while True:
                rows = await self._claim()
                if not rows:
                    return total
                # Published outside any transaction: with SQLite a held write lock would block the handlers.
                for row in rows:
                    await self.bus.publish(row.envelope())
                async with self.db.session() as session, session.begin():
                    await session.execute(
                        update(OutboxRecord)
                        .where(OutboxRecord.seq.in_([r.seq for r in rows]))
                        .values(published_at=utcnow())
                    )
                total += len(rows)

    async def _claim(self) -> list[OutboxRecord]:
        now = utcnow()
        async with self.db.session() as session, session.begin():
            query = (
                select(OutboxRecord)
                .where(
                    OutboxRecord.published_at.is_(None),
                    or_(OutboxRecord.claimed_at.is_(None), OutboxRecord.claimed_at < now - CLAIM_TIMEOUT),
                )
                .order_by(OutboxRecord.seq)
                .limit(self.batch)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.scalars(query)).all())
            if rows:
                await session.execute(
                    update(OutboxRecord).where(OutboxRecord.seq.in_([r.seq for r in rows])).values(claimed_at=now)
                )
            return rows

    async def run(self, *, idle_poll_seconds: float = 2.0) -> None:
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
            await wait_event(self._wake, idle_poll_seconds)
            self._wake.clear()
