"""Queries of the registry. Every patient query is scoped by the principal's facility scope; nothing commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from telemed.core.auth import Principal
from telemed.org.models import Facility, Patient, Region

_SCOPE_KEY = "facility_scope"


async def facility_scope(session: AsyncSession, principal: Principal) -> frozenset[uuid.UUID]:
    """The facilities whose patients the principal may see: the region subtree of their own facility.

    A village doctor sees their clinic's village; a township doctor the township (centre and village clinics);
    a county specialist or radiologist the county. Analysts and administrators see no patient data at all.
    """
    cached = principal._cache.get(_SCOPE_KEY)
    if isinstance(cached, frozenset):
        return cached
    scope: frozenset[uuid.UUID] = frozenset()
    if principal.is_clinical and principal.facility_id is not None:
        own_path = (
            (select(Region.path).join(Facility, Facility.region_id == Region.id))
            .where(Facility.id == principal.facility_id)
            .scalar_subquery()
        )
        rows = await session.scalars(
            select(Facility.id)
            .join(Region, Region.id == Facility.region_id)
            .where(Region.path.startswith(own_path, autoescape=False))
        )
        scope = frozenset(rows.all())
    principal._cache[_SCOPE_KEY] = scope
    return scope


def scoped_patients(scope: frozenset[uuid.UUID]) -> Select[Patient, Facility]:
    return (
        select(Patient, Facility)
        .join(Facility, Facility.id == Patient.facility_id)
        .where(Patient.facility_id.in_(scope))
    )


async def get_patient_in_scope(
    session: AsyncSession, scope: frozenset[uuid.UUID], patient_id: uuid.UUID
) -> tuple[Patient, Facility] | None:
    row = (await session.execute(scoped_patients(scope).where(Patient.id == patient_id))).one_or_none()
    if row is None:
        return None
    patient, facility = row
    return patient, facility


async def list_patients_in_scope(
    session: AsyncSession, scope: frozenset[uuid.UUID], *, limit: int, offset: int
) -> tuple[Sequence[tuple[Patient, Facility]], int]:
    query = scoped_patients(scope).order_by(Patient.created_at.desc(), Patient.id).limit(limit).offset(offset)
    rows = [(r[0], r[1]) for r in (await session.execute(query)).all()]
    total = await session.scalar(select(func.count()).select_from(Patient).where(Patient.facility_id.in_(scope)))
    return rows, int(total or 0)


async def patient_exists_with_id_number(session: AsyncSession, blind_index: str) -> bool:
    found = await session.scalar(select(Patient.id).where(Patient.id_number_bidx == blind_index))
    return found is not None


async def region_path_of(session: AsyncSession, region_id: uuid.UUID) -> str | None:
    return await session.scalar(select(Region.path).where(Region.id == region_id))
