"""The SLA job: escalate referrals nobody acknowledged in time, expire referrals past their validity.

referral-rules-notes.md §3.7: an up-referral left "待确认" past the receiver's response time is escalated to the
duty officer (the HIS code the notes cite scans every 30 minutes); a referral past its validity window expires
and can no longer be used, recorded as a status, never deleted (§5.3). Here the duty officer is the receiving
facility (or the reviewing township while under review): the ``referral.escalated`` event is addressed to it and
reaches its staff as a notification. Each tick does bounded work (at most ``limit`` rows of each kind, in one
transaction); with several workers on PostgreSQL each claims rows the others have not locked (``SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Final

from referral import repository
from referral.events import ESCALATED, owner_facility, referral_event
from referral.models import ReferralTransition
from referral.service import REFERRAL, apply_command, local_date
from referral.state import Command
from telemed.core.audit import SYSTEM_ACTOR, AuditAction, AuditEntry
from telemed.core.context import AppContext
from telemed.core.db import utcnow
from telemed.core.uow import UnitOfWork

log = logging.getLogger(__name__)

#: The policy's escalation scan interval (30 minutes in the default) is an upper bound; scanning every minute
#: escalates within a minute of the deadline at the cost of one small indexed query.
TICK_SECONDS: Final = 60.0
BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class SlaTick:
    escalated: int
    expired: int


async def run_sla_tick(ctx: AppContext, *, now: dt.datetime | None = None, limit: int = BATCH) -> SlaTick:
    """One scan: escalate up to ``limit`` overdue referrals and expire up to ``limit`` stale ones."""
    now = now or utcnow()
    async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
        overdue = await repository.overdue_for_ack(uow.session, now, limit=limit)
        for referral in overdue:
            referral.escalated_at = now
            escalate_to = str((referral.decision.get("sla") or {}).get("escalate_to") or "duty_officer")
            assert referral.ack_due_at is not None
            overdue_minutes = int((now - referral.ack_due_at).total_seconds() // 60)
            uow.session.add(
                ReferralTransition(referral_id=referral.id, command="escalate", from_status=referral.status,
                                   to_status=referral.status, at=now)
            )  # fmt: skip
            extra: dict[str, Any] = {"escalate_to": escalate_to, "overdue_minutes": overdue_minutes}
            uow.record(referral_event(ESCALATED, referral, at=now, audience=(owner_facility(referral),), extra=extra))
            uow.audit(AuditEntry(AuditAction.update, REFERRAL, str(referral.id), patient_ref=str(referral.patient_id),
                                 purpose="sla", detail={"op": "escalate", "escalate_to": escalate_to}))  # fmt: skip
        stale = await repository.past_validity(uow.session, local_date(now), limit=limit)
        for referral in stale:
            apply_command(uow, referral, Command.expire, now=now, actor=None, reason_code="expired")
            uow.audit(AuditEntry(AuditAction.update, REFERRAL, str(referral.id), patient_ref=str(referral.patient_id),
                                 purpose="sla", detail={"op": "expire"}))  # fmt: skip
        await uow.session.flush()
        await uow.commit()
    if overdue or stale:
        log.info("referral SLA scan", extra={"escalated": len(overdue), "expired": len(stale)})
    return SlaTick(len(overdue), len(stale))


async def sla_service(ctx: AppContext) -> None:
    """The background service the plugin hands the host: scan, sleep, scan, until cancelled at shutdown."""
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            await run_sla_tick(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("referral SLA scan failed; retrying at the next tick")
