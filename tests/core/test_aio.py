"""``wait_event``: a poll loop's idle wait that a shutdown can always cancel."""

from __future__ import annotations

import asyncio

import pytest

from telemed.core.aio import wait_event


async def test_it_tells_a_set_event_from_a_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_cancel_that_comes_with_the_event_is_not_lost() -> None:
    """The race that kept the outbox relay alive after shutdown: a commit wakes the relay in the very moment
    the lifespan cancels it. ``asyncio.wait_for`` on Python 3.11 returns the event instead of the cancel."""
    event = asyncio.Event()
    waiter = asyncio.ensure_future(wait_event(event, 10))
    await asyncio.sleep(0)  # it waits on the event now
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
