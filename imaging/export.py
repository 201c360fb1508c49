"""De-identified export of one study for teaching and second opinions: a ZIP of DICOM Part 10 files made with the
Basic Application Level Confidentiality Profile (DICOM PS3.15 E.1, implemented by :mod:`imaging.deid`).

Who may (security notes B2, C1, E7): county radiologists and specialists, for studies within their read scope
(the check of WADO-RS and QIDO-RS, :func:`imaging.service.find_study`); a study out of scope answers 404 and other
roles 403, both audited as denied. Village and township doctors may view their studies but not hand them on: a
teaching file or a second opinion elsewhere is a specialist's disclosure, and the fewer people who can make one the
better (PIPL Art. 6). Only the requester sees and downloads an export. Creating and downloading are audited on the
study with the export's purpose; the run itself is audited as the system reading the study.

How it runs: the request stores a ``queued`` job and wakes the export worker, a background service of the domain
(:func:`run_export_worker`, one per process). A worker claims a job with a conditional UPDATE and holds a lease it
renews while it works, reads each instance from blob storage, de-identifies it (one :class:`~imaging.deid.UidMapper`
per export, so every UID of the study, its series, frames of reference and references between instances maps to
the same new UID throughout) and appends it to a ZIP spooled on the data volume, one instance in memory at a time.
The finished ZIP goes to blob storage under ``exports/``. A job whose lease ran out was abandoned by a crashed
worker: it is queued again (or failed after :data:`MAX_ATTEMPTS`), at start-up or by any running worker. ZIPs are
deleted ``imaging_export_retention_days`` after they were made.

The ZIP holds ``DICOM/Snnnn/Innnnn.dcm`` (series and instance numbers in export order) and ``manifest.json``, which
names the new UIDs, the profile options and a random patient pseudonym: no original identifier, in file names or
anywhere else. Instances marked Burned In Annotation = YES may show the patient's name in their pixels, which the
profile does not clean (PS3.15 E.3.1 is not implemented): they stop the export, or are left out on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import threading
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imaging import repository
from imaging.config import imaging_settings
from imaging.deid import ACTION_CODES, BurnedInAnnotationRefused, ProfileOptions, UidMapper, deidentify
from imaging.errors import BlobMissing, ExportExpired, ExportForbidden, ExportNotFound, ExportNotReady
from imaging.export_models import ImagingExport
from imaging.ingest import RESOURCE_TYPE
from imaging.models import ImagingStudy
from imaging.repository import StoredInstance
from imaging.service import find_study, spool_dir
from telemed.core.aio import wait_event
from telemed.core.audit import SYSTEM_ACTOR, AuditAction, AuditEntry, AuditOutcome
from telemed.core.auth import Principal, Role
from telemed.core.context import AppContext
from telemed.core.db import utcnow
from telemed.core.events import DomainEvent
from telemed.core.storage import BlobNotFound
from telemed.core.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Roles that may export; others get 403 (analysts and administrators see no images at all).
EXPORT_ROLES: Final = frozenset({Role.radiologist, Role.specialist})
EXPORT_RESOURCE: Final = "imaging_export"
EXPORT_BLOB_PREFIX: Final = "exports/"
EXPORT_FINISHED: Final = "imaging.export_finished"
#: Attempts a job gets: each crash of the worker running it costs one.
MAX_ATTEMPTS: Final = 3
MANIFEST_NAME: Final = "manifest.json"
MANIFEST_FORMAT: Final = "telemed-deid-export/1"
_PROFILE_NAME: Final = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"
#: Values longer than this (Pixel Data) are read from the file when written, not held with the header.
_DEFER_BYTES: Final = 64 * 1024
#: Progress is written about this many times per export (every instance for small studies).
_PROGRESS_WRITES: Final = 50
_WAKEUP_KEY: Final = "imaging.export_wakeup"


class ExportPurpose(StrEnum):
    """Why the export is made; it becomes the ``purpose`` of its audit records."""

    teaching = "teaching"
    second_opinion = "second_opinion"


class ExportStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    expired = "expired"


class Command(StrEnum):
    claim = "claim"
    finish = "finish"
    fail = "fail"
    requeue = "requeue"
    expire = "expire"


S, C = ExportStatus, Command

TRANSITIONS: Final[Mapping[tuple[ExportStatus, Command], ExportStatus]] = {
    (S.queued, C.claim): S.running,
    (S.running, C.finish): S.done,
    (S.running, C.fail): S.failed,
    # The worker stopped (shutdown, or a crash noticed when its lease ran out): another worker starts over.
    (S.running, C.requeue): S.queued,
    (S.done, C.expire): S.expired,
}
"""``(status, command) → status`` of an export job, after the states of Orthanc's jobs engine (Pending → Running →
Success | Failure; a job of a stopped server is resumed at restart, Orthanc Book "Jobs"), with ``expired`` for a
finished export whose file was deleted. Workers move jobs with conditional UPDATEs on these states, so two workers
never run one job and a worker whose lease was taken over cannot finish it."""


#: Failure reasons: the stable code a job reports, and what it means in zh-CN and English.
BURNED_IN: Final = "imaging.export.burned_in_annotation"
NOTHING_TO_EXPORT: Final = "imaging.export.nothing_to_export"
UNREADABLE: Final = "imaging.export.unreadable_instance"
MISSING_FILE: Final = "imaging.export.blob_missing"
INTERRUPTED: Final = "imaging.export.interrupted"
INTERNAL: Final = "imaging.export.internal_error"
REASONS: Final[Mapping[str, tuple[str, str]]] = {
    BURNED_IN: (
        "有图像标记为像素中含有文字（Burned In Annotation），可能显示患者身份，导出已停止；"
        "可选择跳过这些图像后重新导出",
        "An instance is marked Burned In Annotation = YES: its pixels may show who the patient is, so the export "
        "stopped. Export again with skip_burned_in_annotation to leave such instances out.",
    ),
    NOTHING_TO_EXPORT: (
        "跳过像素中含有文字的图像后，没有可导出的图像",
        "No instance is left once those with burned-in annotation are left out",
    ),
    UNREADABLE: ("有图像文件无法读取，导出未完成", "An instance could not be read; the export was not made"),
    MISSING_FILE: ("有图像文件缺失，导出未完成", "An image file is missing from the store; the export was not made"),
    INTERRUPTED: (
        "导出多次因服务重启而中断，已停止",
        "The export was interrupted by restarts too often and was given up",
    ),
    INTERNAL: ("导出时发生内部错误", "The export failed on an internal error"),
}


class ExportFailed(Exception):
    """The export cannot be made; ``code`` is one of :data:`REASONS`."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class StudyNotIndexed(LookupError):
    """The command line named a study that is not in the index."""


class LeaseLost(Exception):
    """Another worker took the job over (this one was too slow to renew its lease)."""


def next_status(status: ExportStatus, command: Command) -> ExportStatus:
    target = TRANSITIONS.get((status, command))
    if target is None:
        raise ValueError(f"an export cannot {command.value} when {status.value}")
    return target


def _source_status(command: Command) -> ExportStatus:
    (source,) = [status for status, name in TRANSITIONS if name is command]
    return source


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The profile options an export may ask for; everything else stays at the profile's safe default."""

    #: PS3.15 E.3.6: keep dates and times (follow-up intervals matter for a second opinion).
    retain_long_full_dates: bool = False
    #: PS3.15 E.3.7: keep sex, age, size and weight (teaching cases are often about them).
    retain_patient_characteristics: bool = False
    #: Leave out instances with Burned In Annotation = YES instead of stopping the export.
    skip_burned_in_annotation: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {
            "retain_long_full_dates": self.retain_long_full_dates,
            "retain_patient_characteristics": self.retain_patient_characteristics,
            "skip_burned_in_annotation": self.skip_burned_in_annotation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ExportOptions:
        known = cls().as_dict()
        return cls(**{key: bool(value) for key, value in (data or {}).items() if key in known})

    def profile(self, pseudonym: str) -> ProfileOptions:
        return ProfileOptions(
            retain_long_full_dates=self.retain_long_full_dates,
            retain_patient_characteristics=self.retain_patient_characteristics,
            patient_pseudonym=pseudonym,
        )


def export_blob_key(export_id: uuid.UUID) -> str:
    """One key per export (a retry after a crash overwrites what an earlier attempt may have stored)."""
    return f"{EXPORT_BLOB_PREFIX}{export_id}.zip"


def download_filename(export: ImagingExport) -> str:
    """ASCII only, and nothing of the patient or the study in it."""
    return f"telemed-deid-{export.purpose}-{export.id.hex[:12]}.zip"


def reason_message(code: str | None, lang: str) -> str | None:
    if code is None:
        return None
    zh, en = REASONS.get(code, REASONS[INTERNAL])
    return en if lang == "en" else zh


# ---------------------------------------------------------------------------------------------------------------
# The ZIP


@dataclass(frozen=True, slots=True)
class ExportResult:
    instances: int
    skipped: int
    size_bytes: int


@dataclass(slots=True)
class _Series:
    folder: str
    series_instance_uid: str
    modality: str | None
    instances: int = 0


@dataclass(slots=True)
class _ZipWriter:
    """Appends de-identified instances to a ZIP file (blocking: call it from a worker thread).

    One instance is in memory at a time, and its Pixel Data only while it is written: the header is read with the
    large values deferred, de-identified, written to a scratch file and compressed into the archive from there.
    """

    target: Path
    purpose: ExportPurpose
    options: ExportOptions
    default_charset: str
    written: int = 0
    skipped: int = 0
    _archive: zipfile.ZipFile = field(init=False)
    _mapper: UidMapper = field(init=False, default_factory=UidMapper)
    _pseudonym: str = field(init=False, default_factory=lambda: f"ANON-{secrets.token_hex(4).upper()}")
    _series: dict[str, _Series] = field(init=False, default_factory=dict)
    _study_uids: list[str] = field(init=False, default_factory=list)
    _files: list[dict[str, Any]] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._archive = zipfile.ZipFile(self.target, "w", allowZip64=True)

    @property
    def _scratch(self) -> Path:
        return self.target.with_name(f"{self.target.name}.dcm")

    def add(self, source: Path, transfer_syntax_uid: str) -> None:
        with self._lock:
            try:
                dataset = pydicom.dcmread(source, defer_size=_DEFER_BYTES, force=True)
                self._complete_header(dataset, transfer_syntax_uid)
                clean = deidentify(dataset, uid_map=self._mapper, profile_options=self.options.profile(self._pseudonym))
                clean.save_as(self._scratch, enforce_file_format=True)
            except BurnedInAnnotationRefused:
                if not self.options.skip_burned_in_annotation:
                    raise ExportFailed(BURNED_IN) from None
                self.skipped += 1
                return
            except OSError:
                raise
            except Exception as error:  # a damaged file: pydicom raises many kinds
                raise ExportFailed(UNREADABLE) from error
            try:
                self._append(clean)
            finally:
                self._scratch.unlink(missing_ok=True)

    def _complete_header(self, dataset: Dataset, transfer_syntax_uid: str) -> None:
        """What the index knows and a file may lack: its transfer syntax (a file without File Meta Information)
        and its character set (Chinese equipment often declares none: the site default applies, as at ingest)."""
        meta = dataset.file_meta
        if "TransferSyntaxUID" not in meta:
            meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in dataset:
            meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in dataset:
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if not dataset.get("SpecificCharacterSet") and self.default_charset:
            dataset.SpecificCharacterSet = self.default_charset

    def _append(self, clean: Dataset) -> None:
        series_uid = str(clean.get("SeriesInstanceUID") or "")
        series = self._series.get(series_uid)
        if series is None:
            modality = clean.get("Modality")
            series = _Series(f"DICOM/S{len(self._series) + 1:04d}", series_uid, str(modality) if modality else None)
            self._series[series_uid] = series
        study_uid = str(clean.get("StudyInstanceUID") or "")
        if study_uid and study_uid not in self._study_uids:
            self._study_uids.append(study_uid)
        series.instances += 1
        name = f"{series.folder}/I{series.instances:05d}.dcm"
        syntax = UID(str(clean.file_meta.TransferSyntaxUID))
        # Compressed pixel data does not shrink further; native pixel data usually does.
        compression = zipfile.ZIP_STORED if syntax.is_compressed else zipfile.ZIP_DEFLATED
        self._archive.write(self._scratch, name, compress_type=compression)
        self._files.append(
            {
                "path": name,
                "sop_class_uid": str(clean.get("SOPClassUID") or ""),
                "sop_instance_uid": str(clean.get("SOPInstanceUID") or ""),
                "series_instance_uid": series_uid,
                "instance_number": _int_or_none(clean.get("InstanceNumber")),
            }
        )
        self.written += 1

    def manifest(self) -> dict[str, Any]:
        """What the archive holds, in the new identifiers only."""
        profile = self.options.profile(self._pseudonym)
        codes = [ACTION_CODES[key] for key in ("basic", *profile.option_keys())]
        return {
            "format": MANIFEST_FORMAT,
            "purpose": self.purpose.value,
            "profile": _PROFILE_NAME,
            "deidentification_method_codes": [
                {"code_value": value, "coding_scheme": "DCM", "code_meaning": meaning} for value, meaning in codes
            ],
            "longitudinal_temporal_information": "UNMODIFIED" if self.options.retain_long_full_dates else "REMOVED",
            "options": self.options.as_dict(),
            "patient_pseudonym": self._pseudonym,
            "study_instance_uids": self._study_uids,
            "instances": self.written,
            "instances_left_out_for_burned_in_annotation": self.skipped,
            "exported_at": utcnow().isoformat(),
            "series": [
                {
                    "folder": series.folder,
                    "series_instance_uid": series.series_instance_uid,
                    "modality": series.modality,
                    "instances": series.instances,
                }
                for series in self._series.values()
            ],
            "files": self._files,
        }

    def finish(self) -> None:
        with self._lock:
            body = json.dumps(self.manifest(), ensure_ascii=False, indent=2)
            self._archive.writestr(MANIFEST_NAME, body, compress_type=zipfile.ZIP_DEFLATED)
            self._archive.close()

    def abort(self) -> None:
        with self._lock:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._scratch.unlink(missing_ok=True)
            self.target.unlink(missing_ok=True)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


ProgressCallback = Callable[[int, int], Awaitable[None]]


async def write_export(
    ctx: AppContext,
    instances: Sequence[StoredInstance],
    target: Path,
    *,
    purpose: ExportPurpose,
    options: ExportOptions,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """De-identify ``instances`` (one study) into the ZIP file ``target``; on failure nothing is left behind.

    Raises :class:`ExportFailed` for an instance that cannot be exported (burned-in annotation, unreadable or
    missing file). ``on_progress(done, total)`` is awaited every few instances and may raise to stop the export.
    """
    writer = await asyncio.to_thread(_ZipWriter, target, purpose, options, ctx.settings.default_dicom_charset)
    total = len(instances)
    step = max(1, total // _PROGRESS_WRITES)
    try:
        for number, instance in enumerate(instances, start=1):
            try:
                # The blob itself on local storage; a temporary download (one instance) on object storage.
                async with ctx.storage.local_file(instance.blob_key) as source:
                    await asyncio.to_thread(writer.add, source, instance.transfer_syntax_uid)
            except BlobNotFound:
                raise ExportFailed(MISSING_FILE) from None
            if on_progress is not None and (number % step == 0 or number == total):
                await on_progress(number, total)
        if writer.written == 0:
            raise ExportFailed(NOTHING_TO_EXPORT)
        await asyncio.to_thread(writer.finish)
        size = (await asyncio.to_thread(target.stat)).st_size
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise
    return ExportResult(writer.written, writer.skipped, size)


# ---------------------------------------------------------------------------------------------------------------
# Use cases (HTTP)


def _deny(uow: UnitOfWork, action: AuditAction, resource_type: str, resource_id: str | None, reason: str) -> None:
    uow.audit(AuditEntry(action, resource_type, resource_id, outcome=AuditOutcome.denied, detail={"reason": reason}))


def _require_export_role(
    uow: UnitOfWork, principal: Principal, action: AuditAction, resource_type: str, resource_id: str | None
) -> None:
    if principal.role not in EXPORT_ROLES:
        _deny(uow, action, resource_type, resource_id, "role")
        raise ExportForbidden()


async def create_export(
    uow: UnitOfWork, *, principal: Principal, study_uid: str, purpose: ExportPurpose, options: ExportOptions
) -> ImagingExport:
    """Queue the export of a study the principal may read; 404 (audited) when it is not there or not theirs."""
    _require_export_role(uow, principal, AuditAction.execute, RESOURCE_TYPE, study_uid[:64])
    async with uow.ctx.db.read_session() as session:
        study, _scope = await find_study(uow, principal, study_uid, session, action=AuditAction.execute)
        counts = await repository.study_counts(session, [study.id])
    export = ImagingExport(
        id=uuid.uuid4(),
        study_pk=study.id,
        study_uid=study.study_uid,
        requested_by=principal.user_id,
        purpose=purpose.value,
        options=options.as_dict(),
        status=ExportStatus.queued.value,
        instances_total=counts.get(study.id, (0, 0))[1],
        instances_done=0,
        instances_skipped=0,
        attempts=0,
        created_at=utcnow(),
    )
    uow.session.add(export)
    uow.audit(
        AuditEntry(
            AuditAction.execute,
            RESOURCE_TYPE,
            study.study_uid,
            purpose=purpose.value,
            detail={"what": "deidentified_export", "export_id": str(export.id), "options": options.as_dict()},
        )
    )
    # Committed here, not when the request ends, so that the worker woken next finds the job.
    await uow.commit()
    wake_export_worker(uow.ctx)
    return export


async def get_export(
    uow: UnitOfWork, *, principal: Principal, export_id: uuid.UUID, action: AuditAction = AuditAction.read
) -> ImagingExport:
    """The export, to its requester only; anyone else gets 404 (audited), as for a study out of scope."""
    _require_export_role(uow, principal, action, EXPORT_RESOURCE, str(export_id))
    async with uow.ctx.db.read_session() as session:
        export = await session.get(ImagingExport, export_id)
    if export is None or export.requested_by != principal.user_id:
        _deny(uow, action, EXPORT_RESOURCE, str(export_id), "not_found_or_not_requester")
        raise ExportNotFound()
    return export


async def list_exports(uow: UnitOfWork, *, principal: Principal, limit: int = 100) -> list[ImagingExport]:
    """The principal's own exports, newest first."""
    _require_export_role(uow, principal, AuditAction.query, EXPORT_RESOURCE, None)
    async with uow.ctx.db.read_session() as session:
        rows = await session.scalars(
            select(ImagingExport)
            .where(ImagingExport.requested_by == principal.user_id)
            .order_by(ImagingExport.created_at.desc())
            .limit(limit)
        )
        return list(rows.all())


@dataclass(frozen=True, slots=True)
class Download:
    export: ImagingExport
    blob_key: str
    filename: str
    size_bytes: int


async def prepare_download(uow: UnitOfWork, *, principal: Principal, export_id: uuid.UUID) -> Download:
    """The finished export's file, audited as a disclosure of the study before a byte is sent."""
    export = await get_export(uow, principal=principal, export_id=export_id)
    if export.status == ExportStatus.expired.value:
        raise ExportExpired()
    if export.status != ExportStatus.done.value or export.blob_key is None:
        raise ExportNotReady(export.status)
    try:
        size = await uow.ctx.storage.size(export.blob_key)
    except BlobNotFound:
        raise BlobMissing() from None
    uow.audit(
        AuditEntry(
            AuditAction.read,
            RESOURCE_TYPE,
            export.study_uid,
            purpose=export.purpose,
            detail={"what": "deidentified_export_download", "export_id": str(export.id), "bytes": export.size_bytes},
        )
    )
    return Download(export, export.blob_key, download_filename(export), size)


# ---------------------------------------------------------------------------------------------------------------
# The worker


def _wakeup(ctx: AppContext) -> asyncio.Event:
    found = ctx.extras.get(_WAKEUP_KEY)
    if isinstance(found, asyncio.Event):
        return found
    event = asyncio.Event()
    ctx.extras[_WAKEUP_KEY] = event
    return event


def wake_export_worker(ctx: AppContext) -> None:
    """Tell this process's worker there is work (workers of other processes find it on their next look)."""
    _wakeup(ctx).set()


async def run_export_worker(ctx: AppContext) -> None:
    """Background service: take up abandoned exports, run queued ones one at a time, delete expired ZIPs."""
    wakeup = _wakeup(ctx)
    while True:
        wakeup.clear()
        try:
            await recover_abandoned_exports(ctx)
            while await run_next_export(ctx):
                pass
            await expire_exports(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the export worker failed; retrying")
        await wait_event(wakeup, imaging_settings(ctx).imaging_export_poll_seconds)


@dataclass(frozen=True, slots=True)
class _Claim:
    id: uuid.UUID
    token: uuid.UUID
    study_pk: int
    study_uid: str
    requested_by: uuid.UUID
    purpose: ExportPurpose
    options: ExportOptions


_CLAIM_COLUMNS: Final = (
    ImagingExport.id,
    ImagingExport.lease_token,
    ImagingExport.study_pk,
    ImagingExport.study_uid,
    ImagingExport.requested_by,
    ImagingExport.purpose,
    ImagingExport.options,
)


def _claim_of(row: Any) -> _Claim:
    export_id, token, study_pk, study_uid, requested_by, purpose, options = row
    return _Claim(export_id, token, study_pk, study_uid, requested_by, ExportPurpose(purpose),
                  ExportOptions.from_dict(options))  # fmt: skip


async def _transition(
    session: AsyncSession,
    export_id: uuid.UUID,
    command: Command,
    *,
    token: uuid.UUID | None = None,
    conditions: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> Any:
    """Apply ``command`` if the job is still in its source state (and still leased with ``token``); the row of
    the moved job (:data:`_CLAIM_COLUMNS`), or None when someone else moved it first."""
    source = _source_status(command)
    where = [ImagingExport.id == export_id, ImagingExport.status == source.value, *conditions]
    if token is not None:
        where.append(ImagingExport.lease_token == token)
    statement = (
        update(ImagingExport)
        .where(*where)
        .values(status=next_status(source, command).value, **values)
        .returning(*_CLAIM_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    return (await session.execute(statement)).one_or_none()


def _lease_until(ctx: AppContext) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=imaging_settings(ctx).imaging_export_lease_seconds)


async def _claim_next(ctx: AppContext) -> _Claim | None:
    for _ in range(5):  # another worker may win the race for the oldest job: try the next one
        async with ctx.db.read_session() as session:
            candidate = await session.scalar(
                select(ImagingExport.id)
                .where(ImagingExport.status == ExportStatus.queued.value)
                .order_by(ImagingExport.created_at)
                .limit(1)
            )
        if candidate is None:
            return None
        async with ctx.db.session() as session, session.begin():
            row = await _transition(
                session,
                candidate,
                Command.claim,
                lease_token=uuid.uuid4(),
                lease_until=_lease_until(ctx),
                started_at=utcnow(),
                attempts=ImagingExport.attempts + 1,
                instances_done=0,
                instances_skipped=0,
                reason=None,
            )
        if row is not None:
            return _claim_of(row)
    return None


async def run_next_export(ctx: AppContext) -> bool:
    """Run the oldest queued export to its end; False when there was none."""
    claim = await _claim_next(ctx)
    if claim is None:
        return False
    await _run_claimed(ctx, claim)
    return True


class _Lease:
    """The claim on a running job, renewed while the worker works; lost when another worker took the job."""

    def __init__(self, ctx: AppContext, claim: _Claim) -> None:
        self._ctx = ctx
        self._claim = claim
        self.lost = False

    async def renew(self, **values: Any) -> None:
        if self.lost:
            raise LeaseLost()
        claim = self._claim
        async with self._ctx.db.session() as session, session.begin():
            result = await session.execute(
                update(ImagingExport)
                .where(
                    ImagingExport.id == claim.id,
                    ImagingExport.status == ExportStatus.running.value,
                    ImagingExport.lease_token == claim.token,
                )
                .values(lease_until=_lease_until(self._ctx), **values)
                .returning(ImagingExport.id)
            )
            self.lost = result.scalar_one_or_none() is None
        if self.lost:
            raise LeaseLost()

    async def progress(self, done: int, total: int) -> None:
        await self.renew(instances_done=done, instances_total=total)

    async def keep(self) -> None:
        """Renew a few times per lease period, also while one large instance takes long."""
        while True:
            await asyncio.sleep(imaging_settings(self._ctx).imaging_export_lease_seconds / 3)
            try:
                await self.renew()
            except LeaseLost:
                return
            except Exception:
                log.exception("renewing an export's lease failed", extra={"export_id": str(self._claim.id)})


def _remove_spooled(spool: Path, export_id: uuid.UUID) -> None:
    for path in spool.glob(f"{export_id}.*"):
        path.unlink(missing_ok=True)


async def _run_claimed(ctx: AppContext, claim: _Claim) -> None:
    spool = await spool_dir(ctx, "exports")
    await asyncio.to_thread(_remove_spooled, spool, claim.id)  # what an attempt that crashed left
    target = spool / f"{claim.id}.{claim.token.hex}.zip"
    lease = _Lease(ctx, claim)
    keeper = asyncio.create_task(lease.keep(), name=f"export-lease-{claim.id}")
    try:
        async with ctx.db.read_session() as session:
            instances = await repository.stored_instances(session, study_pk=claim.study_pk)
        await lease.progress(0, len(instances))
        result = await write_export(
            ctx, instances, target, purpose=claim.purpose, options=claim.options, on_progress=lease.progress
        )
        key = export_blob_key(claim.id)
        await ctx.storage.put_file(key, target, move=True)
        if not await _settle(ctx, claim, Command.finish, result=result, blob_key=key):
            raise LeaseLost()
    except LeaseLost:
        log.warning("an export was taken over by another worker", extra={"export_id": str(claim.id)})
    except asyncio.CancelledError:
        # Shutting down: hand the job back at once (no attempt spent), so that the next start takes it up.
        with contextlib.suppress(Exception):
            await _requeue(ctx, claim)
        raise
    except ExportFailed as failure:
        await _settle(ctx, claim, Command.fail, reason=failure.code)
    except Exception:
        log.exception("an export failed", extra={"export_id": str(claim.id)})
        await _settle(ctx, claim, Command.fail, reason=INTERNAL)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await asyncio.to_thread(target.unlink, True)


def export_finished(claim: _Claim, status: ExportStatus, reason: str | None) -> DomainEvent:
    """The requester's export is done or failed (ids and codes only)."""
    return DomainEvent(
        name=EXPORT_FINISHED,
        payload={"export_id": str(claim.id), "status": status.value, "reason": reason},
        audience_users=(str(claim.requested_by),),
    )


async def _settle(
    ctx: AppContext,
    claim: _Claim,
    command: Command,
    *,
    reason: str | None = None,
    result: ExportResult | None = None,
    blob_key: str | None = None,
    conditions: Sequence[ColumnElement[bool]] = (),
) -> bool:
    """Finish or fail a running job held with ``claim.token``, audited as the system's read of the study."""
    now = utcnow()
    values: dict[str, Any] = {"finished_at": now, "lease_token": None, "lease_until": None, "reason": reason}
    detail: dict[str, Any] = {"what": "deidentified_export_run", "export_id": str(claim.id)}
    if command is Command.finish:
        assert result is not None
        assert blob_key is not None
        retention = dt.timedelta(days=imaging_settings(ctx).imaging_export_retention_days)
        values |= {
            "instances_done": result.instances + result.skipped,
            "instances_skipped": result.skipped,
            "blob_key": blob_key,
            "size_bytes": result.size_bytes,
            "expires_at": now + retention,
        }
        detail |= {"instances": result.instances, "skipped": result.skipped}
    else:
        detail["reason"] = reason
    status = next_status(ExportStatus.running, command)
    async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
        moved = await _transition(uow.session, claim.id, command, token=claim.token, conditions=conditions, **values)
        if moved is None:
            return False
        uow.audit(
            AuditEntry(
                AuditAction.read,
                RESOURCE_TYPE,
                claim.study_uid,
                outcome=AuditOutcome.success if command is Command.finish else AuditOutcome.failed,
                purpose=claim.purpose.value,
                detail=detail,
            )
        )
        uow.record(export_finished(claim, status, reason))
        await uow.commit()
    if command is Command.fail:
        # A ZIP stored by an attempt that lost its lease afterwards would otherwise stay behind.
        with contextlib.suppress(Exception):
            await ctx.storage.delete(export_blob_key(claim.id))
    return True


async def _requeue(ctx: AppContext, claim: _Claim) -> None:
    async with ctx.db.session() as session, session.begin():
        await _transition(
            session,
            claim.id,
            Command.requeue,
            token=claim.token,
            lease_token=None,
            lease_until=None,
            instances_done=0,
            attempts=ImagingExport.attempts - 1,
        )


async def recover_abandoned_exports(ctx: AppContext) -> int:
    """Jobs left ``running`` by a worker that stopped reporting (a crash): queued again, or failed once they
    have had :data:`MAX_ATTEMPTS`, so that no export is lost silently. How many were found."""
    now = utcnow()
    stale_lease = or_(ImagingExport.lease_until.is_(None), ImagingExport.lease_until < now)
    async with ctx.db.read_session() as session:
        rows = (
            await session.execute(
                select(*_CLAIM_COLUMNS, ImagingExport.attempts)
                .where(ImagingExport.status == ExportStatus.running.value, stale_lease)
                .limit(100)
            )
        ).all()
    for *columns, attempts in rows:
        claim = _claim_of(columns)
        if attempts >= MAX_ATTEMPTS:
            await _settle(ctx, claim, Command.fail, reason=INTERRUPTED, conditions=(stale_lease,))
            continue
        async with ctx.db.session() as session, session.begin():
            moved = await _transition(
                session,
                claim.id,
                Command.requeue,
                token=claim.token,
                conditions=(stale_lease,),
                lease_token=None,
                lease_until=None,
                instances_done=0,
            )
        if moved is not None:
            log.warning("an abandoned export was queued again", extra={"export_id": str(claim.id)})
    if rows:
        wake_export_worker(ctx)
    return len(rows)


async def expire_exports(ctx: AppContext, *, now: dt.datetime | None = None) -> int:
    """Delete the ZIPs of exports past their retention; how many expired."""
    now = now or utcnow()
    async with ctx.db.read_session() as session:
        rows = (
            await session.execute(
                select(ImagingExport.id, ImagingExport.blob_key)
                .where(ImagingExport.status == ExportStatus.done.value, ImagingExport.expires_at <= now)
                .order_by(ImagingExport.expires_at)
                .limit(100)
            )
        ).all()
    expired = 0
    for export_id, blob_key in rows:
        # The file goes first: a crash after it leaves a job still "done" (expired on the next pass), never a
        # job marked expired whose file stays behind.
        if blob_key:
            await ctx.storage.delete(blob_key)
        async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
            if await _transition(uow.session, export_id, Command.expire, blob_key=None) is None:
                continue
            uow.audit(AuditEntry(AuditAction.delete, EXPORT_RESOURCE, str(export_id), detail={"reason": "retention"}))
            await uow.commit()
            expired += 1
    return expired


# ---------------------------------------------------------------------------------------------------------------
# The command line (``telemed imaging export``): the administrator on the server, audited as the system


async def export_study_to_file(
    ctx: AppContext,
    *,
    study_uid: str,
    out: Path,
    purpose: ExportPurpose,
    options: ExportOptions,
    operator: str | None = None,
) -> ExportResult:
    """Write the de-identified export of a study to ``out`` (atomically: the file appears once complete).

    The ZIP is built beside ``out`` and audited before it is moved into place: if the audit cannot be written,
    nothing is disclosed. Raises :class:`StudyNotIndexed` or :class:`ExportFailed`.
    """
    detail: dict[str, Any] = {"what": "deidentified_export", "source": "cli", "operator": operator,
                              "options": options.as_dict()}  # fmt: skip

    async def audit(outcome: AuditOutcome, **more: Any) -> None:
        async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
            uow.audit(AuditEntry(AuditAction.execute, RESOURCE_TYPE, study_uid[:64], outcome=outcome,
                                 purpose=purpose.value, detail={**detail, **more}))  # fmt: skip
            await uow.commit()

    async with ctx.db.read_session() as session:
        study = await session.scalar(select(ImagingStudy).where(ImagingStudy.study_uid == study_uid))
        instances = [] if study is None else await repository.stored_instances(session, study_pk=study.id)
    if study is None:
        await audit(AuditOutcome.failed, reason="not_found")
        raise StudyNotIndexed(study_uid)
    out = await asyncio.to_thread(out.resolve)
    spool = out.with_name(f".{out.name}.{secrets.token_hex(6)}.part")
    try:
        try:
            result = await write_export(ctx, instances, spool, purpose=purpose, options=options)
        except ExportFailed as failure:
            await audit(AuditOutcome.failed, reason=failure.code)
            raise
        await audit(AuditOutcome.success, instances=result.instances, skipped=result.skipped)
        await asyncio.to_thread(os.replace, spool, out)
    finally:
        await asyncio.to_thread(spool.unlink, True)
    return result
