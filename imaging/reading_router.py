"""HTTP layer of the reading workflow under ``/api/v1/imaging/worklist``: parse, call :mod:`imaging.reading`, return."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from imaging import reading
from imaging.reading import TaskStatus, TaskView
from imaging.routing import Priority
from telemed.core.deps import CurrentPrincipal, UoW

router = APIRouter(prefix="/api/v1/imaging/worklist", tags=["imaging"])


class ReportWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    findings: str = Field(min_length=1, max_length=20_000)
    impression: str = Field(min_length=1, max_length=5_000)


class ReportRead(BaseModel):
    id: uuid.UUID
    status: str
    findings: str
    impression: str
    author_id: uuid.UUID
    signed_at: dt.datetime | None
    updated_at: dt.datetime


class TaskRead(BaseModel):
    """A worklist entry: ids, UIDs and codes (the images and the patient are read through DICOMweb)."""

    id: uuid.UUID
    study_uid: str
    worklist_code: str
    target_facility_id: uuid.UUID | None
    sending_facility_id: uuid.UUID | None
    priority: str
    status: str
    allowed_commands: list[str]
    claimed_by: uuid.UUID | None
    claimed_at: dt.datetime | None
    routed_at: dt.datetime
    completed_at: dt.datetime | None
    turnaround_seconds: float | None
    report: ReportRead | None = None


def _task(view: TaskView) -> TaskRead:
    task, report = view.task, view.report
    return TaskRead(
        id=task.id,
        study_uid=view.study_uid,
        worklist_code=task.worklist_code,
        target_facility_id=task.target_facility_id,
        sending_facility_id=task.sending_facility_id,
        priority=task.priority,
        status=task.status,
        allowed_commands=[c.value for c in reading.allowed_commands(TaskStatus(task.status))],
        claimed_by=task.claimed_by,
        claimed_at=task.claimed_at,
        routed_at=task.routed_at,
        completed_at=task.completed_at,
        turnaround_seconds=reading.turnaround_seconds(task, report),
        report=None
        if report is None
        else ReportRead(
            id=report.id,
            status=report.status,
            findings=report.findings,
            impression=report.impression,
            author_id=report.author_id,
            signed_at=report.signed_at,
            updated_at=report.updated_at,
        ),
    )


@router.get("", response_model=list[TaskRead], summary="The reading worklist within the radiologist's scope")
async def list_worklist(
    uow: UoW,
    principal: CurrentPrincipal,
    status: Annotated[TaskStatus | None, Query()] = None,
    priority: Annotated[Priority | None, Query()] = None,
) -> list[TaskRead]:
    views = await reading.list_worklist(
        uow, principal=principal, status=status, priority=priority.value if priority else None
    )
    return [_task(view) for view in views]


@router.post("/{task_id}/claim", response_model=TaskRead, summary="Claim a scheduled task (UPS → IN PROGRESS)")
async def claim(uow: UoW, principal: CurrentPrincipal, task_id: uuid.UUID) -> TaskRead:
    return _task(await reading.claim_task(uow, principal=principal, task_id=task_id))


@router.post("/{task_id}/release", response_model=TaskRead, summary="Give a claimed task back (→ SCHEDULED)")
async def release(uow: UoW, principal: CurrentPrincipal, task_id: uuid.UUID) -> TaskRead:
    return _task(await reading.release_task(uow, principal=principal, task_id=task_id))


@router.put("/{task_id}/report", response_model=TaskRead, summary="Write the draft report of a claimed task")
async def write_report(uow: UoW, principal: CurrentPrincipal, task_id: uuid.UUID, body: ReportWrite) -> TaskRead:
    view = await reading.write_report(
        uow, principal=principal, task_id=task_id, findings=body.findings, impression=body.impression
    )
    return _task(view)


@router.post("/{task_id}/sign", response_model=TaskRead, summary="Sign the report (UPS → COMPLETED)")
async def sign(uow: UoW, principal: CurrentPrincipal, task_id: uuid.UUID) -> TaskRead:
    return _task(await reading.sign_report(uow, principal=principal, task_id=task_id))
