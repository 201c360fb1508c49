"""An accept and a withdraw of the same referral, at the same moment: exactly one wins.

Runs on the database the suite runs on: SQLite by default (writers serialised by ``BEGIN IMMEDIATE``) and
PostgreSQL when ``TEST_DATABASE_URL`` is set (``SELECT … FOR UPDATE`` on the referral row); the ``row_version``
column makes the UPDATE conditional on both.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from referral import repository
from referral.models import Referral, ReferralTransition
from tests.conftest import Community
from tests.referral.test_api import act, emergency_referral, outbox_events

ROUNDS = 6


async def _transitions(app: FastAPI, rid: str, command: str) -> int:
    async with app.state.ctx.db.read_session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(ReferralTransition)
            .where(ReferralTransition.referral_id == uuid.UUID(rid), ReferralTransition.command == command)
        )
    return int(count or 0)


async def test_a_racing_accept_and_withdraw_have_exactly_one_winner(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    vd, spec = await community.login(client, "vd_a1"), await community.login(client, "spec")
    winners: list[str] = []
    for round_number in range(ROUNDS):
        rid = await emergency_referral(client, community)
        # Alternate who is scheduled first, so that each side gets the chance to win.
        calls = [act(client, spec, rid, "accept"), act(client, vd, rid, "withdraw")]
        if round_number % 2:
            calls.reverse()
        responses = await asyncio.gather(*calls)
        by_action = dict(
            zip(["accept", "withdraw"] if round_number % 2 == 0 else ["withdraw", "accept"], responses, strict=False)
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 409], [r.text for r in responses]
        winner = next(action for action, r in by_action.items() if r.status_code == 200)
        loser = by_action["withdraw" if winner == "accept" else "accept"]
        assert loser.json()["code"] in ("referral.illegal_transition", "referral.concurrent_change")
        final = (await client.get(f"/api/v1/referrals/{rid}", headers=spec)).json()
        assert final["status"] == ("accepted" if winner == "accept" else "withdrawn")
        assert await _transitions(app, rid, "accept") + await _transitions(app, rid, "withdraw") == 1
        winners.append(winner)
    events = await outbox_events(app)
    accepted = [e for e in events if e.name == "referral.accepted"]
    withdrawn = [e for e in events if e.name == "referral.withdrawn"]
    assert len(accepted) + len(withdrawn) == ROUNDS  # the loser left no event behind
    assert len(accepted) == winners.count("accept")


async def test_two_receivers_accepting_at_once_accept_once(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    spec, rad = await community.login(client, "spec"), await community.login(client, "rad")
    for _ in range(3):
        rid = await emergency_referral(client, community)
        responses = await asyncio.gather(act(client, spec, rid, "accept"), act(client, rad, rid, "accept"))
        assert sorted(r.status_code for r in responses) == [200, 409]
        assert await _transitions(app, rid, "accept") == 1


@pytest.mark.postgres
async def test_postgres_locks_the_referral_row_until_the_winner_commits(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    """The repository's ``FOR UPDATE`` makes a second transaction wait for the first one's commit."""
    rid = uuid.UUID(await emergency_referral(client, community))
    db = app.state.ctx.db
    assert not db.is_sqlite
    scope = frozenset({community.facilities["county_hospital"]})
    async with db.read_session() as session:
        before = await session.get(Referral, rid)
        assert before is not None
    first = db.session()
    second = db.session()
    try:
        await first.begin()
        held = await repository.get_visible(first, scope, rid, for_update=True)
        assert held is not None
        await second.begin()
        waiting = asyncio.create_task(repository.get_visible(second, scope, rid, for_update=True))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # blocked on the row lock
        held.status = "accepted"
        await first.commit()
        seen = await asyncio.wait_for(waiting, timeout=10)
        assert seen is not None
        await second.refresh(seen)
        assert seen.status == "accepted"  # it read the winner's row, not a stale one
        await second.rollback()
    finally:
        await first.close()
        await second.close()
    async with db.read_session() as session:
        stored = await session.get(Referral, rid)
        assert stored is not None
        assert stored.row_version == before.row_version + 1
