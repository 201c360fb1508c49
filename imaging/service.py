"""Use cases of the imaging domain: ``async def verb_noun(uow, *, principal, ...)``.

Who may do what (security notes; DESIGN §5): clinical staff read the studies sent from facilities in their
facility scope (a county radiologist sees the county, a village doctor the village) and get 404 for any other
study, so that its existence is not revealed; health-bureau analysts and administrators see no images (403).
Every DICOMweb request writes an audit record naming the Study Instance UID, committed with the request.

Reads run in read transactions and only the audit record is written in the unit of work, so that a slow query
never holds SQLite's write lock and image reads do not queue behind ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imaging import qido, repository
from imaging.config import imaging_settings
from imaging.dicomfile import InvalidDicom
from imaging.errors import (
    BadStowRequest,
    DuplicateNode,
    FailureReason,
    ImagingForbidden,
    ImagingNotFound,
    NodeNotFound,
    UnknownFacility,
    UnsupportedMediaType,
)
from imaging.ingest import (
    RESOURCE_TYPE,
    STORED_BULK_PREFIX,
    Outcome,
    Received,
    Sender,
    audit_outcomes,
    read_received,
    receive_bytes,
    refused,
    refused_file,
    remove_files,
    store_batch,
)
from imaging.models import DicomNode, ImagingStudy
from imaging.multipart import MultipartError, MultipartProblem, Part, RejectedPart, iter_parts
from imaging.schemas import DicomNodeCreate
from telemed.core.audit import AuditAction, AuditEntry, AuditOutcome
from telemed.core.auth import Principal
from telemed.core.context import AppContext
from telemed.core.uow import UnitOfWork

_SPOOL_READY: Final = "imaging.spool_dir"


def _deny(uow: UnitOfWork, action: AuditAction, resource_id: str | None, reason: str) -> None:
    uow.audit(
        AuditEntry(
            action=action,
            resource_type=RESOURCE_TYPE,
            resource_id=resource_id,
            outcome=AuditOutcome.denied,
            detail={"reason": reason},
        )
    )


async def read_scope(
    uow: UnitOfWork,
    principal: Principal,
    *,
    action: AuditAction,
    resource_id: str | None,
    session: AsyncSession | None = None,
) -> frozenset[uuid.UUID]:
    """The facilities whose studies the principal may see; 403 (audited) for roles that see no images."""
    if not principal.is_clinical:
        _deny(uow, action, resource_id, "role")
        raise ImagingForbidden()
    resolver = uow.ctx.scope_resolver
    if resolver is None:
        return frozenset()
    if session is not None:
        return await resolver(session, principal)
    async with uow.ctx.db.read_session() as own_session:
        return await resolver(own_session, principal)


async def find_study(
    uow: UnitOfWork,
    principal: Principal,
    study_uid: str,
    session: AsyncSession,
    *,
    action: AuditAction = AuditAction.read,
) -> tuple[ImagingStudy, frozenset[uuid.UUID]]:
    """The study, if the principal may see it; 404 (audited) otherwise. Reads happen in ``session``."""
    scope = await read_scope(uow, principal, action=action, resource_id=study_uid[:64], session=session)
    study = await repository.study_in_scope(session, scope, study_uid)
    if study is None:
        _deny(uow, action, study_uid[:64], "not_found_or_out_of_scope")
        raise ImagingNotFound()
    return study, scope


def audit_read(uow: UnitOfWork, study_uid: str, what: str, **detail: Any) -> None:
    uow.audit(
        AuditEntry(
            action=AuditAction.read,
            resource_type=RESOURCE_TYPE,
            resource_id=study_uid,
            detail={"what": what, **{k: v for k, v in detail.items() if v is not None}},
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# STOW-RS (PS3.18 §10.5)


@dataclass(slots=True)
class StowResult:
    outcomes: list[Outcome] = field(default_factory=list)


async def store_instances(
    uow: UnitOfWork,
    *,
    principal: Principal,
    body: AsyncIterator[bytes],
    content_type: str,
    study_uid: str | None,
) -> StowResult:
    """Store the instances of a STOW-RS request, streaming the body to disk part by part.

    Parts are gathered into batches (``imaging_batch_instances`` / ``_bytes``); each batch is one transaction,
    so a request of a few hundred instances is one commit and a 2 GB upload never holds the write lock while it
    is being received. The response is sent only after the last commit: every instance it lists as stored is
    durable.
    """
    resource = study_uid[:64] if study_uid else None
    if not principal.is_clinical or principal.facility_id is None:
        _deny(uow, AuditAction.create, resource, "role")
        raise ImagingForbidden()
    ctx = uow.ctx
    settings = imaging_settings(ctx)

    async def scope() -> frozenset[uuid.UUID]:
        return await read_scope(uow, principal, action=AuditAction.create, resource_id=resource)

    sender = Sender(source="stow", facility_id=principal.facility_id, scope_loader=scope)
    spool = await spool_dir(ctx, "stow")
    charset = ctx.settings.default_dicom_charset

    result = StowResult()
    pending: list[Received] = []
    unaudited: list[Outcome] = []
    pending_bytes = 0
    seen_parts = 0
    audited = False

    async def flush() -> None:
        nonlocal pending_bytes, audited
        batch, pending[:] = list(pending), []
        pending_bytes = 0

        def audit(outcomes: list[Outcome]) -> None:  # in the batch's transaction, with the parts refused before
            nonlocal audited
            audited = audit_outcomes(uow, [*unaudited, *outcomes], source="stow") > 0 or audited

        try:
            outcomes = await store_batch(uow, batch, sender, audit=audit)  # moves or removes the batch's files
        except BaseException:
            await remove_files(item.path for item in batch)
            raise
        result.outcomes.extend(outcomes)
        unaudited.clear()

    try:
        async for part in iter_parts(
            body, content_type, spool_dir=spool, max_part_bytes=settings.imaging_max_part_bytes
        ):
            seen_parts += 1
            outcome_or_item = await _receive_part(part, charset=charset, study_uid=study_uid, spool=spool)
            if isinstance(outcome_or_item, Outcome):
                result.outcomes.append(outcome_or_item)
                unaudited.append(outcome_or_item)
                continue
            pending.append(outcome_or_item)
            pending_bytes += outcome_or_item.size
            if len(pending) >= settings.imaging_batch_instances or pending_bytes >= settings.imaging_batch_bytes:
                await flush()
    except MultipartError as error:
        if error.http_status == 415 or seen_parts == 0:
            await remove_files(item.path for item in pending)
            _audit_refused_request(uow, resource, error.reason_code.value)
            await uow.commit()
            if error.http_status == 415:
                raise UnsupportedMediaType(error.message_zh, error.message_en) from None
            raise BadStowRequest(error.message_zh, error.message_en) from None
        # Parts complete before the damage are stored; the rest of the body is reported as one failure.
        body_failure = refused(seen_parts, FailureReason.cannot_understand, error.reason_code.value, error.message_en)
        result.outcomes.append(body_failure)
        unaudited.append(body_failure)
    except BaseException:
        await remove_files(item.path for item in pending)
        raise
    if pending:
        await flush()
    if seen_parts == 0:
        _audit_refused_request(uow, resource, MultipartProblem.malformed.value)
        await uow.commit()
        raise BadStowRequest("请求中没有任何 DICOM 实例", "The request holds no DICOM instance")
    if unaudited or not audited:
        audit_outcomes(uow, unaudited, source="stow")
        if not audited and not unaudited:
            _audit_refused_request(uow, resource, "empty")
        await uow.commit()
    result.outcomes.sort(key=lambda outcome: outcome.index)
    return result


async def _receive_part(
    part: Part | RejectedPart, *, charset: str, study_uid: str | None, spool: Path
) -> Outcome | Received:
    if isinstance(part, RejectedPart):
        reason = (
            FailureReason.out_of_resources
            if part.error.reason_code is MultipartProblem.part_too_large
            else FailureReason.cannot_understand
        )
        return refused(part.index, reason, part.error.reason_code.value, part.error.message_en)
    media = part.content_type.split(";", 1)[0].strip().lower()
    if media != "application/dicom":
        await _remove_part_file(part)
        return refused(
            part.index,
            FailureReason.cannot_understand,
            "imaging.part_not_dicom",
            "Only application/dicom parts are accepted (PS3.18 §10.5.1.1).",
        )
    try:
        item = await _read_part(part, charset, spool)
    except InvalidDicom as error:
        await _remove_part_file(part)
        return refused_file(part.index, error)
    except OSError:
        await _remove_part_file(part)
        if part.data is not None:  # read from memory: it was the spool that could not be written (disk full)
            return refused(
                part.index, FailureReason.out_of_resources, "imaging.storage_failed",
                "The file could not be written to storage.",
            )  # fmt: skip
        return refused(part.index, FailureReason.processing_failure, "imaging.read_failed", "The part was unreadable.")
    if study_uid is not None and item.header.study_instance_uid != study_uid:
        await remove_files([item.path])
        return refused(
            part.index,
            FailureReason.study_mismatch,
            "imaging.study_mismatch",
            "The Study Instance UID differs from the study in the request URL.",
            item.header,
        )
    return item


async def _read_part(part: Part, charset: str, spool: Path) -> Received:
    """The part's header and hash, read in a worker thread: from its bytes, which are then written to a spool
    file in the same call, or from its spool file. When the request is cancelled meanwhile, the file is removed
    once the thread is done with it."""
    if part.data is not None:
        read = functools.partial(receive_bytes, part.index, part.data, spool, default_charset=charset)
    else:
        assert part.path is not None
        read = functools.partial(read_received, part.index, part.path, default_charset=charset)
    reading = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        return await asyncio.shield(reading)
    except asyncio.CancelledError:
        reading.add_done_callback(functools.partial(_remove_read_file, part.path))
        raise


def _remove_read_file(path: Path | None, reading: asyncio.Future[Received]) -> None:
    # exception() is asked in every case, so that a failed read nobody awaits any more is not reported as lost.
    succeeded = not reading.cancelled() and reading.exception() is None
    if path is None and succeeded:
        path = reading.result().path
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _remove_part_file(part: Part) -> None:
    if part.path is not None:
        await remove_files([part.path])


async def spool_dir(ctx: AppContext, name: str) -> Path:
    """A working folder under ``data/spool`` (``stow`` for STOW-RS parts, ``exports`` for ZIPs being built): on
    the data volume, so a 2 GB part never lands in a small /tmp, and ``telemed imaging repair`` removes what a
    crash leaves there. Made once per process."""
    path = ctx.settings.data_dir / "spool" / name
    key = f"{_SPOOL_READY}.{name}"
    if ctx.extras.get(key) != path:
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        ctx.extras[key] = path
    return path


def _audit_refused_request(uow: UnitOfWork, resource: str | None, reason: str) -> None:
    uow.audit(
        AuditEntry(
            action=AuditAction.create,
            resource_type=RESOURCE_TYPE,
            resource_id=resource,
            outcome=AuditOutcome.failed,
            detail={"source": "stow", "stored": 0, "reasons": [reason]},
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# QIDO-RS (PS3.18 §10.6)


@dataclass(frozen=True, slots=True)
class SearchResult:
    results: list[dict[str, Any]]
    warnings: list[str]


async def search(
    uow: UnitOfWork,
    *,
    principal: Principal,
    level: qido.Level,
    params: Sequence[tuple[str, str]],
    root: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> SearchResult:
    settings = imaging_settings(uow.ctx)
    query = qido.parse_query(params, level, max_results=settings.imaging_max_results)
    study_pk: int | None = None
    series_pk: int | None = None
    async with uow.ctx.db.read_session() as session:
        if study_uid is not None:
            study, scope = await find_study(uow, principal, study_uid, session, action=AuditAction.query)
            study_pk = study.id
        else:
            scope = await read_scope(uow, principal, action=AuditAction.query, resource_id=None, session=session)
        if series_uid is not None:
            assert study_pk is not None
            series = await repository.series_of_study(session, study_pk, series_uid)
            if series is None:
                _deny(uow, AuditAction.query, study_uid, "not_found")
                raise ImagingNotFound()
            series_pk = series.id
        if not scope:
            page = qido.Page([], False, [])
        elif level is qido.Level.study:
            page = await qido.search_studies(session, query, scope, root)
        elif level is qido.Level.series:
            page = await qido.search_series(session, query, scope, root, study_pk=study_pk)
        else:
            page = await qido.search_instances(session, query, scope, root, study_pk=study_pk, series_pk=series_pk)
    if page.more:
        query.warnings.append(
            "The number of results exceeded the maximum supported by the server. "
            "Additional results can be requested with offset."
        )
    uow.audit(
        AuditEntry(
            action=AuditAction.query,
            resource_type=RESOURCE_TYPE,
            resource_id=study_uid,
            detail={
                "level": level.value,
                "results": len(page.results),
                "study_uids": page.study_uids[:200],
                **({"series_uid": series_uid} if series_uid else {}),
            },
        )
    )
    return SearchResult(page.results, query.warnings)


# ---------------------------------------------------------------------------------------------------------------
# WADO-RS (PS3.18 §10.4)


#: Stored documents per chunk of a metadata response: a few hundred KB at a time, so a 500-instance study is sent
#: without building (and page-faulting in) one multi-megabyte body.
METADATA_CHUNK_DOCUMENTS: Final = 32


async def metadata(
    uow: UnitOfWork,
    *,
    principal: Principal,
    root: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Iterator[bytes]:
    """The DICOM JSON array of the instances, from the index, as UTF-8 chunks: one query and byte joins, no file,
    no parsing, no decoding. Bulk data URIs are stored relative to the DICOMweb root and made absolute here."""
    async with uow.ctx.db.read_session() as session:
        study, _scope = await find_study(uow, principal, study_uid, session)
        documents = await repository.metadata_documents(
            session, study_pk=study.id, series_uid=series_uid, sop_instance_uid=sop_instance_uid
        )
    if not documents:
        _deny(uow, AuditAction.read, study_uid, "not_found")
        raise ImagingNotFound()
    audit_read(uow, study_uid, "metadata", series_uid=series_uid, sop_instance_uid=sop_instance_uid,
               instances=len(documents))  # fmt: skip
    return _metadata_chunks(documents, root)


def _metadata_chunks(documents: list[bytes], root: str) -> Iterator[bytes]:
    stored = STORED_BULK_PREFIX.encode()
    served = f'"BulkDataURI":"{root}/studies/'.encode()
    last = len(documents) - 1
    for start in range(0, len(documents), METADATA_CHUNK_DOCUMENTS):
        end = start + METADATA_CHUNK_DOCUMENTS
        chunk = b",".join(documents[start:end]).replace(stored, served)
        opening = b"[" if start == 0 else b","
        closing = b"]" if end > last else b""
        yield opening + chunk + closing


async def instances_to_retrieve(
    uow: UnitOfWork,
    *,
    principal: Principal,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    what: str = "instances",
) -> list[repository.StoredInstance]:
    async with uow.ctx.db.read_session() as session:
        study, _scope = await find_study(uow, principal, study_uid, session)
        found = await repository.stored_instances(
            session, study_pk=study.id, series_uid=series_uid, sop_instance_uid=sop_instance_uid
        )
    if not found:
        _deny(uow, AuditAction.read, study_uid, "not_found")
        raise ImagingNotFound()
    audit_read(uow, study_uid, what, series_uid=series_uid, sop_instance_uid=sop_instance_uid,
               instances=len(found))  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------------------------------
# DICOM nodes (admin)


async def create_node(uow: UnitOfWork, *, data: DicomNodeCreate) -> DicomNode:
    session = uow.session
    if await repository.node_by_ae_title(session, data.ae_title) is not None:
        raise DuplicateNode()
    node = DicomNode(
        id=uuid.uuid4(), ae_title=data.ae_title, facility_id=data.facility_id, description=data.description
    )
    session.add(node)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        if await repository.node_by_ae_title(session, data.ae_title) is not None:
            raise DuplicateNode() from None
        raise UnknownFacility() from None
    uow.audit(
        AuditEntry(
            action=AuditAction.create,
            resource_type="dicom_node",
            resource_id=str(node.id),
            detail={"ae_title": node.ae_title, "facility_id": str(node.facility_id)},
        )
    )
    return node


async def list_nodes(uow: UnitOfWork) -> list[DicomNode]:
    async with uow.ctx.db.read_session() as session:
        return await repository.list_nodes(session)


async def delete_node(uow: UnitOfWork, *, node_id: uuid.UUID) -> None:
    node = await uow.session.get(DicomNode, node_id)
    if node is None:
        raise NodeNotFound()
    await uow.session.delete(node)
    uow.audit(
        AuditEntry(
            action=AuditAction.delete,
            resource_type="dicom_node",
            resource_id=str(node_id),
            detail={"ae_title": node.ae_title},
        )
    )
