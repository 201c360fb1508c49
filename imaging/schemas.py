"""Request and response bodies of the imaging API that are not DICOM JSON (DICOMweb bodies follow PS3.18)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator

from telemed.core.errors import register_validation_messages

register_validation_messages(
    {
        "ae_title.format": (
            "AE 名称为 1-16 个 ASCII 字符，不含反斜杠和控制字符",
            "An AE title has 1-16 ASCII characters, without backslash or control characters (PS3.5 §6.2)",
        ),
    }
)


class DicomNodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    facility_id: uuid.UUID
    description: str | None = Field(default=None, max_length=200)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        # AE VR: default character repertoire without control characters or backslash; spaces are not
        # significant at either end (PS3.5 Table 6.2-1).
        stripped = value.strip(" ")
        if not stripped or not stripped.isascii() or "\\" in stripped or any(ord(c) < 0x20 for c in stripped):
            raise ValueError("ae_title.format")
        return stripped


class DicomNodeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    ae_title: str
    facility_id: uuid.UUID
    description: str | None
    created_at: dt.datetime
