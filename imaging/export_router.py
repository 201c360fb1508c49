"""HTTP layer of de-identified exports under ``/api/v1/imaging/exports``: parse, call :mod:`imaging.export`, return.

``POST`` queues an export and answers 202 with the job and its ``Location``; ``GET /{id}`` shows its progress;
``GET /{id}/download`` sends the ZIP once it is done (409 before, 410 after it expired).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from imaging import export as exports
from imaging import wado
from imaging.export import ExportOptions, ExportPurpose
from imaging.export_models import ImagingExport
from telemed.core.deps import CurrentPrincipal, UoW
from telemed.core.errors import preferred_language

PREFIX: Final = "/api/v1/imaging/exports"
NO_STORE: Final = {"Cache-Control": "no-store"}
#: A DICOM UID (PS3.5 §9.1): digits and dots, at most 64 characters.
UID_PATTERN: Final = r"^[0-9]+(\.[0-9]+)*$"

router = APIRouter(prefix=PREFIX, tags=["imaging"])


class ExportOptionsBody(BaseModel):
    """Profile options; each is off unless asked for (PS3.15 E.1 Basic Profile alone is the safe default)."""

    model_config = ConfigDict(extra="forbid")

    retain_long_full_dates: bool = Field(
        default=False, description="Keep dates and times (PS3.15 E.3.6, Retain Longitudinal Temporal Information)."
    )
    retain_patient_characteristics: bool = Field(
        default=False, description="Keep sex, age, size and weight (PS3.15 E.3.7)."
    )
    skip_burned_in_annotation: bool = Field(
        default=False,
        description="Leave out instances marked Burned In Annotation = YES instead of stopping the export.",
    )


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(min_length=1, max_length=64, pattern=UID_PATTERN)
    purpose: ExportPurpose
    options: ExportOptionsBody = Field(default_factory=ExportOptionsBody)


class ExportProgress(BaseModel):
    done: int
    total: int
    #: Left out for burned-in annotation (counted in ``done``).
    skipped: int


class ExportRead(BaseModel):
    """An export job: ids, UIDs, counts and codes only."""

    id: uuid.UUID
    study_uid: str
    purpose: ExportPurpose
    options: ExportOptionsBody
    status: str
    progress: ExportProgress
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None
    reason: str | None
    reason_message: str | None
    size_bytes: int | None
    download_url: str | None


def _read(export: ImagingExport, request: Request) -> ExportRead:
    return ExportRead(
        id=export.id,
        study_uid=export.study_uid,
        purpose=ExportPurpose(export.purpose),
        options=ExportOptionsBody(**ExportOptions.from_dict(export.options).as_dict()),
        status=export.status,
        progress=ExportProgress(
            done=export.instances_done, total=export.instances_total, skipped=export.instances_skipped
        ),
        created_at=export.created_at,
        started_at=export.started_at,
        finished_at=export.finished_at,
        expires_at=export.expires_at,
        reason=export.reason,
        reason_message=exports.reason_message(export.reason, preferred_language(request)),
        size_bytes=export.size_bytes,
        download_url=f"{PREFIX}/{export.id}/download" if export.status == exports.ExportStatus.done.value else None,
    )


@router.post(
    "",
    status_code=202,
    response_model=ExportRead,
    summary="Queue a de-identified export of a study (PS3.15 E.1 Basic Profile)",
)
async def create_export(
    uow: UoW, principal: CurrentPrincipal, request: Request, response: Response, body: ExportCreate
) -> ExportRead:
    export = await exports.create_export(
        uow,
        principal=principal,
        study_uid=body.study_uid,
        purpose=body.purpose,
        options=ExportOptions(**body.options.model_dump()),
    )
    response.headers["Location"] = f"{PREFIX}/{export.id}"
    response.headers.update(NO_STORE)
    return _read(export, request)


@router.get("", response_model=list[ExportRead], summary="The exports the caller requested, newest first")
async def list_exports(uow: UoW, principal: CurrentPrincipal, request: Request, response: Response) -> list[ExportRead]:
    response.headers.update(NO_STORE)
    return [_read(export, request) for export in await exports.list_exports(uow, principal=principal)]


@router.get("/{export_id}", response_model=ExportRead, summary="An export job and its progress")
async def get_export(
    uow: UoW, principal: CurrentPrincipal, request: Request, response: Response, export_id: uuid.UUID
) -> ExportRead:
    response.headers.update(NO_STORE)
    return _read(await exports.get_export(uow, principal=principal, export_id=export_id), request)


@router.get(
    "/{export_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "The de-identified instances as a ZIP"}},
    summary="Download a finished export (ZIP of DICOM Part 10 files and manifest.json)",
)
async def download_export(uow: UoW, principal: CurrentPrincipal, export_id: uuid.UUID) -> Response:
    download = await exports.prepare_download(uow, principal=principal, export_id=export_id)
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="{download.filename}"',
        "X-Content-Type-Options": "nosniff",
    }
    chunks = uow.ctx.storage.open_chunks(download.blob_key)
    # The first block is read now: a file that vanished (expired meanwhile) is a problem, not a cut download.
    body = await wado.start_stream(chunks)
    headers["Content-Length"] = str(download.size_bytes)
    return StreamingResponse(body, media_type="application/zip", headers=headers)
