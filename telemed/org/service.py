"""Use cases of the community registry: ``async def verb_noun(uow, *, principal, ...)``; none commits."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from telemed.core.audit import AuditAction, AuditEntry, AuditOutcome
from telemed.core.auth import Principal, Role, UserAccount, revoke_all_sessions
from telemed.core.errors import Conflict, FieldError, Forbidden, InvalidInput, field_error
from telemed.core.security import hash_password, password_problems
from telemed.core.uow import UnitOfWork
from telemed.org import events, repository
from telemed.org.errors import (
    DuplicateCode,
    DuplicatePatient,
    FacilityNotFound,
    PatientNotFound,
    UnknownReference,
)
from telemed.org.idcard import mask_id_number, parse_id_number
from telemed.org.models import Department, Facility, Patient, Region
from telemed.org.schemas import (
    DepartmentCreate,
    FacilityCreate,
    FacilityUpdate,
    PatientCreate,
    PatientIdentifiers,
    PatientRead,
    PatientSearch,
    StaffCreate,
)

PATIENT = "patient"
ID_NUMBER_INDEX = "patient.id_number"
PHONE_INDEX = "patient.phone"


def mask_phone(phone: str) -> str:
    return f"{phone[:3]}****{phone[-4:]}"


def _age(birth: dt.date, today: dt.date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _read(uow: UnitOfWork, patient: Patient, facility: Facility) -> PatientRead:
    phone_masked = None
    if patient.phone_enc:
        phone = uow.ctx.cipher.decrypt(patient.phone_enc, table=PATIENT, column="phone", row_id=str(patient.id))
        phone_masked = mask_phone(phone)
    return PatientRead(
        id=patient.id,
        name=patient.name,
        sex="male" if patient.sex == "male" else "female",
        birth_date=patient.birth_date,
        age=_age(patient.birth_date, dt.datetime.now(dt.UTC).date()),
        id_number_masked=patient.id_number_masked,
        phone_masked=phone_masked,
        facility_id=facility.id,
        facility_name=facility.name,
        created_at=patient.created_at,
    )


def encrypt_patient_identifiers(uow: UnitOfWork, patient: Patient, id_number: str, phone: str | None) -> None:
    cipher = uow.ctx.cipher
    row_id = str(patient.id)
    patient.id_number_enc = cipher.encrypt(id_number, table=PATIENT, column="id_number", row_id=row_id)
    patient.id_number_bidx = cipher.blind_index(id_number, purpose=ID_NUMBER_INDEX)
    patient.id_number_masked = mask_id_number(id_number)
    patient.phone_enc = cipher.encrypt(phone, table=PATIENT, column="phone", row_id=row_id) if phone else None
    patient.phone_bidx = cipher.blind_index(phone, purpose=PHONE_INDEX) if phone else None
    patient.key_version = cipher.current_version


async def _clinical_scope(uow: UnitOfWork, principal: Principal) -> frozenset[uuid.UUID]:
    if not principal.is_clinical:
        raise Forbidden("您的角色无权访问患者信息", "Your role has no access to patient data")
    return await repository.facility_scope(uow.session, principal)


async def register_patient(uow: UnitOfWork, *, principal: Principal, data: PatientCreate) -> PatientRead:
    scope = await _clinical_scope(uow, principal)
    facility_id = data.facility_id or principal.facility_id
    if facility_id is None or facility_id not in scope:
        raise FacilityNotFound()
    resident = parse_id_number(data.id_number)
    problems = []
    if data.birth_date is not None and data.birth_date != resident.birth_date:
        problems.append(
            FieldError(
                "birth_date",
                "birth_date.mismatch",
                "出生日期与身份证号不符",
                "The birth date does not match the ID number",
            )
        )
    if data.sex is not None and data.sex != resident.sex:
        problems.append(FieldError("sex", "sex.mismatch", "性别与身份证号不符", "The sex does not match the ID number"))
    if problems:
        raise InvalidInput(errors=problems)
    cipher = uow.ctx.cipher
    if await repository.patient_exists_with_id_number(
        uow.session, cipher.blind_index(resident.number, purpose=ID_NUMBER_INDEX)
    ):
        raise DuplicatePatient()
    patient = Patient(
        id=uuid.uuid4(),
        facility_id=facility_id,
        name=data.name,
        sex=resident.sex,
        birth_date=resident.birth_date,
        created_by=principal.user_id,
        created_at=dt.datetime.now(dt.UTC),
        extra={},
    )
    encrypt_patient_identifiers(uow, patient, resident.number, data.phone)
    uow.session.add(patient)
    try:
        await uow.session.flush()
    except IntegrityError:  # a concurrent registration of the same person won the race
        raise DuplicatePatient() from None
    uow.audit(AuditEntry(AuditAction.create, PATIENT, str(patient.id), patient_ref=str(patient.id)))
    uow.record(events.patient_registered(patient.id, facility_id, principal.user_id))
    facility = await uow.session.get(Facility, facility_id)
    assert facility is not None
    return _read(uow, patient, facility)


async def read_patient(uow: UnitOfWork, *, principal: Principal, patient_id: uuid.UUID) -> PatientRead:
    scope = await _clinical_scope(uow, principal)
    found = await repository.get_patient_in_scope(uow.session, scope, patient_id)
    if found is None:
        uow.audit(AuditEntry(AuditAction.read, PATIENT, str(patient_id), AuditOutcome.denied, str(patient_id)))
        raise PatientNotFound()
    uow.audit(AuditEntry(AuditAction.read, PATIENT, str(patient_id), patient_ref=str(patient_id)))
    return _read(uow, *found)


async def reveal_identifiers(uow: UnitOfWork, *, principal: Principal, patient_id: uuid.UUID) -> PatientIdentifiers:
    """The full ID and phone numbers, for clinicians of the registering facility only (audited as a disclosure)."""
    scope = await _clinical_scope(uow, principal)
    found = await repository.get_patient_in_scope(uow.session, scope, patient_id)
    if found is None or found[0].facility_id != principal.facility_id:
        uow.audit(
            AuditEntry(AuditAction.execute, PATIENT, str(patient_id), AuditOutcome.denied, str(patient_id),
                       detail={"op": "reveal_identifiers"})
        )  # fmt: skip
        raise PatientNotFound()
    patient = found[0]
    uow.audit(
        AuditEntry(AuditAction.execute, PATIENT, str(patient_id), patient_ref=str(patient_id),
                   detail={"op": "reveal_identifiers"})
    )  # fmt: skip
    cipher, row_id = uow.ctx.cipher, str(patient.id)
    phone = (
        cipher.decrypt(patient.phone_enc, table=PATIENT, column="phone", row_id=row_id) if patient.phone_enc else None
    )
    return PatientIdentifiers(
        id=patient.id,
        id_number=cipher.decrypt(patient.id_number_enc, table=PATIENT, column="id_number", row_id=row_id),
        phone=phone,
    )


def _audit_query(uow: UnitOfWork, rows: Sequence[tuple[Patient, Facility]], criteria: list[str]) -> None:
    uow.audit(
        AuditEntry(
            AuditAction.query,
            PATIENT,
            None,
            detail={"criteria": criteria, "patient_refs": [str(p.id) for p, _ in rows]},
        )
    )


async def list_patients(
    uow: UnitOfWork, *, principal: Principal, limit: int, offset: int
) -> tuple[list[PatientRead], int]:
    scope = await _clinical_scope(uow, principal)
    rows, total = await repository.list_patients_in_scope(uow.session, scope, limit=limit, offset=offset)
    _audit_query(uow, rows, [])
    return [_read(uow, p, f) for p, f in rows], total


async def search_patients(uow: UnitOfWork, *, principal: Principal, criteria: PatientSearch) -> list[PatientRead]:
    scope = await _clinical_scope(uow, principal)
    query = repository.scoped_patients(scope)
    used: list[str] = []
    cipher = uow.ctx.cipher
    if criteria.name:
        query = query.where(Patient.name.startswith(criteria.name, autoescape=True))
        used.append("name")
    if criteria.id_number:
        query = query.where(
            Patient.id_number_bidx == cipher.blind_index(criteria.normalized_id_number() or "", purpose=ID_NUMBER_INDEX)
        )
        used.append("id_number")
    if criteria.phone:
        phone = criteria.phone.replace(" ", "").replace("-", "")
        query = query.where(Patient.phone_bidx == cipher.blind_index(phone, purpose=PHONE_INDEX))
        used.append("phone")
    result = await uow.session.execute(query.order_by(Patient.name).limit(criteria.limit))
    rows = [(patient, facility) for patient, facility in result.all()]
    _audit_query(uow, rows, used)
    return [_read(uow, p, f) for p, f in rows]


# Registry administration -----------------------------------------------------------------------------------


def _admin_only(principal: Principal) -> None:
    if principal.role is not Role.admin:
        raise Forbidden()


async def create_facility(uow: UnitOfWork, *, principal: Principal, data: FacilityCreate) -> Facility:
    _admin_only(principal)
    if await uow.session.get(Region, data.region_id) is None:
        raise UnknownReference("region_id")
    if data.parent_id is not None and await uow.session.get(Facility, data.parent_id) is None:
        raise UnknownReference("parent_id")
    if await uow.session.scalar(select(Facility.id).where(Facility.code == data.code)) is not None:
        raise DuplicateCode(data.code)
    facility = Facility(id=uuid.uuid4(), **data.model_dump())
    uow.session.add(facility)
    await uow.session.flush()
    uow.audit(AuditEntry(AuditAction.create, "facility", str(facility.id), purpose="administration"))
    return facility


async def update_facility(
    uow: UnitOfWork, *, principal: Principal, facility_id: uuid.UUID, data: FacilityUpdate
) -> Facility:
    _admin_only(principal)
    facility = await uow.session.get(Facility, facility_id)
    if facility is None:
        raise FacilityNotFound()
    for key, value in data.model_dump(exclude_unset=True).items():
        setattr(facility, key, value)
    await uow.session.flush()
    uow.audit(AuditEntry(AuditAction.update, "facility", str(facility.id), purpose="administration"))
    return facility


async def add_department(
    uow: UnitOfWork, *, principal: Principal, facility_id: uuid.UUID, data: DepartmentCreate
) -> Department:
    _admin_only(principal)
    if await uow.session.get(Facility, facility_id) is None:
        raise FacilityNotFound()
    exists = await uow.session.scalar(
        select(Department.id).where(Department.facility_id == facility_id, Department.code == data.code)
    )
    if exists is not None:
        raise DuplicateCode(data.code)
    department = Department(id=uuid.uuid4(), facility_id=facility_id, **data.model_dump())
    uow.session.add(department)
    await uow.session.flush()
    uow.audit(AuditEntry(AuditAction.create, "department", str(department.id), purpose="administration"))
    return department


async def create_staff(uow: UnitOfWork, *, principal: Principal, data: StaffCreate) -> UserAccount:
    _admin_only(principal)
    password = data.password.get_secret_value()
    problems = password_problems(password, data.username)
    if problems:
        raise InvalidInput(errors=[field_error("password", code) for code in problems])
    if data.role is not Role.bureau_analyst and data.facility_id is None:
        raise InvalidInput(errors=[FieldError("facility_id", "missing", "必填项", "Required for this role")])
    if data.facility_id is not None and await uow.session.get(Facility, data.facility_id) is None:
        raise UnknownReference("facility_id")
    if data.department_id is not None:
        department = await uow.session.get(Department, data.department_id)
        if department is None or department.facility_id != data.facility_id:
            raise UnknownReference("department_id")
    if await uow.session.scalar(select(UserAccount.id).where(UserAccount.username == data.username)) is not None:
        raise DuplicateCode(data.username)
    account = UserAccount(
        id=uuid.uuid4(),
        username=data.username,
        password_hash=hash_password(password),
        display_name=data.display_name,
        role=data.role.value,
        facility_id=data.facility_id,
        department_id=data.department_id,
        disabled=False,
        failed_attempts=0,
    )
    uow.session.add(account)
    await uow.session.flush()
    uow.audit(AuditEntry(AuditAction.create, "user_account", str(account.id), purpose="administration"))
    return account


async def set_staff_disabled(
    uow: UnitOfWork, *, principal: Principal, user_id: uuid.UUID, disabled: bool
) -> UserAccount:
    _admin_only(principal)
    if disabled and user_id == principal.user_id:
        raise Conflict("不能停用自己的账户", "You cannot disable your own account")
    account = await uow.session.get(UserAccount, user_id)
    if account is None:
        raise UnknownReference("user_id")
    await uow.session.execute(update(UserAccount).where(UserAccount.id == user_id).values(disabled=disabled))
    if disabled:
        await revoke_all_sessions(uow.session, user_id)
        uow.record(events.staff_disabled(user_id))
    uow.audit(AuditEntry(AuditAction.update, "user_account", str(user_id), purpose="administration",
                         detail={"disabled": disabled}))  # fmt: skip
    await uow.session.refresh(account)
    return account
