"""What other domains may ask of the registry (synchronous queries; no commits, no patient identifiers)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from telemed.core.auth import Principal
from telemed.org import repository
from telemed.org.models import Facility, Patient, Region


@dataclass(frozen=True, slots=True)
class FacilityView:
    id: uuid.UUID
    code: str
    name: str
    tier: str
    kind: str
    region_code: str
    region_path: str
    parent_id: uuid.UUID | None
    latitude: float | None
    longitude: float | None
    modalities: tuple[str, ...]
    flags: frozenset[str]
    icd10_ranges: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PatientView:
    """Enough to refer or book a patient: no ID number, no phone."""

    id: uuid.UUID
    facility_id: uuid.UUID
    name: str
    sex: str
    birth_date_iso: str


def _view(facility: Facility, region: Region) -> FacilityView:
    return FacilityView(
        id=facility.id,
        code=facility.code,
        name=facility.name,
        tier=facility.tier,
        kind=facility.kind,
        region_code=region.code,
        region_path=region.path,
        parent_id=facility.parent_id,
        latitude=facility.latitude,
        longitude=facility.longitude,
        modalities=tuple(facility.modalities or ()),
        flags=frozenset(facility.flags or ()),
        icd10_ranges=tuple(facility.icd10_ranges or ()),
    )


async def get_facility(session: AsyncSession, facility_id: uuid.UUID) -> FacilityView | None:
    row = (
        await session.execute(
            select(Facility, Region).join(Region, Region.id == Facility.region_id).where(Facility.id == facility_id)
        )
    ).one_or_none()
    return _view(*row) if row is not None else None


async def list_facilities(session: AsyncSession, *, tiers: Sequence[str] | None = None) -> list[FacilityView]:
    query = select(Facility, Region).join(Region, Region.id == Facility.region_id).order_by(Facility.code)
    if tiers is not None:
        query = query.where(Facility.tier.in_(list(tiers)))
    return [_view(f, r) for f, r in (await session.execute(query)).all()]


async def facility_scope(session: AsyncSession, principal: Principal) -> frozenset[uuid.UUID]:
    """The facilities whose patients ``principal`` may see (empty for analysts and administrators)."""
    return await repository.facility_scope(session, principal)


async def get_patient_in_scope(
    session: AsyncSession, principal: Principal, patient_id: uuid.UUID
) -> PatientView | None:
    """The patient when ``principal`` may see them, else None. The caller audits the access it makes."""
    scope = await repository.facility_scope(session, principal)
    found = await repository.get_patient_in_scope(session, scope, patient_id)
    if found is None:
        return None
    patient: Patient = found[0]
    return PatientView(patient.id, patient.facility_id, patient.name, patient.sex, patient.birth_date.isoformat())


async def get_patient(session: AsyncSession, patient_id: uuid.UUID) -> PatientView | None:
    """Unscoped lookup for system jobs (SLA timers, dashboards); never expose it to a request directly."""
    patient = await session.get(Patient, patient_id)
    if patient is None:
        return None
    return PatientView(patient.id, patient.facility_id, patient.name, patient.sex, patient.birth_date.isoformat())
