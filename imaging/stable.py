"""Stable studies: a study with no new instance for a quiet period is complete enough to read (Orthanc's
``StableAge``, dcm4chee's "study received" trigger), and is routed to a county reading worklist.

Every worker may run the monitor: the study is claimed with a conditional UPDATE (still not stable, still quiet),
so exactly one worker marks it and records the events, in the same transaction, through the outbox. A new instance
after that makes the study unstable again (ingest clears ``stable_at``), and it is announced and routed again
once quiet: readers see the new images, and handlers are idempotent by event id anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Final

from imaging import events, repository
from imaging.config import imaging_settings
from imaging.routing import StudyFacts, load_routing
from telemed.core.audit import SYSTEM_ACTOR
from telemed.core.context import AppContext
from telemed.core.db import utcnow
from telemed.core.uow import UnitOfWork

log = logging.getLogger(__name__)

_BATCH: Final = 100
_MAX_POLL_SECONDS: Final = 5.0
_MIN_POLL_SECONDS: Final = 0.1


async def mark_stable_studies(ctx: AppContext) -> int:
    """Mark the studies that have been quiet long enough, route them and record the events; how many."""
    settings = imaging_settings(ctx)
    quiet_since = utcnow() - dt.timedelta(seconds=settings.imaging_stable_seconds)
    async with ctx.db.read_session() as session:
        candidates = await repository.quiet_studies(session, quiet_since=quiet_since, limit=_BATCH)
    if not candidates:
        return 0
    table = load_routing(settings.imaging_routing_file)
    marked = 0
    async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
        for study_pk in candidates:
            study = await repository.claim_stable(uow.session, study_pk, quiet_since=quiet_since)
            if study is None:
                continue
            content = await repository.study_content(uow.session, study_pk)
            uow.record(
                events.study_stable(
                    study_uid=study.study_uid,
                    facility_id=study.facility_id,
                    modalities=content.modalities,
                    body_parts=content.body_parts,
                    series_count=content.series_count,
                    instance_count=content.instance_count,
                )
            )
            rule = table.route(
                StudyFacts(
                    modalities=content.modalities,
                    body_parts=content.body_parts,
                    facility_id=study.facility_id,
                    calling_aes=content.calling_aes,
                )
            )
            study.worklist_code = rule.worklist.code
            study.priority = rule.priority.value
            study.routed_at = utcnow()
            uow.record(
                events.study_routed(
                    study_uid=study.study_uid,
                    facility_id=study.facility_id,
                    worklist_code=rule.worklist.code,
                    target_facility_code=rule.worklist.facility,
                    department_code=rule.worklist.department,
                    priority=rule.priority.value,
                    rule=rule.name,
                )
            )
            marked += 1
        await uow.commit()
    return marked


def poll_seconds(stable_seconds: float) -> float:
    return min(max(stable_seconds / 4, _MIN_POLL_SECONDS), _MAX_POLL_SECONDS)


async def run_stable_monitor(ctx: AppContext) -> None:
    """Background service: look for quiet studies a few times per quiet period (at most every 5 s)."""
    while True:
        await asyncio.sleep(poll_seconds(imaging_settings(ctx).imaging_stable_seconds))
        try:
            await mark_stable_studies(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("marking stable studies failed; retrying")
