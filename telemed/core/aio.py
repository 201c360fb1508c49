"""Small asyncio helpers that the standard library of Python 3.11 gets subtly wrong."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed; True when it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11, a task cancelled at the moment the event is
    set gets the event's result instead of its ``CancelledError``. A background loop that polls this way then
    never ends, and shutting the app down waits for it forever (seen with the outbox relay, when a commit woke
    it just as the lifespan cancelled it). ``asyncio.timeout`` counts cancellations and lets the outside one
    through.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
