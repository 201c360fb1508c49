"""Tables of the reading workflow: a reading task per routed study, and the radiologist's report on it.

The task is a Unified Procedure Step in the sense of DICOM PS3.4 Annex CC (UPS): a scheduled piece of work on a
worklist that one performer claims, works on and completes. The report belongs to its task (one report per task).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.db import Base, UTCDateTime, utcnow

_BigId = BigInteger().with_variant(Integer(), "sqlite")


class ReadingTask(Base):
    """One study waiting to be read on a county department's worklist (a UPS, PS3.4 CC.1)."""

    __tablename__ = "imaging_reading_task"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: One task per study: a study routed again (new images) updates its open task.
    study_pk: Mapped[int] = mapped_column(_BigId, ForeignKey("imaging_study.id"), unique=True)
    #: ``{facility code}/{department code}``, as the routing rules chose it.
    worklist_code: Mapped[str] = mapped_column(String(100), index=True)
    #: The county facility the worklist belongs to (None when its code is not in the registry: nobody may claim).
    target_facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"), index=True)
    #: The facility that sent the images: it is told when the report is signed.
    sending_facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("facility.id"))
    priority: Mapped[str] = mapped_column(String(16), index=True)
    #: ``scheduled`` | ``in_progress`` | ``completed`` (UPS Procedure Step State, PS3.4 CC.1.1).
    status: Mapped[str] = mapped_column(String(16), index=True)
    claimed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_account.id"))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    routed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReadingReport(Base):
    """The radiologist's report: a draft while being written, signed once (then it never changes)."""

    __tablename__ = "imaging_report"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("imaging_reading_task.id"), unique=True)
    findings: Mapped[str] = mapped_column(Text)
    impression: Mapped[str] = mapped_column(Text)
    author_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("user_account.id"))
    #: ``draft`` | ``signed``.
    status: Mapped[str] = mapped_column(String(16))
    signed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
