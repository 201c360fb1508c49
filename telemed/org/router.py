"""HTTP layer of the registry: parse, call the service, return."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import select

from telemed.core.auth import ROLE_NAMES, Principal, Role, UserAccount
from telemed.core.deps import CurrentPrincipal, UoW, require_roles
from telemed.org import service
from telemed.org.errors import FacilityNotFound
from telemed.org.models import Department, Facility, Region
from telemed.org.schemas import (
    DepartmentCreate,
    DepartmentRead,
    FacilityCreate,
    FacilityRead,
    FacilityUpdate,
    Me,
    PatientCreate,
    PatientIdentifiers,
    PatientPage,
    PatientRead,
    PatientSearch,
    RegionRead,
    StaffCreate,
    StaffRead,
)

router = APIRouter(prefix="/api/v1")
AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.admin))]


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


@router.get("/me", response_model=Me, tags=["auth"])
async def me(uow: UoW, principal: CurrentPrincipal) -> Me:
    facility = await uow.session.get(Facility, principal.facility_id) if principal.facility_id else None
    zh, en = ROLE_NAMES[principal.role]
    return Me(
        id=principal.user_id,
        username=principal.username,
        display_name=principal.display_name,
        role=principal.role,
        role_name_zh=zh,
        role_name_en=en,
        facility_id=principal.facility_id,
        facility_name=facility.name if facility else None,
    )


@router.post("/patients", response_model=PatientRead, status_code=201, tags=["patients"])
async def register_patient(
    uow: UoW, principal: CurrentPrincipal, data: PatientCreate, response: Response
) -> PatientRead:
    _no_store(response)
    return await service.register_patient(uow, principal=principal, data=data)


@router.get("/patients", response_model=PatientPage, tags=["patients"])
async def list_patients(
    uow: UoW,
    principal: CurrentPrincipal,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PatientPage:
    _no_store(response)
    items, total = await service.list_patients(uow, principal=principal, limit=limit, offset=offset)
    return PatientPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/patients/search", response_model=list[PatientRead], tags=["patients"])
async def search_patients(
    uow: UoW, principal: CurrentPrincipal, criteria: PatientSearch, response: Response
) -> list[PatientRead]:
    _no_store(response)
    return await service.search_patients(uow, principal=principal, criteria=criteria)


@router.get("/patients/{patient_id}", response_model=PatientRead, tags=["patients"])
async def read_patient(uow: UoW, principal: CurrentPrincipal, patient_id: uuid.UUID, response: Response) -> PatientRead:
    _no_store(response)
    return await service.read_patient(uow, principal=principal, patient_id=patient_id)


@router.post("/patients/{patient_id}/identifiers", response_model=PatientIdentifiers, tags=["patients"])
async def reveal_identifiers(
    uow: UoW, principal: CurrentPrincipal, patient_id: uuid.UUID, response: Response
) -> PatientIdentifiers:
    _no_store(response)
    return await service.reveal_identifiers(uow, principal=principal, patient_id=patient_id)


@router.get("/regions", response_model=list[RegionRead], tags=["registry"])
async def list_regions(
    uow: UoW, principal: CurrentPrincipal, parent_id: uuid.UUID | None = None, level: str | None = None
) -> list[Region]:
    query = select(Region).order_by(Region.code)
    if parent_id is not None:
        query = query.where(Region.parent_id == parent_id)
    if level is not None:
        query = query.where(Region.level == level)
    return list((await uow.session.scalars(query.limit(2000))).all())


@router.get("/facilities", response_model=list[FacilityRead], tags=["registry"])
async def list_facilities(
    uow: UoW,
    principal: CurrentPrincipal,
    tier: str | None = None,
    region_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Facility]:
    query = select(Facility).order_by(Facility.code)
    if tier is not None:
        query = query.where(Facility.tier == tier)
    if region_id is not None:
        query = query.where(Facility.region_id == region_id)
    return list((await uow.session.scalars(query.limit(limit).offset(offset))).all())


@router.get("/facilities/{facility_id}", response_model=FacilityRead, tags=["registry"])
async def read_facility(uow: UoW, principal: CurrentPrincipal, facility_id: uuid.UUID) -> Facility:
    facility = await uow.session.get(Facility, facility_id)
    if facility is None:
        raise FacilityNotFound()
    return facility


@router.get("/facilities/{facility_id}/departments", response_model=list[DepartmentRead], tags=["registry"])
async def list_departments(uow: UoW, principal: CurrentPrincipal, facility_id: uuid.UUID) -> list[Department]:
    rows = await uow.session.scalars(
        select(Department).where(Department.facility_id == facility_id).order_by(Department.code)
    )
    return list(rows.all())


@router.post("/facilities", response_model=FacilityRead, status_code=201, tags=["registry"])
async def create_facility(uow: UoW, principal: AdminPrincipal, data: FacilityCreate) -> Facility:
    return await service.create_facility(uow, principal=principal, data=data)


@router.patch("/facilities/{facility_id}", response_model=FacilityRead, tags=["registry"])
async def update_facility(
    uow: UoW, principal: AdminPrincipal, facility_id: uuid.UUID, data: FacilityUpdate
) -> Facility:
    return await service.update_facility(uow, principal=principal, facility_id=facility_id, data=data)


@router.post("/facilities/{facility_id}/departments", response_model=DepartmentRead, status_code=201, tags=["registry"])
async def add_department(
    uow: UoW, principal: AdminPrincipal, facility_id: uuid.UUID, data: DepartmentCreate
) -> Department:
    return await service.add_department(uow, principal=principal, facility_id=facility_id, data=data)


@router.get("/staff", response_model=list[StaffRead], tags=["registry"])
async def list_staff(
    uow: UoW,
    principal: AdminPrincipal,
    facility_id: uuid.UUID | None = None,
    role: Role | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[UserAccount]:
    query = select(UserAccount).order_by(UserAccount.username)
    if facility_id is not None:
        query = query.where(UserAccount.facility_id == facility_id)
    if role is not None:
        query = query.where(UserAccount.role == role.value)
    return list((await uow.session.scalars(query.limit(limit).offset(offset))).all())


@router.post("/staff", response_model=StaffRead, status_code=201, tags=["registry"])
async def create_staff(uow: UoW, principal: AdminPrincipal, data: StaffCreate) -> UserAccount:
    return await service.create_staff(uow, principal=principal, data=data)


@router.post("/staff/{user_id}/disable", response_model=StaffRead, tags=["registry"])
async def disable_staff(uow: UoW, principal: AdminPrincipal, user_id: uuid.UUID) -> UserAccount:
    return await service.set_staff_disabled(uow, principal=principal, user_id=user_id, disabled=True)


@router.post("/staff/{user_id}/enable", response_model=StaffRead, tags=["registry"])
async def enable_staff(uow: UoW, principal: AdminPrincipal, user_id: uuid.UUID) -> UserAccount:
    return await service.set_staff_disabled(uow, principal=principal, user_id=user_id, disabled=False)
