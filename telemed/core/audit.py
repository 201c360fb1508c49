"""The audit trail of patient data: who did what to which record, when, on what basis, and with what outcome.

Append-only and tamper-evident (MLPS 2.0 level 3, 8.1.4.3; PIPL Art. 55–57). Each record stores
``hash_i = HMAC-SM3(k, hash_{i-1} ‖ canonical_json(record_i))`` and sequence numbers have no gaps, so a changed
record breaks its own hash, a removed one breaks the sequence, and a truncated tail disagrees with the chain head
and with the signed checkpoints written to blob storage. Audit records are appended in the same transaction as
the access they describe: if the audit write fails, the access fails (fail closed).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, cast

from sqlalchemy import BigInteger, Integer, String, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

from telemed.core.db import Base, PortableJSON, Prepared, UTCDateTime, utcnow
from telemed.core.storage import BlobStorage

GENESIS: Final = "0" * 64
CHECKPOINT_PREFIX: Final = "audit/checkpoints/"


class AuditAction(StrEnum):
    create = "C"
    read = "R"
    update = "U"
    delete = "D"
    query = "Q"
    execute = "E"


class AuditOutcome(StrEnum):
    success = "success"
    denied = "denied"
    failed = "failed"


class AuditRecord(Base):
    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    actor_user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    actor_role: Mapped[str | None] = mapped_column(String(32))
    actor_facility_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(1))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    #: The patient's record id (a pseudonymous UUID), never a name or ID number.
    patient_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    def canonical(self) -> bytes:
        return canonical_record({name: getattr(self, name) for name in _HASHED_FIELDS})


class AuditHead(Base):
    """The newest link of the chain: a truncated tail no longer matches it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    last_hash: Mapped[str] = mapped_column(String(64))


#: The fields of a record its hash covers: all but the links themselves (``prev_hash`` and ``hash``).
_HASHED_FIELDS: Final = (
    "seq", "ts", "actor_user_id", "actor_role", "actor_facility_id", "action", "resource_type", "resource_id",
    "patient_ref", "purpose", "outcome", "source_ip", "request_id", "detail",
)  # fmt: skip


def canonical_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def canonical_record(values: Mapping[str, Any]) -> bytes:
    """What a record's hash covers: its fields (``_HASHED_FIELDS``) as canonical JSON, the time in UTC."""
    fields = {name: values[name] for name in _HASHED_FIELDS}
    fields["ts"] = fields["ts"].astimezone(dt.UTC).isoformat()
    return canonical_json(fields)


def chain_hash(key: bytes, prev_hash: str, body: bytes) -> str:
    return hmac.new(key, prev_hash.encode() + body, "sm3").hexdigest()


@dataclass(frozen=True, slots=True)
class AuditActor:
    user_id: str | None
    role: str | None
    facility_id: str | None
    source_ip: str | None = None
    request_id: str | None = None


SYSTEM_ACTOR: Final = AuditActor(user_id=None, role="system", facility_id=None)


@dataclass(frozen=True, slots=True)
class Appended:
    """A record chained onto the trail: its sequence number and its hash (what checkpoints sign)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: AuditAction
    resource_type: str
    resource_id: str | None
    outcome: AuditOutcome = AuditOutcome.success
    patient_ref: str | None = None
    purpose: str = "treatment"
    detail: dict[str, Any] = field(default_factory=dict)


async def append_audit(
    session: AsyncSession, key: bytes, actor: AuditActor, entries: list[AuditEntry], *, lock: bool
) -> list[Appended]:
    """Chain ``entries`` onto the trail inside the caller's transaction; ``lock`` (PostgreSQL, where writers run
    side by side) takes the head row lock. SQLite has one writer at a time and needs none."""
    return await session.run_sync(append_audit_sync, key, actor, entries, lock=lock)


def append_audit_sync(
    session: Session, key: bytes, actor: AuditActor, entries: list[AuditEntry], *, lock: bool
) -> list[Appended]:
    """:func:`append_audit` for a synchronous session (the database's writer thread, see ``Database.write``).

    Core statements run straight on the driver (:class:`Prepared`), not the ORM's flush, and records are built as
    plain rows, not ``AuditRecord`` objects (whose instrumented attributes cost a fifth of an ingest
    transaction): the trail grows on every write of every request, so its three statements (read the head,
    insert the records, move the head) are kept as cheap as they can be.
    """
    heads = (_PREPARED_HEAD_FOR_UPDATE if lock else _PREPARED_HEAD).rows(session, {})
    head = heads[0] if heads else None
    if head is None and lock:
        # The first records ever: concurrent writers would all find no head to lock and all write record 1.
        # Make the head (the first one wins), then lock it like any other time.
        session.execute(_FIRST_HEAD)
        head = session.execute(_HEAD_FOR_UPDATE).one()
    last_seq, last_hash = (head[0], head[1]) if head is not None else (0, GENESIS)
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for entry in entries:
        row: dict[str, Any] = {
            "seq": last_seq + 1,
            "ts": now,
            "actor_user_id": actor.user_id,
            "actor_role": actor.role,
            "actor_facility_id": actor.facility_id,
            "action": entry.action.value,
            "resource_type": entry.resource_type,
            "resource_id": entry.resource_id,
            "patient_ref": entry.patient_ref,
            "purpose": entry.purpose,
            "outcome": entry.outcome.value,
            "source_ip": actor.source_ip,
            "request_id": actor.request_id,
            "detail": entry.detail,
            "prev_hash": last_hash,
        }
        row["hash"] = chain_hash(key, last_hash, canonical_record(row))
        last_seq, last_hash = row["seq"], row["hash"]
        rows.append(row)
    if not rows:
        return []
    _PREPARED_INSERT_RECORDS.many(session, rows)
    moved = {"last_seq": last_seq, "last_hash": last_hash}
    if head is not None:
        _PREPARED_MOVE_HEAD.rows(session, moved)
    else:
        session.execute(_NEW_HEAD, moved)
    return [Appended(row["seq"], row["hash"]) for row in rows]


_RECORD_TABLE: Final = cast(Table, AuditRecord.__table__)
_HEAD_TABLE: Final = cast(Table, AuditHead.__table__)
_HEAD: Final = select(_HEAD_TABLE.c.last_seq, _HEAD_TABLE.c.last_hash).where(_HEAD_TABLE.c.id == 1)
_HEAD_FOR_UPDATE: Final = _HEAD.with_for_update()
_INSERT_RECORDS: Final = insert(_RECORD_TABLE)
_MOVE_HEAD: Final = (
    update(_HEAD_TABLE)
    .where(_HEAD_TABLE.c.id == 1)
    .values(last_seq=bindparam("last_seq"), last_hash=bindparam("last_hash"))
)
_NEW_HEAD: Final = insert(_HEAD_TABLE).values(id=1)
# The statements of every write, straight on the driver (see Prepared): a request's audit costs a third as much.
_PREPARED_HEAD: Final = Prepared.of(_HEAD)
_PREPARED_HEAD_FOR_UPDATE: Final = Prepared.of(_HEAD_FOR_UPDATE)
_PREPARED_INSERT_RECORDS: Final = Prepared.of(_INSERT_RECORDS)
_PREPARED_MOVE_HEAD: Final = Prepared.of(_MOVE_HEAD)
_FIRST_HEAD: Final = postgresql.insert(_HEAD_TABLE).values(id=1, last_seq=0, last_hash=GENESIS).on_conflict_do_nothing()


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, seq: int | None, message: str) -> None:
        if self.first_bad_seq is None and seq is not None:
            self.first_bad_seq = seq
        self.problems.append(message)


def checkpoint_document(key: bytes, seq: int, hash_: str) -> bytes:
    signature = hmac.new(key, f"checkpoint|{seq}|{hash_}".encode(), "sm3").hexdigest()
    return canonical_json({"seq": seq, "hash": hash_, "signature": signature})


def read_checkpoint(key: bytes, raw: bytes) -> tuple[int, str] | None:
    data = json.loads(raw)
    seq, hash_ = int(data["seq"]), str(data["hash"])
    expected = json.loads(checkpoint_document(key, seq, hash_))["signature"]
    if not hmac.compare_digest(expected, str(data.get("signature", ""))):
        return None
    return seq, hash_


class BadCheckpoint(ValueError):
    """A stored checkpoint whose signature does not verify: the export itself was tampered with."""


async def stored_checkpoints(storage: BlobStorage, key: bytes) -> list[tuple[int, str]]:
    """The signed chain heads exported to blob storage, as ``(seq, hash)``; raises on a forged one."""
    found = []
    async for blob_key in storage.list(CHECKPOINT_PREFIX):
        parsed = read_checkpoint(key, await storage.get(blob_key))
        if parsed is None:
            raise BadCheckpoint(blob_key)
        found.append(parsed)
    return found


async def verify_chain(
    session: AsyncSession, key: bytes, checkpoints: list[tuple[int, str]] | None = None
) -> VerifyReport:
    """Recompute the whole chain; report changed, removed and truncated records (first bad sequence number)."""
    report = VerifyReport()
    expected_prev = GENESIS
    expected_seq = 1
    hashes: dict[int, str] = {}
    result = await session.stream_scalars(select(AuditRecord).order_by(AuditRecord.seq))
    async for record in result:
        report.checked += 1
        if record.seq != expected_seq:
            report.fail(expected_seq, f"records {expected_seq}..{record.seq - 1} are missing")
        if record.prev_hash != expected_prev:
            report.fail(record.seq, f"record {record.seq} does not link to its predecessor")
        if not hmac.compare_digest(chain_hash(key, record.prev_hash, record.canonical()), record.hash):
            report.fail(record.seq, f"record {record.seq} was altered")
        hashes[record.seq] = record.hash
        expected_prev, expected_seq = record.hash, record.seq + 1
    last_seq = expected_seq - 1
    head = (await session.scalars(select(AuditHead).where(AuditHead.id == 1))).one_or_none()
    if head is not None and (head.last_seq != last_seq or head.last_hash != expected_prev):
        report.fail(last_seq + 1, f"the chain head says {head.last_seq} records, the table ends at {last_seq}")
    for seq, hash_ in checkpoints or []:
        if seq > last_seq:
            report.fail(last_seq + 1, f"checkpoint {seq} is past the end of the trail ({last_seq}): truncated")
        elif hashes.get(seq) != hash_:
            report.fail(seq, f"record {seq} differs from its signed checkpoint")
    return report
