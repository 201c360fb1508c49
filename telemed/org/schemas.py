"""Request and response bodies of the registry API."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from telemed.core.auth import Role
from telemed.org.idcard import InvalidIdNumber, normalize_id_number, parse_id_number

_PHONE = re.compile(r"^1[3-9]\d{9}$")


def _check_id_number(value: str) -> str:
    try:
        return parse_id_number(value).number
    except InvalidIdNumber as exc:
        raise ValueError(exc.problem.value) from None


def _check_phone(value: str) -> str:
    digits = value.strip().replace(" ", "").replace("-", "")
    if not _PHONE.match(digits):
        raise ValueError("phone.format")
    return digits


IdNumber = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_check_id_number)]
Phone = Annotated[str, Field(max_length=20), AfterValidator(_check_phone)]
Sex = Literal["male", "female"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PatientCreate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=50)]
    id_number: IdNumber
    phone: Phone | None = None
    sex: Sex | None = None
    birth_date: dt.date | None = None
    #: Where the patient is registered; defaults to the clinician's own facility, must lie within their scope.
    facility_id: uuid.UUID | None = None


class PatientSearch(Strict):
    """Search criteria travel in the body, never the query string, so that they stay out of access logs."""

    name: Annotated[str | None, Field(max_length=50)] = None
    id_number: Annotated[str | None, Field(max_length=32)] = None
    phone: Annotated[str | None, Field(max_length=20)] = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20

    def normalized_id_number(self) -> str | None:
        return normalize_id_number(self.id_number) if self.id_number else None


class PatientRead(BaseModel):
    id: uuid.UUID
    name: str
    sex: Sex
    birth_date: dt.date
    age: int
    id_number_masked: str
    phone_masked: str | None
    facility_id: uuid.UUID
    facility_name: str
    created_at: dt.datetime


class PatientIdentifiers(BaseModel):
    id: uuid.UUID
    id_number: str
    phone: str | None


class PatientPage(BaseModel):
    items: list[PatientRead]
    total: int
    limit: int
    offset: int


class RegionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str
    name: str
    level: str
    parent_id: uuid.UUID | None


class DepartmentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str
    name_zh: str
    name_en: str


class DepartmentCreate(Strict):
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
    name_zh: Annotated[str, Field(min_length=1, max_length=100)]
    name_en: Annotated[str, Field(min_length=1, max_length=100)]


Tier = Literal["county", "township", "village"]


class FacilityCreate(Strict):
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    tier: Tier
    kind: Annotated[str, Field(min_length=1, max_length=32)]
    region_id: uuid.UUID
    parent_id: uuid.UUID | None = None
    latitude: Annotated[float | None, Field(ge=-90, le=90)] = None
    longitude: Annotated[float | None, Field(ge=-180, le=180)] = None
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]] = []
    flags: list[Annotated[str, Field(pattern=r"^[a-z_]{2,40}$")]] = []
    icd10_ranges: list[Annotated[str, Field(pattern=r"^[A-Z]\d{2}(\.\d{1,2})?(-[A-Z]\d{2}(\.\d{1,2})?)?$")]] = []


class FacilityUpdate(Strict):
    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    latitude: Annotated[float | None, Field(ge=-90, le=90)] = None
    longitude: Annotated[float | None, Field(ge=-180, le=180)] = None
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]] | None = None
    flags: list[Annotated[str, Field(pattern=r"^[a-z_]{2,40}$")]] | None = None
    icd10_ranges: list[str] | None = None


class FacilityRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str
    name: str
    tier: str
    kind: str
    region_id: uuid.UUID
    parent_id: uuid.UUID | None
    latitude: float | None
    longitude: float | None
    modalities: list[str]
    flags: list[str]
    icd10_ranges: list[str]


class StaffCreate(Strict):
    username: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{2,63}$")]
    display_name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Role
    facility_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    password: SecretStr


class StaffRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    display_name: str
    role: Role
    facility_id: uuid.UUID | None
    department_id: uuid.UUID | None
    disabled: bool


class Me(BaseModel):
    id: uuid.UUID
    username: str
    display_name: str
    role: Role
    role_name_zh: str
    role_name_en: str
    facility_id: uuid.UUID | None
    facility_name: str | None
