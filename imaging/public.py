"""What other domains may ask the imaging domain (synchronously); facts it publishes are in ``events.py``.

A referral or a consult attaches studies by Study Instance UID; these functions tell whether a study exists
within a facility scope and what it is, in codes and ids only.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from imaging import repository


@dataclass(frozen=True, slots=True)
class StudyReference:
    study_uid: str
    facility_id: uuid.UUID | None
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    stable: bool
    worklist_code: str | None
    priority: str | None
    received_at: dt.datetime


async def study_reference(session: AsyncSession, scope: frozenset[uuid.UUID], study_uid: str) -> StudyReference | None:
    """The study ``study_uid`` if it was sent from a facility in ``scope`` (the caller's facility scope)."""
    study = await repository.study_in_scope(session, scope, study_uid)
    if study is None:
        return None
    content = await repository.study_content(session, study.id)
    return StudyReference(
        study_uid=study.study_uid,
        facility_id=study.facility_id,
        modalities=tuple(content.modalities),
        series_count=content.series_count,
        instance_count=content.instance_count,
        stable=study.stable_at is not None,
        worklist_code=study.worklist_code,
        priority=study.priority,
        received_at=study.created_at,
    )
