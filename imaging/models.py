"""The image index: studies, series and instances (the DICOM information model, PS3.3 A.1.2), and DICOM nodes.

Files live in blob storage; the index says where, and keeps each instance's DICOM JSON (PS3.18 Annex F) so that
WADO-RS metadata is served without reading a file. ``sop_instance_uid`` is unique in the database: one instance
per SOP Instance UID is a constraint, not a hope (CONVENTIONS: uniqueness that protects patients).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.db import Base, UTCDateTime, utcnow

#: An auto-incrementing 64-bit key (SQLite only auto-increments INTEGER PRIMARY KEY).
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class DicomNode(Base):
    """A DICOM peer (modality, PACS, workstation) known by its AE title, and the facility it sends for."""

    __tablename__ = "dicom_node"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImagingStudy(Base):
    """A study and the study-level attributes of its first instance; ``facility_id`` is who sent it."""

    __tablename__ = "imaging_study"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    #: The sending facility: its facility scope decides who may read the study. None: sent by an unknown AE.
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(256))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(16), index=True)
    study_time: Mapped[str | None] = mapped_column(String(32))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_description: Mapped[str | None] = mapped_column(String(256))
    #: Study ID (0020,0010), the department's own number for the study.
    dicom_study_id: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the newest instance arrived: the study is stable once this is older than the quiet period.
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    stable_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    routed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: ``{facility code}/{department code}`` of the reading worklist the routing rules chose.
    worklist_code: Mapped[str | None] = mapped_column(String(100), index=True)
    priority: Mapped[str | None] = mapped_column(String(16))


class ImagingSeries(Base):
    __tablename__ = "imaging_series"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    study_pk: Mapped[int] = mapped_column(_BigId, ForeignKey("imaging_study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    body_part: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    series_date: Mapped[str | None] = mapped_column(String(16))
    series_time: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImagingInstance(Base):
    __tablename__ = "imaging_instance"
    __table_args__ = (
        Index("ix_imaging_instance_series_order", "series_pk", "instance_number"),
        # A study's instances in the order WADO-RS metadata serves them, straight from the index: without it the
        # database sorts megabytes of stored JSON in a temporary b-tree on every request.
        Index("ix_imaging_instance_study_order", "study_pk", "series_pk", "instance_number", "id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    study_pk: Mapped[int] = mapped_column(_BigId, ForeignKey("imaging_study.id"))
    series_pk: Mapped[int] = mapped_column(_BigId, ForeignKey("imaging_series.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    number_of_frames: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the file as received: the same bytes sent again are a success, other bytes a conflict.
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(400), unique=True)
    #: Who sent this instance (may differ from the study's first sender).
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"))
    source: Mapped[str] = mapped_column(String(8))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    #: The DICOM JSON model of the header (PS3.18 F.2), compact, BulkDataURIs relative to the DICOMweb root.
    dataset_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
