"""Seeds the demo county (``telemed demo``) into the database: idempotent and deterministic for a seed."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from telemed.core.audit import SYSTEM_ACTOR, AuditAction, AuditEntry
from telemed.core.auth import ROLE_NAMES, Role, UserAccount
from telemed.core.context import AppContext
from telemed.core.security import hash_password
from telemed.core.uow import UnitOfWork
from telemed.org.demo_data import DemoCounty, build_demo_county
from telemed.org.models import Department, Facility, Patient, Region
from telemed.org.service import encrypt_patient_identifiers

#: Every demo account shares this password (12+ characters, four classes); it is printed with the logins.
DEMO_PASSWORD: Final = "Demo@County2026"
#: Birth dates of the demo residents are bounded by this fixed day, so a seed always gives the same people.
DEMO_TODAY: Final = dt.date(2026, 1, 1)


@dataclass(frozen=True, slots=True)
class DemoLogin:
    role: Role
    username: str
    display_name: str
    facility_name: str | None


@dataclass(frozen=True, slots=True)
class DemoSummary:
    created: bool
    regions: int
    facilities: int
    staff: int
    patients: int
    logins: list[DemoLogin]


async def _counts(session: AsyncSession) -> tuple[int, int, int, int]:
    async def count(model: type[Region] | type[Facility] | type[UserAccount] | type[Patient]) -> int:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    return await count(Region), await count(Facility), await count(UserAccount), await count(Patient)


def _logins(county: DemoCounty) -> list[DemoLogin]:
    """The first account of each role, the ones a newcomer tries first."""
    names = {f.code: f.name for f in county.facilities}
    seen: set[str] = set()
    out = []
    for staff in county.staff:
        if staff.role in seen:
            continue
        seen.add(staff.role)
        out.append(
            DemoLogin(Role(staff.role), staff.username, staff.full_name,
                      names.get(staff.facility_code) if staff.facility_code else None)
        )  # fmt: skip
    return out


async def seed_demo_county(ctx: AppContext, *, seed: int = 2026, patients: int = 3000) -> DemoSummary:
    county = build_demo_county(seed, patients=patients, today=DEMO_TODAY)
    async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
        session = uow.session
        existing = await session.scalar(select(Region.id).where(Region.code == county.regions[0].code))
        if existing is not None:
            regions, facilities, staff, patient_count = await _counts(session)
            return DemoSummary(False, regions, facilities, staff, patient_count, _logins(county))

        region_ids: dict[str, uuid.UUID] = {}
        region_paths: dict[str, str] = {}
        for r in county.regions:
            rid = uuid.uuid4()
            parent_path = region_paths[r.parent_code] if r.parent_code else ""
            region_ids[r.code], region_paths[r.code] = rid, f"{parent_path}{r.code}/"
            session.add(Region(id=rid, code=r.code, name=r.name, level=r.level,
                               parent_id=region_ids[r.parent_code] if r.parent_code else None,
                               path=region_paths[r.code]))  # fmt: skip
        await session.flush()

        facility_ids: dict[str, uuid.UUID] = {}
        department_ids: dict[tuple[str, str], uuid.UUID] = {}
        for f in county.facilities:
            fid = facility_ids[f.code] = uuid.uuid4()
            session.add(
                Facility(id=fid, code=f.code, name=f.name, tier=f.tier, kind=f.kind,
                         region_id=region_ids[f.region_code],
                         parent_id=facility_ids[f.parent_code] if f.parent_code else None,
                         latitude=f.latitude, longitude=f.longitude, modalities=list(f.modalities),
                         flags=list(f.flags), icd10_ranges=list(f.icd10_ranges))
            )  # fmt: skip
            await session.flush()
            for d in f.departments:
                did = department_ids[(f.code, d.code)] = uuid.uuid4()
                session.add(Department(id=did, facility_id=fid, code=d.code, name_zh=d.name_zh, name_en=d.name_en))
        await session.flush()

        # One Argon2id hash for the shared demo password: hashing 260 accounts one by one would cost seconds.
        password_hash = hash_password(DEMO_PASSWORD)
        for s in county.staff:
            session.add(
                UserAccount(id=uuid.uuid4(), username=s.username, password_hash=password_hash,
                            display_name=s.full_name, role=s.role,
                            facility_id=facility_ids[s.facility_code] if s.facility_code else None,
                            department_id=department_ids.get((s.facility_code or "", s.department_code or "")),
                            disabled=False, failed_attempts=0)
            )  # fmt: skip
        await session.flush()

        now = dt.datetime.now(dt.UTC)
        for p in county.patients:
            patient = Patient(id=uuid.uuid4(), facility_id=facility_ids[p.facility_code], name=p.full_name,
                              sex=p.sex, birth_date=p.birth_date, created_at=now, extra={})  # fmt: skip
            encrypt_patient_identifiers(uow, patient, p.id_number, p.phone)
            session.add(patient)
        uow.audit(
            AuditEntry(AuditAction.create, "demo_county", county.regions[0].code, purpose="demo_seed",
                       detail={"seed": seed, "patients": len(county.patients)})
        )  # fmt: skip
        await uow.commit()
    return DemoSummary(True, len(county.regions), len(county.facilities), len(county.staff),
                       len(county.patients), _logins(county))  # fmt: skip


def format_logins(summary: DemoSummary, url: str) -> str:
    lines = [
        f"演示县已就绪 Demo county ready: {summary.facilities} 家机构 facilities, {summary.staff} 名员工 staff, "
        f"{summary.patients} 名患者 patients",
        f"打开 Open {url}  —  所有演示账号密码 password for every demo account: {DEMO_PASSWORD}",
    ]
    for login in summary.logins:
        zh, en = ROLE_NAMES[login.role]
        lines.append(f"  {zh:<8} {en:<22} {login.username:<14} {login.display_name}  {login.facility_name or ''}")
    return "\n".join(lines)
