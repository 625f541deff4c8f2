"""Small asyncio helpers the servers' loops share."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set.

    ``wait_for(event.wait(), timeout)`` inside ``suppress(TimeoutError)`` can lose
    a cancellation that arrives as the timeout fires (Python 3.11's ``wait_for``
    then raises TimeoutError instead), and a loop written that way never ends when
    its server stops.  ``asyncio.wait`` never turns a cancellation into anything else.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return bool(done)
