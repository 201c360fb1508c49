"""QIDO-RS (PS3.18 §10.6): query parameters to SQL over the index, matches to DICOM JSON.

Matching follows PS3.4 C.2.2.2 as PS3.18 §8.3.4 narrows it for the web:

* single value matching; for Person Name case-insensitive and against each component group (so ``张*`` finds
  ``Zhang^San=张^三``), for other text exact;
* wildcards ``*`` and ``?`` (case-insensitive, the same on SQLite and PostgreSQL);
* UID list matching (``a\\b`` or ``a,b``);
* range matching of dates and times (``20240101-20240131``, ``-20240131``, ``20240101-``);
* universal matching (an empty value).

``fuzzymatching`` is ignored, and attributes the index cannot match are ignored too; both are reported in a
``Warning: 299`` header, as PS3.18 §8.3.4 asks. Results come from the index; ``includefield`` attributes that
the index does not hold come from the stored DICOM JSON of the first instance of the study or series.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pydicom.datadict import tag_for_keyword
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from imaging import repository
from imaging.errors import BadQuery
from imaging.models import ImagingInstance, ImagingSeries, ImagingStudy

_LIKE_ESCAPE: Final = "\\"
_DATE: Final = re.compile(r"\d{8}")
_TIME: Final = re.compile(r"\d{2,6}(\.\d{1,6})?")
_SPECIAL_PARAMETERS: Final = frozenset({"limit", "offset", "includefield", "fuzzymatching", "emptyvalue"})


class Level(StrEnum):
    study = "study"
    series = "series"
    instance = "instance"


_LEVEL_ORDER: Final = {Level.study: 0, Level.series: 1, Level.instance: 2}


class Kind(StrEnum):
    text = "text"
    uid = "uid"
    date = "date"
    time = "time"
    person = "person"
    integer = "integer"
    modalities = "modalities"


@dataclass(frozen=True, slots=True)
class Attribute:
    tag: str
    keyword: str
    vr: str
    level: Level
    kind: Kind
    column: InstrumentedAttribute[Any] | None


def _attributes() -> dict[str, Attribute]:
    s, se, i = Level.study, Level.series, Level.instance
    table = [
        ("0020000D", "StudyInstanceUID", "UI", s, Kind.uid, ImagingStudy.study_uid),
        ("00080020", "StudyDate", "DA", s, Kind.date, ImagingStudy.study_date),
        ("00080030", "StudyTime", "TM", s, Kind.time, ImagingStudy.study_time),
        ("00080050", "AccessionNumber", "SH", s, Kind.text, ImagingStudy.accession_number),
        ("00080061", "ModalitiesInStudy", "CS", s, Kind.modalities, None),
        ("00080090", "ReferringPhysicianName", "PN", s, Kind.person, ImagingStudy.referring_physician_name),
        ("00081030", "StudyDescription", "LO", s, Kind.text, ImagingStudy.study_description),
        ("00100010", "PatientName", "PN", s, Kind.person, ImagingStudy.patient_name),
        ("00100020", "PatientID", "LO", s, Kind.text, ImagingStudy.patient_id),
        ("00100030", "PatientBirthDate", "DA", s, Kind.date, ImagingStudy.patient_birth_date),
        ("00100040", "PatientSex", "CS", s, Kind.text, ImagingStudy.patient_sex),
        ("00200010", "StudyID", "SH", s, Kind.text, ImagingStudy.dicom_study_id),
        ("0020000E", "SeriesInstanceUID", "UI", se, Kind.uid, ImagingSeries.series_uid),
        ("00080060", "Modality", "CS", se, Kind.text, ImagingSeries.modality),
        ("00200011", "SeriesNumber", "IS", se, Kind.integer, ImagingSeries.series_number),
        ("0008103E", "SeriesDescription", "LO", se, Kind.text, ImagingSeries.series_description),
        ("00180015", "BodyPartExamined", "CS", se, Kind.text, ImagingSeries.body_part),
        ("00080021", "SeriesDate", "DA", se, Kind.date, ImagingSeries.series_date),
        ("00080031", "SeriesTime", "TM", se, Kind.time, ImagingSeries.series_time),
        ("00080018", "SOPInstanceUID", "UI", i, Kind.uid, ImagingInstance.sop_instance_uid),
        ("00080016", "SOPClassUID", "UI", i, Kind.uid, ImagingInstance.sop_class_uid),
        ("00200013", "InstanceNumber", "IS", i, Kind.integer, ImagingInstance.instance_number),
    ]
    return {tag: Attribute(tag, keyword, vr, level, kind, column) for tag, keyword, vr, level, kind, column in table}


MATCHABLE: Final = _attributes()
_BY_KEYWORD: Final = {attribute.keyword.lower(): attribute for attribute in MATCHABLE.values()}

#: What each level returns without being asked (PS3.18 Tables 10.6.3-3, -4 and -5, plus what OHIF reads).
STUDY_DEFAULTS: Final = (
    "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081030", "00081190",
    "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208",
)  # fmt: skip
SERIES_DEFAULTS: Final = (
    "00080005", "00080021", "00080031", "00080056", "00080060", "0008103E", "00081190", "00180015", "0020000D",
    "0020000E", "00200011", "00201209",
)  # fmt: skip
INSTANCE_DEFAULTS: Final = (
    "00080005", "00080016", "00080018", "00080056", "00081190", "0020000D", "0020000E", "00200013", "00280008",
    "00280010", "00280011",
)  # fmt: skip


def attribute_tag(name: str) -> str | None:
    """An attribute named by keyword (``PatientName``) or tag (``00100010``), as 8 upper-case hex digits."""
    cleaned = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", cleaned):
        return cleaned.upper()
    if (known := _BY_KEYWORD.get(cleaned.lower())) is not None:
        return known.tag
    tag = tag_for_keyword(cleaned)
    return f"{tag:08X}" if tag is not None else None


@dataclass(slots=True)
class Query:
    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = 0
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def parse_query(params: Sequence[tuple[str, str]], level: Level, *, max_results: int) -> Query:
    """Read the query parameters of a QIDO-RS request (PS3.18 §8.3.4); 400 for values that cannot mean anything."""
    query = Query(level=level, limit=max_results)
    unsupported: list[str] = []
    for raw_name, raw_value in params:
        name = raw_name.strip()
        lowered = name.lower()
        if lowered == "limit":
            query.limit = min(_non_negative(raw_value, "limit"), max_results) or max_results
        elif lowered == "offset":
            query.offset = _non_negative(raw_value, "offset")
        elif lowered == "includefield":
            for item in raw_value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    query.include_all = True
                elif (tag := attribute_tag(item)) is not None:
                    query.include.add(tag)
                else:
                    raise BadQuery("includefield 中有无法识别的属性", "includefield names an unknown attribute")
        elif lowered == "fuzzymatching":
            if raw_value.strip().lower() == "true":
                query.warnings.append(
                    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
                )
        elif lowered in _SPECIAL_PARAMETERS:
            continue
        else:
            tag = attribute_tag(name.split(".", 1)[0])
            attribute = MATCHABLE.get(tag) if tag and "." not in name else None
            if attribute is None or _LEVEL_ORDER[attribute.level] > _LEVEL_ORDER[level]:
                unsupported.append(name)
                continue
            if raw_value.strip():
                _validate(attribute, raw_value)
                query.filters.append((attribute, raw_value.strip()))
    if unsupported:
        # Named back in a Warning header: printable ASCII only (headers are Latin-1, and no value is echoed).
        shown = ", ".join(sorted({re.sub(r"[^A-Za-z0-9_.]", "?", name)[:64] for name in unsupported}))[:500]
        query.warnings.append(f"The following attributes are not supported for matching and were ignored: {shown}")
    return query


def _non_negative(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise BadQuery(f"{name} 应为非负整数", f"{name} must be a non-negative integer")
    return number


def _validate(attribute: Attribute, value: str) -> None:
    if attribute.kind in (Kind.date, Kind.time):
        shape = _DATE if attribute.kind is Kind.date else _TIME
        low, dash, high = value.partition("-")
        bounds = [b for b in (low, high) if b] if dash else [low]
        if not bounds or not all(shape.fullmatch(b) for b in bounds):
            raise BadQuery(
                f"{attribute.keyword} 的取值格式不正确", f"{attribute.keyword} is not a valid date, time or range"
            )
    if attribute.kind is Kind.integer:
        try:
            int(value)
        except ValueError:
            raise BadQuery(f"{attribute.keyword} 应为整数", f"{attribute.keyword} must be an integer") from None


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _text_condition(column: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
    if _has_wildcard(value):
        return func.lower(column).like(func.lower(_like_pattern(value)), escape=_LIKE_ESCAPE)
    return column == value


def _person_condition(column: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
    """Match the whole name or any one component group (PS3.5 §6.2.1.1: ``Alphabetic=Ideographic=Phonetic``)."""
    pattern = _like_pattern(value)
    lowered = func.lower(column)
    shapes = (pattern, pattern + "=%", "%=" + pattern, "%=" + pattern + "=%")
    return or_(*(lowered.like(func.lower(shape), escape=_LIKE_ESCAPE) for shape in shapes))


def _range_condition(column: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
    low, dash, high = value.partition("-")
    if not dash:
        return column == value if len(value) >= 8 or column.key.endswith("date") else column.startswith(value)
    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column <= (high if column.key.endswith("date") else _time_upper_bound(high)))
    return and_(*conditions)


def _time_upper_bound(high: str) -> str:
    """The last moment a TM upper bound names: ``10`` is up to 10:59:59.999999 (PS3.4 C.2.2.2.5)."""
    whole, dot, fraction = high.partition(".")
    whole = whole + "5959"[: max(0, 6 - len(whole))]
    return f"{whole}.{fraction.ljust(6, '9')}" if dot else f"{whole}.999999"


def _values(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]


def condition(attribute: Attribute, value: str) -> ColumnElement[bool]:
    column = attribute.column
    if attribute.kind is Kind.modalities:
        return exists(
            select(ImagingSeries.id).where(
                ImagingSeries.study_pk == ImagingStudy.id, ImagingSeries.modality.in_(_values(value))
            )
        )
    assert column is not None
    if attribute.kind is Kind.uid:
        return column.in_(_values(value))
    if attribute.kind is Kind.person:
        return _person_condition(column, value)
    if attribute.kind in (Kind.date, Kind.time):
        return _range_condition(column, value)
    if attribute.kind is Kind.integer:
        return column == int(value)
    return _text_condition(column, value)


# ---------------------------------------------------------------------------------------------------------------
# Results


def element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute of the DICOM JSON model (PS3.18 F.2.2); None or empty gives the attribute without a value."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(str(v)) for v in values]}
    return {"vr": vr, "Value": values}


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    named = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    return {name: group for name, group in named.items() if group}


def _study_attributes(study: ImagingStudy, modalities: list[str], counts: tuple[int, int], root: str) -> dict[str, Any]:
    return {
        "00080020": element("DA", study.study_date),
        "00080030": element("TM", study.study_time),
        "00080050": element("SH", study.accession_number),
        "00080061": element("CS", modalities),
        "00080090": element("PN", study.referring_physician_name),
        "00081030": element("LO", study.study_description),
        "00100010": element("PN", study.patient_name),
        "00100020": element("LO", study.patient_id),
        "00100030": element("DA", study.patient_birth_date),
        "00100040": element("CS", study.patient_sex),
        "0020000D": element("UI", study.study_uid),
        "00200010": element("SH", study.dicom_study_id),
        "00201206": element("IS", counts[0]),
        "00201208": element("IS", counts[1]),
        "00081190": element("UR", f"{root}/studies/{study.study_uid}"),
    }


def _series_attributes(series: ImagingSeries, study_uid: str, count: int, root: str) -> dict[str, Any]:
    return {
        "00080021": element("DA", series.series_date),
        "00080031": element("TM", series.series_time),
        "00080060": element("CS", series.modality),
        "0008103E": element("LO", series.series_description),
        "00180015": element("CS", series.body_part),
        "0020000D": element("UI", study_uid),
        "0020000E": element("UI", series.series_uid),
        "00200011": element("IS", series.series_number),
        "00201209": element("IS", count),
        "00081190": element("UR", f"{root}/studies/{study_uid}/series/{series.series_uid}"),
    }


_COMMON: Final = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}, "00080056": {"vr": "CS", "Value": ["ONLINE"]}}


def _extra_attributes(document: Mapping[str, Any] | None, query: Query, present: Mapping[str, Any]) -> dict[str, Any]:
    """``includefield`` attributes from a stored DICOM JSON document, without bulk data."""
    if document is None:
        return {}
    wanted = document.keys() if query.include_all else query.include
    extra: dict[str, Any] = {}
    for tag in wanted:
        if tag in present or tag not in document:
            continue
        attribute = document[tag]
        if "BulkDataURI" in attribute or tag.startswith("7FE0"):
            continue
        extra[tag] = attribute
    return extra


def _needs_documents(query: Query, defaults: Sequence[str]) -> bool:
    return query.include_all or bool(query.include - set(defaults))


def _finish(attributes: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**_COMMON, **attributes, **extra}
    return dict(sorted(merged.items()))


@dataclass(frozen=True, slots=True)
class Page:
    results: list[dict[str, Any]]
    more: bool
    study_uids: list[str]


async def search_studies(session: AsyncSession, query: Query, scope: frozenset[uuid.UUID | None], root: str) -> Page:
    statement = repository.scoped(select(ImagingStudy), scope)
    for attribute, value in query.filters:
        statement = statement.where(condition(attribute, value))
    statement = (
        statement.order_by(
            ImagingStudy.study_date.desc().nulls_last(), ImagingStudy.study_time.desc().nulls_last(),
            ImagingStudy.id.desc(),
        )
        .offset(query.offset)
        .limit(query.limit + 1)
    )  # fmt: skip
    studies = list((await session.scalars(statement)).all())
    more = len(studies) > query.limit
    studies = studies[: query.limit]
    pks = [s.id for s in studies]
    modalities = await repository.study_modalities(session, pks)
    counts = await repository.study_counts(session, pks)
    documents = (
        await repository.first_instance_documents(session, study_pks=pks)
        if _needs_documents(query, STUDY_DEFAULTS)
        else {}
    )
    results = []
    for study in studies:
        attributes = _study_attributes(study, modalities.get(study.id, []), counts.get(study.id, (0, 0)), root)
        document = _load(documents.get(study.id))
        results.append(_finish(attributes, _extra_attributes(document, query, attributes)))
    return Page(results, more, [s.study_uid for s in studies])


async def search_series(
    session: AsyncSession, query: Query, scope: frozenset[uuid.UUID | None], root: str, *, study_pk: int | None
) -> Page:
    statement = repository.scoped(
        select(ImagingSeries, ImagingStudy).join(ImagingStudy, ImagingStudy.id == ImagingSeries.study_pk), scope
    )
    if study_pk is not None:
        statement = statement.where(ImagingSeries.study_pk == study_pk)
    for attribute, value in query.filters:
        statement = statement.where(condition(attribute, value))
    statement = (
        statement.order_by(ImagingStudy.id.desc(), ImagingSeries.series_number, ImagingSeries.id)
        .offset(query.offset)
        .limit(query.limit + 1)
    )
    rows = [(row[0], row[1]) for row in await session.execute(statement)]
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    series_counts = await repository.series_counts(session, [series.id for series, _ in rows])
    study_pks = [study.id for _, study in rows] if study_pk is None else []
    modalities = await repository.study_modalities(session, study_pks)
    counts = await repository.study_counts(session, study_pks)
    documents = (
        await repository.first_instance_documents(session, series_pks=[series.id for series, _ in rows])
        if _needs_documents(query, SERIES_DEFAULTS)
        else {}
    )
    results = []
    for series, study in rows:
        attributes = _series_attributes(series, study.study_uid, series_counts.get(series.id, 0), root)
        if study_pk is None:
            study_part = _study_attributes(study, modalities.get(study.id, []), counts.get(study.id, (0, 0)), root)
            attributes = {**study_part, **attributes}
        document = _load(documents.get(series.id))
        results.append(_finish(attributes, _extra_attributes(document, query, attributes)))
    return Page(results, more, sorted({study.study_uid for _, study in rows}))


async def search_instances(
    session: AsyncSession,
    query: Query,
    scope: frozenset[uuid.UUID | None],
    root: str,
    *,
    study_pk: int | None,
    series_pk: int | None,
) -> Page:
    with_documents = _needs_documents(query, INSTANCE_DEFAULTS)
    columns: list[Any] = [
        ImagingInstance.sop_class_uid,
        ImagingInstance.sop_instance_uid,
        ImagingInstance.instance_number,
        ImagingInstance.number_of_frames,
        ImagingInstance.rows,
        ImagingInstance.columns,
    ]
    if with_documents:
        columns.append(ImagingInstance.dataset_json)
    statement = repository.scoped(
        select(ImagingSeries, ImagingStudy, *columns)
        .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_pk)
        .join(ImagingStudy, ImagingStudy.id == ImagingInstance.study_pk),
        scope,
    )
    if study_pk is not None:
        statement = statement.where(ImagingInstance.study_pk == study_pk)
    if series_pk is not None:
        statement = statement.where(ImagingInstance.series_pk == series_pk)
    for attribute, value in query.filters:
        statement = statement.where(condition(attribute, value))
    statement = (
        statement.order_by(
            ImagingStudy.id.desc(), ImagingSeries.series_number, ImagingSeries.id, ImagingInstance.instance_number,
            ImagingInstance.id,
        )
        .offset(query.offset)
        .limit(query.limit + 1)
    )  # fmt: skip
    rows = list(await session.execute(statement))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    series_list = {row[0].id: row[0] for row in rows}
    series_counts = await repository.series_counts(session, list(series_list)) if series_pk is None else {}
    study_pks = sorted({row[1].id for row in rows}) if study_pk is None else []
    modalities = await repository.study_modalities(session, study_pks)
    counts = await repository.study_counts(session, study_pks)
    results = []
    for row in rows:
        series, study = row[0], row[1]
        sop_class, sop_uid, number, frames, n_rows, n_columns = row[2:8]
        url = f"{root}/studies/{study.study_uid}/series/{series.series_uid}/instances/{sop_uid}"
        attributes: dict[str, Any] = {
            "00080016": element("UI", sop_class),
            "00080018": element("UI", sop_uid),
            "0020000D": element("UI", study.study_uid),
            "0020000E": element("UI", series.series_uid),
            "00200013": element("IS", number),
            "00280008": element("IS", frames if frames and frames > 0 else None),
            "00280010": element("US", n_rows),
            "00280011": element("US", n_columns),
            "00081190": element("UR", url),
        }
        if series_pk is None:
            series_part = _series_attributes(series, study.study_uid, series_counts.get(series.id, 0), root)
            attributes = {**series_part, **attributes}
        if study_pk is None:
            study_part = _study_attributes(study, modalities.get(study.id, []), counts.get(study.id, (0, 0)), root)
            attributes = {**study_part, **attributes}
        document = _load(row[8]) if with_documents else None
        results.append(_finish(attributes, _extra_attributes(document, query, attributes)))
    return Page(results, more, sorted({row[1].study_uid for row in rows}))


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    loaded: dict[str, Any] = json.loads(text)
    return loaded
