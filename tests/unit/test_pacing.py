"""PeerLimit: requests to one peer wait for a slot; the limit halves on congestion, grows on
prompt answers, and is unmoved by a refusal that says nothing of the peer's load."""

from __future__ import annotations

import asyncio

import pytest

from chukan.gateway.core.pacing import PeerLimit

#: A timeout no attempt here comes near: every answer is prompt.
FOREVER = 1e9


async def run_ready_tasks() -> None:
    """Let every task started run until it waits (a few turns of the loop, no clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_request_over_the_limit_waits_for_a_slot_first_come_first_served() -> None:
    limit = PeerLimit(FOREVER, initial=2)
    release = asyncio.Event()
    order: list[str] = []

    async def request(name: str) -> None:
        async with limit.slot():
            order.append(name)
            await release.wait()

    tasks = [asyncio.create_task(request(n)) for n in ("a", "b", "c", "d")]
    await run_ready_tasks()
    assert order == ["a", "b"]
    assert limit.free() == 0
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    assert limit.in_flight == 0


async def test_timeouts_halve_the_limit_once_per_round() -> None:
    limit = PeerLimit(FOREVER, initial=8)
    go = asyncio.Event()

    async def timed_out() -> None:
        async with limit.slot():
            await go.wait()
            raise TimeoutError

    tasks = [asyncio.create_task(timed_out()) for _ in range(4)]
    await run_ready_tasks()
    go.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    # Four attempts of one round timed out: one decrease, not four.
    assert limit.limit == 4
    with pytest.raises(TimeoutError):
        async with limit.slot():
            raise TimeoutError
    assert limit.limit == 2  # a new round


async def test_a_slow_answer_shrinks_the_limit_and_a_prompt_one_grows_it() -> None:
    slow = PeerLimit(0.0, initial=8)  # any answer takes more than half of no time
    async with slow.slot():
        pass
    assert slow.limit == 4
    prompt = PeerLimit(FOREVER, initial=4)
    for _ in range(4):
        async with prompt.slot():
            pass
    assert 4.9 < prompt.limit < 5.1  # about one more per round of prompt answers


async def test_a_prompt_refusal_says_nothing_and_bounds_hold() -> None:
    limit = PeerLimit(FOREVER, initial=3, minimum=1, maximum=3)
    with pytest.raises(ConnectionRefusedError):
        async with limit.slot():
            raise ConnectionRefusedError
    assert limit.limit == 3
    async with limit.slot():
        pass
    assert limit.limit == 3  # the ceiling
    floor = PeerLimit(FOREVER, initial=1)
    with pytest.raises(TimeoutError):
        async with floor.slot():
            raise TimeoutError
    assert floor.limit == 1  # never below one: the peer is still tried


async def test_a_waiter_cancelled_when_handed_a_slot_passes_it_on() -> None:
    limit = PeerLimit(FOREVER, initial=1)
    done: list[str] = []

    async def request(name: str) -> None:
        async with limit.slot():
            done.append(name)

    async with limit.slot():
        cancelled = asyncio.create_task(request("cancelled"))
        after = asyncio.create_task(request("after"))
        await run_ready_tasks()
        assert limit.waiting == 2
    # The slot was handed to the first waiter, which has not run yet: cancelled now, it
    # must pass the slot on rather than lose it.
    cancelled.cancel()
    async with asyncio.timeout(10):  # a lost slot would leave "after" waiting for ever
        await asyncio.gather(cancelled, after, return_exceptions=True)
    assert cancelled.cancelled()
    assert done == ["after"]
    assert limit.in_flight == 0
