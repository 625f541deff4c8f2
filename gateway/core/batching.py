"""Micro-batching: what concurrent requests ask of the database, asked in one statement.

Each database round trip costs a request far more than the work the statement
does (two syscalls, a context switch to the server and back); under load many
requests want the same statement with other parameters at the same moment.  A
:class:`Batcher` queues them and runs one call for all that are waiting, with at
most one call in flight: while it runs, the next batch fills — a group commit
when the call writes.  An idle server answers the first request at once
(a batch of one); a busy one amortises each round trip over many requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("chukan.gateway")

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs ``call`` on batches of submitted items, ``in_flight`` batches at a time (one
    by default).

    ``call`` returns one result per item, in order.  If it raises, every item of
    that batch gets the exception.  ``keys`` (optional) names what must not appear
    twice in one batch (e.g. a permit id): a second item with a key already in the
    batch waits for the next one.  With ``in_flight`` above one, a new batch starts
    while others run only if every batch started so far has taken its items (so a
    burst fills one batch, not several of one item each).
    """

    def __init__(
        self,
        call: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        name: str,
        keys: Callable[[T], tuple[Hashable, ...]] | None = None,
        in_flight: int = 1,
    ) -> None:
        self._call = call
        self._max_batch = max_batch
        self._name = name
        self._keys = keys
        self._in_flight = in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._runners: set[asyncio.Task[None]] = set()
        #: Runners started that have not taken their first batch yet.
        self._starting = 0

    @property
    def waiting(self) -> int:
        """Items queued for a batch not started yet."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        """The result of ``item``'s batch (or its exception)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start_runner()
        # Shielded: a caller that goes away does not take its batch with it.
        return await asyncio.shield(future)

    def _start_runner(self) -> None:
        """Another runner for what waits, if one may start: none is still to take its
        first batch, and fewer than ``in_flight`` run."""
        if self._waiting and self._starting == 0 and len(self._runners) < self._in_flight:
            self._starting += 1
            runner = asyncio.create_task(self._run(), name=self._name)
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)

    async def _run(self) -> None:
        started = True
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._take()
                if started:
                    started = False
                    self._starting -= 1
                self._start_runner()  # more than a batch waited: the next one goes too
                try:
                    results = await self._call([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"{self._name}: {len(results)} results, {len(batch)} items"
                        )
                except Exception as exc:  # every caller of the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                            future.exception()  # retrieved: a caller gone is not an error
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            if started:
                self._starting -= 1
            # Out of the set now, not in a done callback later: a submit in between
            # would otherwise count a runner that takes nothing more.
            self._runners.discard(asyncio.current_task())
            # Only when cancelled (the server stops) is a batch left unanswered or does
            # anything still wait here: cancelled, unless another runner takes what waits.
            for _, future in batch:
                if not future.done():
                    future.cancel()
            if not self._runners:
                for _, future in self._waiting:
                    if not future.done():
                        future.cancel()
                self._waiting = []

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        seen: set[Hashable] = set()
        for entry in self._waiting:
            keys = self._keys(entry[0]) if self._keys is not None else ()
            if len(batch) >= self._max_batch or any(k in seen for k in keys):
                later.append(entry)
                continue
            seen.update(keys)
            batch.append(entry)
        self._waiting = later
        return batch

    async def close(self, *, cancel: bool = False) -> None:
        """Wait for the batch in flight (and those queued behind it); ``cancel``: stop them
        instead (their callers' submits are cancelled), when what they do is durable
        elsewhere and retried (e.g. a delivery's exchange)."""
        runners = list(self._runners)
        if cancel:
            for runner in runners:
                runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
