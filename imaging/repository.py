"""Queries of the image index. Reads are scoped by the caller's facility scope; nothing here commits.

Writes use ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite ≥ 3.35 and PostgreSQL alike), so that two senders of
the same study at the same moment both succeed and neither sees an integrity error; the unique constraints on
the UIDs decide who was first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from sqlalchemy import ColumnElement, LargeBinary, Select, Table, and_, bindparam, func, or_, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from imaging.models import DicomNode, ImagingInstance, ImagingSeries, ImagingStudy
from telemed.core.db import Prepared, utcnow

AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)

#: Rows per multi-row INSERT: well below the bound-parameter limits of SQLite (32,766) and asyncpg (32,767).
_INSERT_CHUNK = 200


def _chunks(rows: Sequence[Mapping[str, Any]]) -> Iterable[Sequence[Mapping[str, Any]]]:
    for start in range(0, len(rows), _INSERT_CHUNK):
        yield rows[start : start + _INSERT_CHUNK]


# ---------------------------------------------------------------------------------------------------------------
# Ingest: functions of a synchronous session, run in the transaction of ``Database.submit_write``


@dataclass(frozen=True, slots=True)
class KnownInstance:
    sop_instance_uid: str
    sha256: str
    study_uid: str


@dataclass(frozen=True, slots=True)
class KnownStudy:
    pk: int
    study_uid: str
    facility_id: uuid.UUID | None


def known_instances(session: Session, sop_uids: Iterable[str]) -> dict[str, KnownInstance]:
    uids = sorted(set(sop_uids))
    if not uids:
        return {}
    rows = session.execute(
        select(ImagingInstance.sop_instance_uid, ImagingInstance.sha256, ImagingStudy.study_uid)
        .join(ImagingStudy, ImagingStudy.id == ImagingInstance.study_pk)
        .where(ImagingInstance.sop_instance_uid.in_(uids))
    )
    return {row[0]: KnownInstance(row[0], row[1], row[2]) for row in rows}


_STUDY = cast(Table, ImagingStudy.__table__)
_SERIES = cast(Table, ImagingSeries.__table__)
_INSTANCE = cast(Table, ImagingInstance.__table__)


def _insert_into(dialect: Dialect, table: Table) -> Any:
    return postgresql.insert(table) if dialect.name == "postgresql" else sqlite.insert(table)


def _study_upsert(dialect: Dialect) -> Any:
    # DO UPDATE with an unchanged value, rather than DO NOTHING, so that RETURNING also gives the rows there already.
    insert = _insert_into(dialect, _STUDY)
    return insert.on_conflict_do_update(
        index_elements=["study_uid"], set_={"study_uid": insert.excluded.study_uid}
    ).returning(_STUDY.c.id, _STUDY.c.study_uid, _STUDY.c.facility_id)


def _series_upsert(dialect: Dialect) -> Any:
    insert = _insert_into(dialect, _SERIES)
    return insert.on_conflict_do_update(
        index_elements=["series_uid"], set_={"series_uid": insert.excluded.series_uid}
    ).returning(_SERIES.c.id, _SERIES.c.series_uid, _SERIES.c.study_pk)


def _instance_insert(dialect: Dialect) -> Any:
    return _insert_into(dialect, _INSTANCE).on_conflict_do_nothing().returning(_INSTANCE.c.sop_instance_uid)


# A row alone (most transactions: one instance of one series of one study) runs straight on the driver; several go
# as one multi-row batch (Prepared.many).
_STUDIES: Final = Prepared(_study_upsert)
_SERIES_ROWS: Final = Prepared(_series_upsert)
_INSTANCES: Final = Prepared(_instance_insert)


def ensure_studies(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[str, KnownStudy]:
    """Insert the studies that are new (first sender wins) and return every one by its UID, in one statement."""
    found: dict[str, KnownStudy] = {}
    ordered = sorted(rows, key=lambda row: str(row["study_uid"]))  # one lock order for concurrent writers
    for chunk in _chunks(ordered):
        for pk, study_uid, facility_id in _STUDIES.many(session, chunk):
            found[study_uid] = KnownStudy(pk, study_uid, facility_id)
    return found


def ensure_series(session: Session, rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``series_uid -> (series pk, study pk)`` for every row, inserting the new ones; one statement."""
    found: dict[str, tuple[int, int]] = {}
    ordered = sorted(rows, key=lambda row: str(row["series_uid"]))
    for chunk in _chunks(ordered):
        for pk, series_uid, study_pk in _SERIES_ROWS.many(session, chunk):
            found[series_uid] = (pk, study_pk)
    return found


def insert_instances(session: Session, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert instance rows; the SOP Instance UIDs that were new (the others were stored by someone else)."""
    inserted: set[str] = set()
    ordered = sorted(rows, key=lambda row: str(row["sop_instance_uid"]))
    for chunk in _chunks(ordered):
        inserted.update(row[0] for row in _INSTANCES.many(session, chunk))
    return inserted


def touch_studies(session: Session, study_pks: Iterable[int]) -> None:
    """New instances arrived: the quiet period starts again (and a stable study is no longer stable)."""
    pks = sorted(set(study_pks))
    if len(pks) == 1:
        _TOUCH_ONE.rows(session, {"pk": pks[0], "now": utcnow()})
    elif pks:
        session.connection().execute(_TOUCH, {"pks": pks, "now": utcnow()})


_TOUCH: Final = (
    update(_STUDY)
    .where(_STUDY.c.id.in_(bindparam("pks", expanding=True)))
    .values(last_received_at=bindparam("now"), stable_at=None)
)
_TOUCH_ONE: Final = Prepared.of(
    update(_STUDY).where(_STUDY.c.id == bindparam("pk")).values(last_received_at=bindparam("now"), stable_at=None)
)


# ---------------------------------------------------------------------------------------------------------------
# Reads


def scoped(query: SelectT, scope: frozenset[uuid.UUID | None]) -> SelectT:
    """Limit a query that selects from ``imaging_study`` to the studies sent from facilities in ``scope``.

    ``None`` in the scope stands for studies sent by unregistered DICOM peers (development only).
    """
    ids = sorted(facility for facility in scope if facility is not None)
    condition: ColumnElement[bool] = ImagingStudy.facility_id.in_(ids)
    if None in scope:
        condition = or_(condition, ImagingStudy.facility_id.is_(None))
    return query.where(condition)


async def study_in_scope(session: AsyncSession, scope: frozenset[uuid.UUID], study_uid: str) -> ImagingStudy | None:
    if not scope:
        return None
    return (
        await session.scalars(scoped(select(ImagingStudy).where(ImagingStudy.study_uid == study_uid), scope))
    ).one_or_none()


async def series_of_study(session: AsyncSession, study_pk: int, series_uid: str) -> ImagingSeries | None:
    return (
        await session.scalars(
            select(ImagingSeries).where(ImagingSeries.study_pk == study_pk, ImagingSeries.series_uid == series_uid)
        )
    ).one_or_none()


@dataclass(frozen=True, slots=True)
class StoredInstance:
    pk: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    size: int
    blob_key: str


def _stored_instances_query() -> AnySelect:
    return (
        select(
            ImagingInstance.id,
            ImagingStudy.study_uid,
            ImagingSeries.series_uid,
            ImagingInstance.sop_instance_uid,
            ImagingInstance.sop_class_uid,
            ImagingInstance.transfer_syntax_uid,
            ImagingInstance.number_of_frames,
            ImagingInstance.size,
            ImagingInstance.blob_key,
        )
        .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_pk)
        .join(ImagingStudy, ImagingStudy.id == ImagingInstance.study_pk)
        .order_by(ImagingSeries.series_number, ImagingSeries.id, ImagingInstance.instance_number, ImagingInstance.id)
    )


async def stored_instances(
    session: AsyncSession,
    *,
    study_pk: int,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[StoredInstance]:
    query = _stored_instances_query().where(ImagingInstance.study_pk == study_pk)
    if series_uid is not None:
        query = query.where(ImagingSeries.series_uid == series_uid)
    if sop_instance_uid is not None:
        query = query.where(ImagingInstance.sop_instance_uid == sop_instance_uid)
    return [StoredInstance(*row) for row in await session.execute(query)]


def _utf8(session: AsyncSession, column: Any) -> Any:
    """``column`` (text) as its UTF-8 bytes, so that megabytes of stored JSON are neither decoded into Python
    strings by the driver nor encoded back for the response. PostgreSQL's text-to-bytea cast would read
    backslashes as escapes, so it gets ``convert_to`` instead."""
    if session.get_bind().dialect.name == "postgresql":
        return func.convert_to(column, "UTF8")
    return sql_cast(column, LargeBinary)


def metadata_query(
    session: AsyncSession, *, study_pk: int, series_uid: str | None = None, sop_instance_uid: str | None = None
) -> Select[Any]:
    """The stored documents in series and instance order, which ``ix_imaging_instance_study_order`` provides."""
    query = select(_utf8(session, ImagingInstance.dataset_json)).where(ImagingInstance.study_pk == study_pk)
    if series_uid is not None or sop_instance_uid is not None:
        query = query.join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_pk)
        if series_uid is not None:
            query = query.where(ImagingSeries.series_uid == series_uid)
        if sop_instance_uid is not None:
            query = query.where(ImagingInstance.sop_instance_uid == sop_instance_uid)
    return query.order_by(ImagingInstance.series_pk, ImagingInstance.instance_number, ImagingInstance.id)


async def metadata_documents(
    session: AsyncSession, *, study_pk: int, series_uid: str | None = None, sop_instance_uid: str | None = None
) -> list[bytes]:
    """The stored DICOM JSON of each instance as UTF-8, in series and instance order: one query, no parsing."""
    query = metadata_query(session, study_pk=study_pk, series_uid=series_uid, sop_instance_uid=sop_instance_uid)
    return list((await session.scalars(query)).all())


async def study_modalities(session: AsyncSession, study_pks: Sequence[int]) -> dict[int, list[str]]:
    if not study_pks:
        return {}
    rows = await session.execute(
        select(ImagingSeries.study_pk, ImagingSeries.modality)
        .where(ImagingSeries.study_pk.in_(sorted(set(study_pks))), ImagingSeries.modality.is_not(None))
        .distinct()
        .order_by(ImagingSeries.study_pk, ImagingSeries.modality)
    )
    found: dict[int, list[str]] = {}
    for study_pk, modality in rows:
        found.setdefault(study_pk, []).append(str(modality))
    return found


async def study_counts(session: AsyncSession, study_pks: Sequence[int]) -> dict[int, tuple[int, int]]:
    """``study pk -> (number of series, number of instances)``."""
    if not study_pks:
        return {}
    rows = await session.execute(
        select(
            ImagingInstance.study_pk,
            func.count(func.distinct(ImagingInstance.series_pk)),
            func.count(ImagingInstance.id),
        )
        .where(ImagingInstance.study_pk.in_(sorted(set(study_pks))))
        .group_by(ImagingInstance.study_pk)
    )
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


async def series_counts(session: AsyncSession, series_pks: Sequence[int]) -> dict[int, int]:
    if not series_pks:
        return {}
    rows = await session.execute(
        select(ImagingInstance.series_pk, func.count(ImagingInstance.id))
        .where(ImagingInstance.series_pk.in_(sorted(set(series_pks))))
        .group_by(ImagingInstance.series_pk)
    )
    return {row[0]: int(row[1]) for row in rows}


async def first_instance_documents(
    session: AsyncSession, *, study_pks: Sequence[int] = (), series_pks: Sequence[int] = ()
) -> dict[int, str]:
    """The DICOM JSON of the first instance of each study (or series), for ``includefield`` beyond the index."""
    if study_pks:
        key, keys = ImagingInstance.study_pk, sorted(set(study_pks))
    elif series_pks:
        key, keys = ImagingInstance.series_pk, sorted(set(series_pks))
    else:
        return {}
    first = select(func.min(ImagingInstance.id)).where(key.in_(keys)).group_by(key).scalar_subquery()
    rows = await session.execute(select(key, ImagingInstance.dataset_json).where(ImagingInstance.id.in_(first)))
    return {row[0]: row[1] for row in rows}


# ---------------------------------------------------------------------------------------------------------------
# Stable studies


async def quiet_studies(session: AsyncSession, *, quiet_since: Any, limit: int) -> list[int]:
    rows = await session.scalars(
        select(ImagingStudy.id)
        .where(ImagingStudy.stable_at.is_(None), ImagingStudy.last_received_at <= quiet_since)
        .order_by(ImagingStudy.last_received_at)
        .limit(limit)
    )
    return list(rows.all())


async def claim_stable(session: AsyncSession, study_pk: int, *, quiet_since: Any) -> ImagingStudy | None:
    """Mark a study stable unless an instance arrived meanwhile or another worker got there first."""
    result = await session.execute(
        update(ImagingStudy)
        .where(
            and_(
                ImagingStudy.id == study_pk,
                ImagingStudy.stable_at.is_(None),
                ImagingStudy.last_received_at <= quiet_since,
            )
        )
        .values(stable_at=utcnow())
        .returning(ImagingStudy.id)
    )
    if result.scalar_one_or_none() is None:
        return None
    return await session.get(ImagingStudy, study_pk, populate_existing=True)


@dataclass(frozen=True, slots=True)
class StudyContent:
    modalities: list[str]
    body_parts: list[str]
    calling_aes: list[str]
    series_count: int
    instance_count: int


async def study_content(session: AsyncSession, study_pk: int) -> StudyContent:
    series_rows = (
        await session.execute(
            select(ImagingSeries.modality, ImagingSeries.body_part).where(ImagingSeries.study_pk == study_pk)
        )
    ).all()
    aes = (
        await session.scalars(
            select(ImagingInstance.calling_ae)
            .where(ImagingInstance.study_pk == study_pk, ImagingInstance.calling_ae.is_not(None))
            .distinct()
        )
    ).all()
    instance_count = await session.scalar(
        select(func.count(ImagingInstance.id)).where(ImagingInstance.study_pk == study_pk)
    )
    return StudyContent(
        modalities=sorted({m for m, _ in series_rows if m}),
        body_parts=sorted({b for _, b in series_rows if b}),
        calling_aes=sorted({str(ae) for ae in aes if ae}),
        series_count=len(series_rows),
        instance_count=int(instance_count or 0),
    )


# ---------------------------------------------------------------------------------------------------------------
# DICOM nodes and repair


async def node_by_ae_title(session: AsyncSession, ae_title: str) -> DicomNode | None:
    return (await session.scalars(select(DicomNode).where(DicomNode.ae_title == ae_title))).one_or_none()


async def list_nodes(session: AsyncSession) -> list[DicomNode]:
    return list((await session.scalars(select(DicomNode).order_by(DicomNode.ae_title))).all())


async def all_blob_keys(session: AsyncSession) -> set[str]:
    result = await session.stream_scalars(select(ImagingInstance.blob_key).execution_options(yield_per=5000))
    return {key async for key in result}


async def blob_keys_referenced(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    rows = await session.scalars(select(ImagingInstance.blob_key).where(ImagingInstance.blob_key.in_(list(keys))))
    return set(rows.all())
