"""The table of de-identified export jobs (PS3.15 E.1 Basic Profile exports of one study, made in the background).

A row holds ids, UIDs, codes and counts only: the patient's name never reaches it, and the ZIP it points to holds
de-identified instances. ``lease_token`` / ``lease_until`` say which worker runs the job and until when it has
promised to report again; a running job whose lease has run out was abandoned by a crash and is taken up again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from telemed.core.db import Base, PortableJSON, UTCDateTime, utcnow

_BigId = BigInteger().with_variant(Integer(), "sqlite")


class ImagingExport(Base):
    """One export of one study, requested by one user (only they may see and download it)."""

    __tablename__ = "imaging_export"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    study_pk: Mapped[int] = mapped_column(_BigId, ForeignKey("imaging_study.id"), index=True)
    #: The original Study Instance UID, as the requester named it (never written into the export itself).
    study_uid: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("user_account.id"), index=True)
    #: ``teaching`` | ``second_opinion``: recorded as the purpose of every audit record of the export.
    purpose: Mapped[str] = mapped_column(String(32))
    #: The profile options asked for (``retain_long_full_dates`` ...), as booleans by name.
    options: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    #: ``queued`` | ``running`` | ``done`` | ``failed`` | ``expired`` (see ``imaging.export.TRANSITIONS``).
    status: Mapped[str] = mapped_column(String(16), index=True)
    instances_total: Mapped[int] = mapped_column(Integer, default=0)
    instances_done: Mapped[int] = mapped_column(Integer, default=0)
    #: Instances left out because their pixels may show identifying text (Burned In Annotation = YES).
    instances_skipped: Mapped[int] = mapped_column(Integer, default=0)
    #: How many times a worker has taken the job up (a crash costs one attempt; a clean shutdown none).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: A stable reason code when the job failed (``imaging.export.burned_in_annotation`` ...).
    reason: Mapped[str | None] = mapped_column(String(64))
    blob_key: Mapped[str | None] = mapped_column(String(400))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When the ZIP is deleted (set when the job is done).
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
