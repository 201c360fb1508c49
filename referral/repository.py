"""Queries of the referral domain. Reads are scoped by the caller's facility scope; nothing here commits.

Row locks go through here (CONVENTIONS: "Row locks go through the repository"): ``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite has no row locks and instead serialises writers with ``BEGIN IMMEDIATE``, which the unit of
work's session already issues for its first statement. The ``row_version`` column makes every UPDATE
conditional as well, so two racing moves of one referral can never both win on either backend.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.models import Referral, ReferralTransition
from referral.state import AWAITING_ACK, EXPIRABLE, ReferralStatus


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    return bind.dialect.name if bind is not None else ""


def visible_to(scope: frozenset[uuid.UUID]) -> ColumnElement[bool]:
    """Referrals a clinician may see: sent from, sent to, or reviewed by a facility of their scope."""
    if not scope:
        return false()
    facilities = list(scope)
    return or_(
        Referral.from_facility_id.in_(facilities),
        Referral.to_facility_id.in_(facilities),
        Referral.review_facility_id.in_(facilities),
    )


async def get_visible(
    session: AsyncSession, scope: frozenset[uuid.UUID], referral_id: uuid.UUID, *, for_update: bool = False
) -> Referral | None:
    query = select(Referral).where(Referral.id == referral_id, visible_to(scope))
    if for_update and _dialect(session) != "sqlite":
        query = query.with_for_update(of=Referral)
    return (await session.scalars(query)).one_or_none()


async def get_for_update(session: AsyncSession, referral_id: uuid.UUID) -> Referral | None:
    """Unscoped, for system jobs and for the up-referral a visible down-referral names."""
    query = select(Referral).where(Referral.id == referral_id)
    if _dialect(session) != "sqlite":
        query = query.with_for_update()
    return (await session.scalars(query)).one_or_none()


def box_query(
    box: str, *, scope: frozenset[uuid.UUID], facility_id: uuid.UUID | None, statuses: Sequence[str]
) -> Select[Referral]:
    """``inbox``: to a facility of my scope; ``outbox``: from my facility; ``review``: awaiting my township."""
    condition: ColumnElement[bool]
    if box == "inbox":
        condition = Referral.to_facility_id.in_(list(scope)) if scope else false()
        # Drafts are the sender's own business until they are sent.
        condition = and_(condition, Referral.status != ReferralStatus.draft.value)
    elif box == "review":
        condition = Referral.review_facility_id == facility_id if facility_id else false()
    else:
        condition = Referral.from_facility_id == facility_id if facility_id else false()
    query = select(Referral).where(condition)
    if statuses:
        query = query.where(Referral.status.in_(list(statuses)))
    return query


async def list_box(
    session: AsyncSession,
    box: str,
    *,
    scope: frozenset[uuid.UUID],
    facility_id: uuid.UUID | None,
    statuses: Sequence[str],
    limit: int,
    offset: int,
) -> tuple[list[Referral], int]:
    query = box_query(box, scope=scope, facility_id=facility_id, statuses=statuses)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    # The most urgent clock first: what must be acknowledged soonest, then the newest.
    ordered = query.order_by(
        Referral.ack_due_at.is_(None), Referral.ack_due_at, Referral.created_at.desc(), Referral.id
    )
    rows = (await session.scalars(ordered.limit(limit).offset(offset))).all()
    return list(rows), int(total or 0)


async def search_visible(
    session: AsyncSession,
    scope: frozenset[uuid.UUID],
    *,
    patient_id: uuid.UUID | None,
    statuses: Sequence[str] | None,
    limit: int,
) -> list[Referral]:
    query = select(Referral).where(visible_to(scope), Referral.status != ReferralStatus.draft.value)
    if patient_id is not None:
        query = query.where(Referral.patient_id == patient_id)
    if statuses is not None:
        query = query.where(Referral.status.in_(list(statuses)))
    rows = await session.scalars(query.order_by(Referral.created_at.desc(), Referral.id).limit(limit))
    return list(rows.all())


async def history(session: AsyncSession, referral_id: uuid.UUID) -> list[ReferralTransition]:
    rows = await session.scalars(
        select(ReferralTransition)
        .where(ReferralTransition.referral_id == referral_id)
        .order_by(ReferralTransition.at, ReferralTransition.id)
    )
    return list(rows.all())


async def created_since(session: AsyncSession, since: dt.datetime, *, limit: int) -> list[Referral]:
    rows = await session.scalars(
        select(Referral).where(Referral.created_at >= since).order_by(Referral.created_at, Referral.id).limit(limit)
    )
    return list(rows.all())


def _claim(session: AsyncSession, query: Select[Referral]) -> Select[Referral]:
    # Several workers may run the SLA job: each claims rows the others have not locked (PostgreSQL).
    if _dialect(session) != "sqlite":
        return query.with_for_update(skip_locked=True)
    return query


async def overdue_for_ack(session: AsyncSession, now: dt.datetime, *, limit: int) -> list[Referral]:
    query = (
        select(Referral)
        .where(
            Referral.status.in_([s.value for s in AWAITING_ACK]),
            Referral.ack_due_at.is_not(None),
            Referral.ack_due_at <= now,
            Referral.escalated_at.is_(None),
        )
        .order_by(Referral.ack_due_at, Referral.id)
        .limit(limit)
    )
    return list((await session.scalars(_claim(session, query))).all())


async def past_validity(session: AsyncSession, today: dt.date, *, limit: int) -> list[Referral]:
    query = (
        select(Referral)
        .where(
            Referral.status.in_([s.value for s in EXPIRABLE]),
            Referral.valid_until.is_not(None),
            Referral.valid_until < today,
        )
        .order_by(Referral.valid_until, Referral.id)
        .limit(limit)
    )
    return list((await session.scalars(_claim(session, query))).all())
