"""The radiologist's reading workflow: a worklist of routed studies, claimed, reported and signed.

A reading task is a Unified Procedure Step (DICOM PS3.4 Annex CC, "Unified Procedure Step Service and SOP
Classes"): it is created SCHEDULED when routing puts a study on a county worklist, a performer claims it (UPS
"Change State" to IN PROGRESS, CC.2.1.1, which hands the claimer the Transaction UID that only they may use), may
release it back to SCHEDULED (the claim is given up, as dcm4chee's worklist "unclaim" does; PS3.4 itself leaves an
IN PROGRESS UPS only to COMPLETED or CANCELED, so release is our one addition to CC.1.1), and completes it by
signing the report. The server decides the next state from the current one and the command; a move that is not
in the table is refused with 409.

Who may: only radiologists (role ``radiologist``) whose facility scope holds the task's target facility (the
county facility of the worklist), and once claimed only the claimer reports, signs or releases (the UPS
Transaction UID rule). Out of scope answers 404, so that existence is not revealed; other roles 403.
Every read and write of a report is audited. Event payloads carry ids, UIDs and codes only, never names.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imaging.models import ImagingStudy
from imaging.reading_models import ReadingReport, ReadingTask
from telemed.core.audit import AuditAction, AuditEntry, AuditOutcome
from telemed.core.auth import Principal, Role
from telemed.core.context import AppContext
from telemed.core.db import utcnow
from telemed.core.errors import Conflict, Forbidden, NotFound
from telemed.core.events import DomainEvent, Envelope, first_delivery
from telemed.core.uow import UnitOfWork
from telemed.org import public as registry

log = logging.getLogger(__name__)

REPORT_SIGNED: Final = "imaging.report_signed"
TASK_RESOURCE: Final = "imaging_reading_task"
REPORT_RESOURCE: Final = "imaging_report"
CREATE_TASK_HANDLER: Final = "imaging.reading.create_task"


class TaskStatus(StrEnum):
    """UPS Procedure Step State (0074,1000), PS3.4 CC.1.1 (CANCELED is not used: a study is always read)."""

    scheduled = "scheduled"
    in_progress = "in_progress"
    completed = "completed"


class Command(StrEnum):
    claim = "claim"
    release = "release"
    report = "report"
    sign = "sign"


class ReportStatus(StrEnum):
    draft = "draft"
    signed = "signed"


S, C = TaskStatus, Command

TRANSITIONS: Final[Mapping[tuple[TaskStatus, Command], TaskStatus]] = {
    # SCHEDULED → IN PROGRESS: the performer claims the step (PS3.4 CC.1.1 Table CC.1.1-2, "N-ACTION Change
    # State to IN PROGRESS"; CC.2.1.1).
    (S.scheduled, C.claim): S.in_progress,
    # IN PROGRESS → SCHEDULED: the claimer gives the step back to the worklist (our addition, see the module doc).
    (S.in_progress, C.release): S.scheduled,
    # IN PROGRESS → IN PROGRESS: the performer updates the step's output while working (N-SET, CC.2.2).
    (S.in_progress, C.report): S.in_progress,
    # IN PROGRESS → COMPLETED: the step is finished (N-ACTION Change State to COMPLETED, CC.2.1.1); final.
    (S.in_progress, C.sign): S.completed,
}
"""``(status, command) → status``, after DICOM PS3.4 Annex CC (UPS state diagram, Figure CC.1.1-1)."""

#: States with no way out.
TERMINAL: Final = frozenset(set(TaskStatus) - {status for status, _ in TRANSITIONS})


class IllegalTransition(Conflict):
    code = "imaging.illegal_transition"
    title_zh = "当前状态下不能执行该操作"
    title_en = "This action is not possible in the reading task's current status"

    def __init__(self, status: str, command: str) -> None:
        super().__init__(
            f"阅片任务状态为“{status}”，不能执行“{command}”",
            f"The reading task is '{status}'; '{command}' is not possible",
            extra={"status_now": status, "action": command},
        )


class ReportMissing(Conflict):
    code = "imaging.report_missing"
    title_zh = "尚无报告，不能签发"
    title_en = "There is no report to sign"


class TaskNotFound(NotFound):
    code = "imaging.task_not_found"

    def __init__(self) -> None:
        super().__init__("未找到该阅片任务，或您无权查看", "No such reading task, or not within your scope")


class ReportNotFound(NotFound):
    code = "imaging.report_not_found"

    def __init__(self) -> None:
        super().__init__("未找到该报告，或您无权查看", "No such report, or not within your scope")


class NotRadiologist(Forbidden):
    code = "imaging.radiologist_only"
    title_zh = "只有影像科医生可以阅片"
    title_en = "Only radiologists read studies"


class NotClaimer(Forbidden):
    code = "imaging.not_claimer"
    title_zh = "该任务已由其他医生认领"
    title_en = "Another radiologist has claimed this task"


def next_status(status: TaskStatus, command: Command) -> TaskStatus:
    """The status after ``command``; :class:`IllegalTransition` (409) when the table has no such move."""
    target = TRANSITIONS.get((status, command))
    if target is None:
        raise IllegalTransition(status.value, command.value)
    return target


def allowed_commands(status: TaskStatus) -> list[Command]:
    return [command for (source, command) in TRANSITIONS if source is status]


# ---------------------------------------------------------------------------------------------------------------
# Events


def report_signed(task: ReadingTask, report: ReadingReport, study_uid: str) -> DomainEvent:
    """The report is signed: the sending facility (the village or township doctor) is told; ids and codes only."""
    assert report.signed_at is not None
    turnaround = (report.signed_at - task.routed_at).total_seconds()
    sender = task.sending_facility_id
    return DomainEvent(
        name=REPORT_SIGNED,
        payload={
            "task_id": str(task.id),
            "report_id": str(report.id),
            "study_uid": study_uid,
            "facility_id": str(sender) if sender else None,
            "target_facility_id": str(task.target_facility_id) if task.target_facility_id else None,
            "worklist_code": task.worklist_code,
            "priority": task.priority,
            "routed_at": task.routed_at.isoformat(),
            "signed_at": report.signed_at.isoformat(),
            "turnaround_seconds": round(max(turnaround, 0.0), 3),
        },
        audience_facilities=(str(sender),) if sender else (),
    )


async def on_study_routed(ctx: AppContext, envelope: Envelope) -> None:
    """``imaging.study_routed`` → the study's reading task (idempotent by event id).

    A study routed again (new images arrived) keeps its task: a scheduled or claimed task takes the new worklist
    and priority (the claim stays); a completed one is left alone (an addendum is not modelled yet).
    """
    payload: Mapping[str, Any] = envelope.get("payload") or {}
    async with ctx.db.session() as session, session.begin():
        if not await first_delivery(session, CREATE_TASK_HANDLER, envelope["id"]):
            return
        study = (
            await session.scalars(select(ImagingStudy).where(ImagingStudy.study_uid == str(payload["study_uid"])))
        ).one_or_none()
        if study is None:
            log.warning("routed study not in the index", extra={"event": envelope["id"]})
            return
        code = str(payload.get("target_facility_code") or "")
        target = next((f.id for f in await registry.list_facilities(session) if f.code == code), None)
        if target is None:
            log.warning("worklist facility not in the registry", extra={"worklist": payload.get("worklist_code")})
        routed_at = study.routed_at or utcnow()
        task = (await session.scalars(select(ReadingTask).where(ReadingTask.study_pk == study.id))).one_or_none()
        if task is None:
            session.add(
                ReadingTask(
                    study_pk=study.id,
                    worklist_code=str(payload["worklist_code"]),
                    target_facility_id=target,
                    sending_facility_id=study.facility_id,
                    priority=str(payload.get("priority") or "routine"),
                    status=TaskStatus.scheduled.value,
                    routed_at=routed_at,
                )
            )
        elif task.status != TaskStatus.completed.value:
            task.worklist_code = str(payload["worklist_code"])
            task.target_facility_id = target
            task.priority = str(payload.get("priority") or task.priority)
            task.updated_at = utcnow()


# ---------------------------------------------------------------------------------------------------------------
# Use cases


@dataclass(frozen=True, slots=True)
class TaskView:
    task: ReadingTask
    study_uid: str
    report: ReadingReport | None


def _deny(uow: UnitOfWork, action: AuditAction, resource_type: str, resource_id: str | None, reason: str) -> None:
    uow.audit(
        AuditEntry(
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=AuditOutcome.denied,
            detail={"reason": reason},
        )
    )


def _require_radiologist(uow: UnitOfWork, principal: Principal, action: AuditAction, resource_id: str | None) -> None:
    if principal.role is not Role.radiologist:
        _deny(uow, action, TASK_RESOURCE, resource_id, "role")
        raise NotRadiologist()


async def _scope(uow: UnitOfWork, principal: Principal, session: AsyncSession) -> frozenset[uuid.UUID]:
    resolver = uow.ctx.scope_resolver
    return await resolver(session, principal) if resolver is not None else frozenset()


async def list_worklist(
    uow: UnitOfWork, *, principal: Principal, status: TaskStatus | None = None, priority: str | None = None
) -> list[TaskView]:
    """The tasks of the worklists within the radiologist's scope, most urgent first, then oldest first."""
    _require_radiologist(uow, principal, AuditAction.query, None)
    session = uow.session
    scope = await _scope(uow, principal, session)
    query = (
        select(ReadingTask, ImagingStudy.study_uid)
        .join(ImagingStudy, ImagingStudy.id == ReadingTask.study_pk)
        .where(ReadingTask.target_facility_id.in_(scope))
    )
    if status is not None:
        query = query.where(ReadingTask.status == status.value)
    if priority is not None:
        query = query.where(ReadingTask.priority == priority)
    rank = {"stat": 0, "urgent": 1, "routine": 2}
    rows = (await session.execute(query.order_by(ReadingTask.routed_at))).all()
    views = [TaskView(task, uid, None) for task, uid in rows]
    views.sort(key=lambda v: (v.task.status == TaskStatus.completed.value, rank.get(v.task.priority, 3)))
    uow.audit(
        AuditEntry(
            action=AuditAction.query,
            resource_type=TASK_RESOURCE,
            resource_id=None,
            detail={"status": status.value if status else None, "priority": priority, "count": len(views)},
        )
    )
    return views


async def _task_in_scope(
    uow: UnitOfWork, principal: Principal, task_id: uuid.UUID, action: AuditAction
) -> tuple[ReadingTask, str]:
    _require_radiologist(uow, principal, action, str(task_id))
    session = uow.session
    row = (
        await session.execute(
            select(ReadingTask, ImagingStudy.study_uid)
            .join(ImagingStudy, ImagingStudy.id == ReadingTask.study_pk)
            .where(ReadingTask.id == task_id)
        )
    ).one_or_none()
    scope = await _scope(uow, principal, session)
    if row is None or row[0].target_facility_id is None or row[0].target_facility_id not in scope:
        _deny(uow, action, TASK_RESOURCE, str(task_id), "not_found_or_out_of_scope")
        raise TaskNotFound()
    return row[0], row[1]


def _require_claimer(uow: UnitOfWork, principal: Principal, task: ReadingTask, action: AuditAction) -> None:
    if task.status == TaskStatus.in_progress.value and task.claimed_by != principal.user_id:
        _deny(uow, action, TASK_RESOURCE, str(task.id), "not_claimer")
        raise NotClaimer()


async def _move(session: AsyncSession, task: ReadingTask, command: Command, **values: Any) -> None:
    """Apply ``command`` with a conditional UPDATE (still in the status we read), so two radiologists racing
    for one task cannot both win: the loser gets 409."""
    current = TaskStatus(task.status)
    target = next_status(current, command)
    now = utcnow()
    result = await session.execute(
        update(ReadingTask)
        .where(ReadingTask.id == task.id, ReadingTask.status == current.value)
        .values(status=target.value, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 1) != 1:
        raise IllegalTransition(current.value, command.value)
    await session.refresh(task)


async def _report_of(session: AsyncSession, task: ReadingTask) -> ReadingReport | None:
    return (await session.scalars(select(ReadingReport).where(ReadingReport.task_id == task.id))).one_or_none()


def _audit_task(uow: UnitOfWork, task: ReadingTask, command: Command, study_uid: str) -> None:
    uow.audit(AuditEntry(AuditAction.update, TASK_RESOURCE, str(task.id),
                         detail={"command": command.value, "status": task.status, "study_uid": study_uid}))  # fmt: skip


def _audit_report(uow: UnitOfWork, action: AuditAction, report: ReadingReport, study_uid: str, **detail: Any) -> None:
    uow.audit(AuditEntry(action, REPORT_RESOURCE, str(report.id),
                         detail={"task_id": str(report.task_id), "study_uid": study_uid, "status": report.status,
                                 **detail}))  # fmt: skip


async def claim_task(uow: UnitOfWork, *, principal: Principal, task_id: uuid.UUID) -> TaskView:
    task, study_uid = await _task_in_scope(uow, principal, task_id, AuditAction.update)
    await _move(uow.session, task, Command.claim, claimed_by=principal.user_id, claimed_at=utcnow())
    _audit_task(uow, task, Command.claim, study_uid)
    return TaskView(task, study_uid, await _report_of(uow.session, task))


async def release_task(uow: UnitOfWork, *, principal: Principal, task_id: uuid.UUID) -> TaskView:
    task, study_uid = await _task_in_scope(uow, principal, task_id, AuditAction.update)
    _require_claimer(uow, principal, task, AuditAction.update)
    await _move(uow.session, task, Command.release, claimed_by=None, claimed_at=None)
    _audit_task(uow, task, Command.release, study_uid)
    return TaskView(task, study_uid, await _report_of(uow.session, task))


async def write_report(
    uow: UnitOfWork, *, principal: Principal, task_id: uuid.UUID, findings: str, impression: str
) -> TaskView:
    """Create or replace the draft report of a task the principal has claimed."""
    task, study_uid = await _task_in_scope(uow, principal, task_id, AuditAction.update)
    _require_claimer(uow, principal, task, AuditAction.update)
    await _move(uow.session, task, Command.report)
    report = await _report_of(uow.session, task)
    now = utcnow()
    if report is None:
        report = ReadingReport(
            id=uuid.uuid4(),
            task_id=task.id,
            findings=findings,
            impression=impression,
            author_id=principal.user_id,
            status=ReportStatus.draft.value,
            created_at=now,
            updated_at=now,
        )
        uow.session.add(report)
        action = AuditAction.create
    else:
        report.findings, report.impression = findings, impression
        report.author_id, report.updated_at = principal.user_id, now
        action = AuditAction.update
    await uow.session.flush()
    _audit_report(uow, action, report, study_uid)
    return TaskView(task, study_uid, report)


async def sign_report(uow: UnitOfWork, *, principal: Principal, task_id: uuid.UUID) -> TaskView:
    """Sign the claimer's report: the task is completed, the report final, and the sender is told."""
    task, study_uid = await _task_in_scope(uow, principal, task_id, AuditAction.update)
    _require_claimer(uow, principal, task, AuditAction.update)
    report = await _report_of(uow.session, task)
    if task.status == TaskStatus.in_progress.value and report is None:
        raise ReportMissing()
    now = utcnow()
    await _move(uow.session, task, Command.sign, completed_at=now)
    assert report is not None
    report.status, report.signed_at, report.updated_at = ReportStatus.signed.value, now, now
    report.author_id = principal.user_id
    await uow.session.flush()
    _audit_report(uow, AuditAction.update, report, study_uid, command="sign")
    uow.record(report_signed(task, report, study_uid))
    return TaskView(task, study_uid, report)


async def read_report(
    uow: UnitOfWork, *, principal: Principal, report_id: uuid.UUID
) -> tuple[ReadingReport, ReadingTask, ImagingStudy]:
    """A report, audited. Radiologists whose scope holds the worklist's facility read drafts and signed reports;
    clinical users whose scope holds the sending facility (the doctor who sent the images) read signed ones."""
    session = uow.session
    if not principal.is_clinical:
        _deny(uow, AuditAction.read, REPORT_RESOURCE, str(report_id), "role")
        raise NotRadiologist()
    row = (
        await session.execute(
            select(ReadingReport, ReadingTask, ImagingStudy)
            .join(ReadingTask, ReadingTask.id == ReadingReport.task_id)
            .join(ImagingStudy, ImagingStudy.id == ReadingTask.study_pk)
            .where(ReadingReport.id == report_id)
        )
    ).one_or_none()
    scope = await _scope(uow, principal, session)
    visible = False
    if row is not None:
        report, task, _study = row
        reader = principal.role is Role.radiologist and task.target_facility_id in scope
        sender = report.status == ReportStatus.signed.value and task.sending_facility_id in scope
        visible = reader or sender
    if row is None or not visible:
        _deny(uow, AuditAction.read, REPORT_RESOURCE, str(report_id), "not_found_or_out_of_scope")
        raise ReportNotFound()
    report, task, study = row
    _audit_report(uow, AuditAction.read, report, study.study_uid)
    return report, task, study


def turnaround_seconds(task: ReadingTask, report: ReadingReport | None) -> float | None:
    if report is None or report.signed_at is None:
        return None
    return round(max((report.signed_at - task.routed_at).total_seconds(), 0.0), 3)


def as_utc(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
