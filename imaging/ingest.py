"""Storing received DICOM files, for STOW-RS and C-STORE alike.

The order of work is what makes ingest crash-safe (PS3.18 §10.5 and PS3.4 B.2.3 leave durability to us):

1. read the header (no pixel data) and hash the file: a bad file is refused before anything is stored (a small
   STOW-RS part is read from memory and written to the spool only once it passed: :func:`receive_bytes`);
2. move each file into blob storage durably (fsync, rename, fsync of the new directory; a copy where the spool
   and the blobs are on different volumes, an upload for S3) under a key of its own, so a 2 GB upload is written
   once, not twice;
3. insert the index rows in one transaction, which commits before anything is acknowledged (on SQLite the
   database's writer thread commits the transactions of concurrent senders together: ``Database.submit_write``).
   The unique constraint on the SOP Instance UID decides what was stored before (``ON CONFLICT``): the same
   bytes again are a success and the second blob is deleted, other bytes under a stored UID are refused and the
   original is kept.

A crash between 2 and 3 leaves a blob that no row names: harmless, and ``telemed imaging repair`` removes it. An
index row without its blob cannot happen, because the row is only written once the blob is durable. Blob keys
carry the time they were written, so that repair leaves alone the blobs of uploads still in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from sqlalchemy.orm import Session

from imaging import repository
from imaging.dicomfile import BULK_DATA_URI_PREFIX, DicomProblem, InstanceHeader, InvalidDicom, read_header
from imaging.errors import FailureReason
from imaging.multipart import write_spool_file
from telemed.core.audit import AuditAction, AuditEntry, AuditOutcome
from telemed.core.storage import BlobStorage
from telemed.core.uow import UnitOfWork

log = logging.getLogger(__name__)

BLOB_PREFIX: Final = "dicom/"
RESOURCE_TYPE: Final = "imaging_study"

#: How the stored DICOM JSON names bulk data: relative to the DICOMweb root, made absolute when served.
STORED_BULK_PREFIX: Final = '"BulkDataURI":"studies/'

_FAILURE_BY_PROBLEM: Final = {
    DicomProblem.not_dicom: FailureReason.cannot_understand,
    DicomProblem.malformed: FailureReason.malformed,
    DicomProblem.truncated: FailureReason.truncated,
    DicomProblem.length_beyond_file: FailureReason.length_beyond_file,
    DicomProblem.missing_uid: FailureReason.missing_uid,
    DicomProblem.invalid_uid: FailureReason.invalid_uid,
}


@dataclass(slots=True)
class Sender:
    """Who sent the files: the facility they are attributed to and, for STOW-RS, the sender's facility scope."""

    source: str  # "stow" or "dimse"
    facility_id: uuid.UUID | None
    calling_ae: str | None = None
    #: When given, instances may only be added to studies sent from facilities in the scope it returns (STOW-RS
    #: users). It is called only for a study another facility sent first, which is rare: most requests never pay.
    scope_loader: Callable[[], Awaitable[frozenset[uuid.UUID]]] | None = None
    _scope: frozenset[uuid.UUID] | None = None

    def may_add_to(self, study_facility: uuid.UUID | None) -> bool:
        """Raises :class:`ScopeNeeded` when the scope has to be read first (:meth:`load_scope`)."""
        if self.scope_loader is None or study_facility == self.facility_id:
            return True
        if self._scope is None:
            raise ScopeNeeded()
        return study_facility in self._scope

    async def load_scope(self) -> None:
        if self.scope_loader is not None and self._scope is None:
            self._scope = await self.scope_loader()


@dataclass(frozen=True, slots=True)
class Received:
    """A received file whose header has been read; ``path`` is the caller's (spool or temporary) file."""

    index: int
    path: Path
    header: InstanceHeader
    sha256: str
    size: int
    #: The DICOM JSON the index keeps (:func:`stored_document`), made with the header, outside the transaction.
    document: str
    #: The blob key the file was already stored under, durably (:func:`store_blob_now`); None: not yet stored.
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one received part or C-STORE request."""

    index: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    failure: FailureReason | None = None
    #: A stable reason code (``dicom.truncated``, ``imaging.duplicate_sop_instance`` ...) for failures.
    reason_code: str | None = None
    #: English explanation without patient data, for logs and the DIMSE Error Comment.
    message_en: str | None = None
    #: The same bytes were already stored: a success that stored nothing new.
    already_stored: bool = False

    @property
    def stored(self) -> bool:
        return self.failure is None

    @classmethod
    def of(
        cls,
        index: int,
        header: InstanceHeader,
        *,
        failure: FailureReason | None = None,
        reason_code: str | None = None,
        message_en: str | None = None,
        already_stored: bool = False,
    ) -> Outcome:
        """The outcome for a file whose header was read (so its UIDs are known)."""
        return cls(
            index=index,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            study_uid=header.study_instance_uid,
            series_uid=header.series_instance_uid,
            failure=failure,
            reason_code=reason_code,
            message_en=message_en,
            already_stored=already_stored,
        )


def refused(
    index: int, failure: FailureReason, reason_code: str, message_en: str, header: InstanceHeader | None = None
) -> Outcome:
    if header is not None:
        return Outcome.of(index, header, failure=failure, reason_code=reason_code, message_en=message_en)
    return Outcome(index=index, failure=failure, reason_code=reason_code, message_en=message_en)


def refused_file(index: int, error: InvalidDicom) -> Outcome:
    return refused(
        index,
        _FAILURE_BY_PROBLEM.get(error.reason_code, FailureReason.cannot_understand),
        error.reason_code.value,
        error.message_en,
    )


def read_received(index: int, path: Path, *, default_charset: str) -> Received:
    """Read the header and hash the file (blocking: run it in a worker thread). Raises :class:`InvalidDicom`."""
    header = read_header(path, default_charset=default_charset)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return Received(index, path, header, digest.hexdigest(), size, stored_document(header))


def receive_bytes(index: int, data: bytes, spool_dir: Path, *, default_charset: str) -> Received:
    """:func:`read_received` for a file held in memory (a small STOW-RS part): header and hash from the bytes,
    then the bytes written to a new file in ``spool_dir`` (blocking: one worker-thread call for the three).
    Raises :class:`InvalidDicom` before anything is written, ``OSError`` when the file cannot be written."""
    header = read_header(io.BytesIO(data), default_charset=default_charset)
    sha256 = hashlib.sha256(data).hexdigest()
    document = stored_document(header)
    return Received(index, write_spool_file(spool_dir, data), header, sha256, len(data), document)


def store_blob_now(storage: BlobStorage, item: Received) -> Received:
    """Move ``item``'s file into storage durably in the calling thread, which may block (a DICOM association's
    own): :func:`store_batch` then has no blob left to write, and its thread hop to a worker is saved. When the
    move fails, ``item`` comes back as it was (its file where it was), for store_batch to try and to answer."""
    key = new_blob_key(item.header)
    try:
        storage.put_file_blocking(key, item.path, move=True)
    except Exception:
        log.warning("moving a received file into storage failed; it is tried again", exc_info=True)
        return item
    return dataclasses.replace(item, key=key)


def new_blob_key(header: InstanceHeader) -> str:
    """A key of its own for every write (UIDs are digits and dots only, so they are safe in a path)."""
    return (
        f"{BLOB_PREFIX}{header.study_instance_uid}/{header.series_instance_uid}/"
        f"{header.sop_instance_uid}_{int(time.time())}_{secrets.token_hex(4)}.dcm"
    )


def blob_written_at(key: str) -> float | None:
    """The Unix time a blob key was made, or None for a key that is not an instance blob."""
    if not key.startswith(BLOB_PREFIX) or not key.endswith(".dcm"):
        return None
    parts = key.rsplit("/", 1)[-1].removesuffix(".dcm").rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return float(parts[1])


def stored_document(header: InstanceHeader) -> str:
    """The DICOM JSON kept in the index: compact, with the transfer syntax, bulk data relative to the root."""
    document: dict[str, Any] = dict(header.dataset_json)
    # Available Transfer Syntax UID (0008,3002) tells a viewer how the frames will come (PS3.18 §10.4.1.1.3).
    document["00083002"] = {"vr": "UI", "Value": [header.transfer_syntax_uid]}
    ordered = dict(sorted(document.items()))
    try:
        text = orjson.dumps(ordered).decode()  # the same text as the json module's below, in a tenth of the time
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (a malformed IS value): json takes any size
        text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    instance_path = (
        f"studies/{header.study_instance_uid}/series/{header.series_instance_uid}/instances/{header.sop_instance_uid}/"
    )
    placeholder = '"BulkDataURI":"' + BULK_DATA_URI_PREFIX
    return text.replace(placeholder, '"BulkDataURI":"' + instance_path + BULK_DATA_URI_PREFIX)


def _clip(value: str | None, length: int) -> str | None:
    if value is None:
        return None
    return value[:length]


def _json_text(header: InstanceHeader, key: str) -> str | None:
    values = header.dataset_json.get(key, {}).get("Value")
    if not values or values[0] is None:
        return None
    return str(values[0])


def _study_row(header: InstanceHeader, sender: Sender) -> dict[str, Any]:
    return {
        "study_uid": header.study_instance_uid,
        "facility_id": sender.facility_id,
        "patient_name": _clip(header.patient_name, 256),
        "patient_id": _clip(header.patient_id, 64),
        "patient_birth_date": _clip(header.patient_birth_date, 16),
        "patient_sex": _clip(header.patient_sex, 16),
        "study_date": _clip(header.study_date, 16),
        "study_time": _clip(header.study_time, 32),
        "accession_number": _clip(header.accession_number, 64),
        "study_description": _clip(header.study_description, 256),
        "dicom_study_id": _clip(_json_text(header, "00200010"), 64),
        "referring_physician_name": _clip(header.referring_physician_name, 256),
    }


def _series_row(header: InstanceHeader, study_pk: int) -> dict[str, Any]:
    return {
        "study_pk": study_pk,
        "series_uid": header.series_instance_uid,
        "modality": _clip(header.modality, 16),
        "body_part": _clip(header.body_part_examined, 64),
        "series_number": header.series_number,
        "series_description": _clip(header.series_description, 256),
        "series_date": _clip(_json_text(header, "00080021"), 16),
        "series_time": _clip(_json_text(header, "00080031"), 32),
    }


def _int32(value: int | None) -> int | None:
    # INTEGER columns: a hostile IS value must not fail the insert on PostgreSQL.
    if value is None or not -(2**31) <= value < 2**31:
        return None
    return value


class ScopeNeeded(Exception):
    """Raised in the index transaction when the sender's facility scope must be read first (that read needs the
    event loop): the transaction (or its savepoint) is rolled back, the scope read, and the batch staged again."""


async def store_batch(
    uow: UnitOfWork, received: Sequence[Received], sender: Sender, *, audit: Callable[[list[Outcome]], None]
) -> list[Outcome]:
    """Store ``received``: the blobs first, durably; then their index rows and what ``audit(outcomes)`` records
    on ``uow``, in one transaction (``UnitOfWork.commit_work``). Returns an outcome per item, in order.

    The received files are taken over: moved into storage, or removed (a second copy within the batch, a batch
    whose blobs could not be written). When this raises, the ones not yet moved are the caller's to remove.

    (Staging the rows while the blobs are synced, committing once they are durable, gained nothing measurable:
    the blob's fsyncs and the database's commit wait on the same file-system journal.)

    No look-up precedes the writes: the unique constraints decide (``ON CONFLICT``), and a blob written for an
    instance that turns out to be stored already is deleted again. The same bytes sent twice are rare enough
    that saving their write is not worth a round trip on every instance.
    """
    outcomes: list[Outcome] = []
    primaries: dict[str, Received] = {}
    for item in received:
        header = item.header
        first = primaries.get(header.sop_instance_uid)
        if first is None:
            primaries[header.sop_instance_uid] = item
        elif first.sha256 == item.sha256:
            outcomes.append(Outcome.of(item.index, header, already_stored=True))
        else:
            outcomes.append(_duplicate(item))
    items = list(primaries.values())
    copies = [item for item in received if primaries[item.header.sop_instance_uid] is not item]
    #: Second copies stored before (store_blob_now): never indexed, so always deleted.
    stored_copies = [item.key for item in copies if item.key is not None]
    keys = {uid: item.key or new_blob_key(item.header) for uid, item in primaries.items()}
    storage = uow.ctx.storage
    unwritten = [(item, keys[uid]) for uid, item in primaries.items() if item.key is None]
    writes: asyncio.Future[None]
    if unwritten:
        writes = asyncio.ensure_future(_write_blobs(storage, unwritten))
        writes.add_done_callback(_failure_seen)  # a failed write is logged by _write_blobs and answered below
    else:  # every blob was stored before (store_blob_now, every C-STORE): no task to run for nothing
        writes = asyncio.get_running_loop().create_future()
        writes.set_result(None)

    def stage(session: Session) -> tuple[list[Outcome], set[str]]:
        staged, inserted = _stage_rows(session, items, keys, sender)
        everything = sorted([*outcomes, *staged], key=_index)
        audit(everything)
        return everything, inserted

    commit: asyncio.Future[tuple[list[Outcome], set[str]]] | None = None
    try:
        await asyncio.shield(writes)
        while True:
            commit = asyncio.ensure_future(uow.commit_work(stage))
            try:
                everything, inserted = await asyncio.shield(commit)
            except ScopeNeeded:
                commit = None
                await sender.load_scope()
                continue
            break
    except BlobsNotWritten:
        # A blob could not be written (disk full, storage down): nothing of the batch is indexed.
        await delete_blobs(storage, [*keys.values(), *stored_copies])
        await remove_files(item.path for item in received if item.key is None)
        outcomes += [
            refused(item.index, FailureReason.out_of_resources, "imaging.storage_failed",
                    "The file could not be written to storage.", item.header)
            for item in items
        ]  # fmt: skip
        outcomes.sort(key=_index)
        audit(outcomes)
        await uow.commit()
        return outcomes
    except asyncio.CancelledError:
        _settle_blobs_later(commit, writes, storage, keys, stored_copies)
        raise
    except BaseException:
        await asyncio.wait([writes])  # let the writes finish, or the deletes below could race them
        await delete_blobs(storage, [*keys.values(), *stored_copies])
        raise
    await delete_blobs(storage, [key for uid, key in keys.items() if uid not in inserted])
    if copies:
        await delete_blobs(storage, stored_copies)
        await remove_files(item.path for item in copies if item.key is None)
    return everything


class BlobsNotWritten(Exception):
    """A blob of the batch could not be written durably: nothing of the batch is indexed."""


#: Clean-ups that outlive a cancelled request (referenced here so that they are not collected midway).
_SETTLING: set[asyncio.Task[None]] = set()


def _settle_blobs_later(
    commit: asyncio.Future[tuple[list[Outcome], set[str]]] | None,
    writes: asyncio.Future[None],
    storage: BlobStorage,
    keys: dict[str, str],
    stored_copies: Sequence[str],
) -> None:
    """The request was cancelled: once its blob writes and the transaction it started (if any) have ended, keep
    the blobs that committed rows name and delete the others."""

    async def settle() -> None:
        inserted: set[str] = set()
        if commit is not None:
            await asyncio.wait([commit])
            if not commit.cancelled() and commit.exception() is None:
                inserted = commit.result()[1]
        await asyncio.wait([writes])
        await delete_blobs(storage, [*(key for uid, key in keys.items() if uid not in inserted), *stored_copies])

    task = asyncio.ensure_future(settle())
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)


def _failure_seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _index(outcome: Outcome) -> int:
    return outcome.index


def _stage_rows(
    session: Session, items: list[Received], keys: dict[str, str], sender: Sender
) -> tuple[list[Outcome], set[str]]:
    """Upsert studies and series, insert instances: the outcomes, and the SOP Instance UIDs whose rows were
    inserted. Raises :class:`ScopeNeeded` (after the study upsert, before any instance row) when the sender's
    scope is needed; the transaction is rolled back then."""
    outcomes: list[Outcome] = []
    studies = repository.ensure_studies(
        session, list({item.header.study_instance_uid: _study_row(item.header, sender) for item in items}.values())
    )
    allowed: list[Received] = []
    for item in items:
        study = studies[item.header.study_instance_uid]
        if sender.may_add_to(study.facility_id):
            allowed.append(item)
        else:
            outcomes.append(
                refused(
                    item.index,
                    FailureReason.not_authorized,
                    "imaging.study_not_in_scope",
                    "The study belongs to a facility outside the sender's scope.",
                    item.header,
                )
            )
    series = repository.ensure_series(
        session,
        list(
            {
                item.header.series_instance_uid: _series_row(item.header, studies[item.header.study_instance_uid].pk)
                for item in allowed
            }.values()
        ),
    )
    rows: list[dict[str, Any]] = []
    candidates: dict[str, Received] = {}
    for item in allowed:
        header = item.header
        series_pk, study_pk = series[header.series_instance_uid]
        if study_pk != studies[header.study_instance_uid].pk:
            outcomes.append(_series_elsewhere(item))
            continue
        candidates[header.sop_instance_uid] = item
        rows.append(_instance_row(item, keys[header.sop_instance_uid], study_pk, series_pk, sender))
    inserted = repository.insert_instances(session, rows)
    lost = [uid for uid in candidates if uid not in inserted]
    stored_before = repository.known_instances(session, lost) if lost else {}
    for uid, item in candidates.items():
        if uid in inserted:
            outcomes.append(Outcome.of(item.index, item.header))
        elif (before := stored_before.get(uid)) is not None and before.sha256 == item.sha256:
            outcomes.append(Outcome.of(item.index, item.header, already_stored=True))
        else:
            outcomes.append(_duplicate(item))
    repository.touch_studies(session, {studies[candidates[uid].header.study_instance_uid].pk for uid in inserted})
    return outcomes, inserted


def _instance_row(item: Received, key: str, study_pk: int, series_pk: int, sender: Sender) -> dict[str, Any]:
    header = item.header
    return {
        "study_pk": study_pk,
        "series_pk": series_pk,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "instance_number": _int32(header.instance_number),
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "number_of_frames": _int32(header.number_of_frames) or 0,
        "rows": _int32(header.rows),
        "columns": _int32(header.columns),
        "size": item.size,
        "sha256": item.sha256,
        "blob_key": key,
        "facility_id": sender.facility_id,
        "source": sender.source,
        "calling_ae": sender.calling_ae,
        "dataset_json": item.document,
    }


def audit_outcomes(uow: UnitOfWork, outcomes: Iterable[Outcome], *, source: str, calling_ae: str | None = None) -> int:
    """One audit entry per study touched (PS3.18 has no audit; MLPS 2.0 wants every write recorded)."""
    per_study: dict[str | None, list[Outcome]] = {}
    for outcome in outcomes:
        per_study.setdefault(outcome.study_uid, []).append(outcome)
    for study_uid, items in per_study.items():
        stored = sum(1 for o in items if o.stored)
        detail: dict[str, Any] = {"source": source, "stored": stored, "failed": len(items) - stored}
        if calling_ae:
            detail["calling_ae"] = calling_ae
        failures = sorted({o.reason_code for o in items if o.reason_code})
        if failures:
            detail["reasons"] = failures
        uow.audit(
            AuditEntry(
                action=AuditAction.create,
                resource_type=RESOURCE_TYPE,
                resource_id=study_uid,
                outcome=AuditOutcome.success if stored else AuditOutcome.failed,
                detail=detail,
            )
        )
    return len(per_study)


async def remove_files(paths: Iterable[Path]) -> None:
    """Remove received files (spool or temporary files) that were not moved into storage, in a worker thread."""

    def remove(items: list[Path]) -> None:
        for path in items:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    await asyncio.to_thread(remove, list(paths))


async def delete_blobs(storage: BlobStorage, keys: Iterable[str]) -> None:
    for key in list(keys):
        try:
            await storage.delete(key)
        except Exception:
            log.exception("an unreferenced blob could not be deleted; `telemed imaging repair` will remove it")


async def _write_blobs(storage: BlobStorage, items: Sequence[tuple[Received, str]]) -> None:
    """Move the files into storage durably, several at a time (each put waits for its own fsyncs); raises
    :class:`BlobsNotWritten` when one could not be, after every other move has ended.

    The received files are the caller's spool or temporary files, read (header and hash) before this: nothing
    reads them afterwards, and a failed move leaves them where they were, for store_batch to remove.
    """
    limit = asyncio.Semaphore(4)

    async def write(item: Received, key: str) -> bool:
        async with limit:
            try:
                await storage.put_file(key, item.path, move=True)
            except Exception:
                log.exception("writing a DICOM blob failed")
                return False
        return True

    if len(items) == 1:  # one instance per request or association message: no tasks to gather
        written = [await write(*items[0])]
    else:
        written = await asyncio.gather(*(write(item, key) for item, key in items))
    if not all(written):
        raise BlobsNotWritten()


def _duplicate(item: Received) -> Outcome:
    return refused(
        item.index,
        FailureReason.duplicate_sop_instance,
        "imaging.duplicate_sop_instance",
        "Another object is already stored under this SOP Instance UID; the stored one is kept.",
        item.header,
    )


def _series_elsewhere(item: Received) -> Outcome:
    return refused(
        item.index,
        FailureReason.series_in_other_study,
        "imaging.series_in_other_study",
        "The Series Instance UID already belongs to another study.",
        item.header,
    )
