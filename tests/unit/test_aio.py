"""wait_event: set, timed out, and cancelled (the cancellation is never swallowed)."""

from __future__ import annotations

import asyncio

import pytest

from chukan.gateway.core.aio import wait_event


async def test_an_event_set_meanwhile_ends_the_wait() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 10)


async def test_a_wait_without_the_event_times_out() -> None:
    assert not await wait_event(asyncio.Event(), 0.01)


async def test_a_cancelled_wait_raises_cancelled() -> None:
    task = asyncio.create_task(wait_event(asyncio.Event(), 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_as_the_timeout_fires_is_kept() -> None:
    """Cancelled in the same loop iteration as the timeout: still a cancellation."""
    for _ in range(50):
        task = asyncio.create_task(wait_event(asyncio.Event(), 0.001))
        await asyncio.sleep(0.001)
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            continue
        assert task.cancelling() == 0, "a cancellation was swallowed"
        assert result is False
