"""The community registry: the region tree, facilities, departments and patients. Staff accounts live in
:mod:`telemed.core.auth` (``user_account``), since signing in needs them before any domain loads."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Date, Float, ForeignKey, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.db import Base, PortableJSON, UTCDateTime, utcnow


class Region(Base):
    __tablename__ = "region"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(12), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    level: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("region.id"), index=True)
    #: Materialised path of codes (``33/3311/331121/``): a subtree is a prefix match.
    path: Mapped[str] = mapped_column(String(200), index=True)


class Facility(Base):
    __tablename__ = "facility"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    region_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("region.id"), index=True)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    modalities: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    flags: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    icd10_ranges: Mapped[list[str]] = mapped_column(PortableJSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Department(Base):
    __tablename__ = "department"
    __table_args__ = (UniqueConstraint("facility_id", "code"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100))


class Patient(Base):
    """A patient; the ID number and phone are SM4-GCM ciphertext with keyed SM3 blind indexes for lookup."""

    __tablename__ = "patient"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    sex: Mapped[str] = mapped_column(String(8))
    birth_date: Mapped[dt.date] = mapped_column(Date)
    id_number_enc: Mapped[str] = mapped_column(String(200))
    #: Unique: one person is registered once in the community (a duplicate is a 409, not a second record).
    id_number_bidx: Mapped[str] = mapped_column(String(64), unique=True)
    id_number_masked: Mapped[str] = mapped_column(String(18))
    phone_enc: Mapped[str | None] = mapped_column(String(200))
    phone_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    key_version: Mapped[int] = mapped_column(Integer, index=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    extra: Mapped[dict[str, Any]] = mapped_column(PortableJSON, default=dict)
