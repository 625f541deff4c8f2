"""How many requests a server keeps in flight to one peer: a limit that adapts (AIMD).

A peer that is slow (a busy machine, a backlog after a restart) answers every request
late once too many are in flight at once; each that outlives its client's timeout is
then done twice — the peer finishes it, the client retries it — and each timed-out
connection is closed, so the retry pays a new TLS handshake too.  Load then breeds
more load and nothing converges.  A :class:`PeerLimit` holds requests back *before*
their timeout starts instead: it halves its limit when an attempt was slow (took over
half its timeout) or timed out, at most once per round of attempts, and grows it by
about one per round that went well — TCP's congestion window, for requests.  Waiting
for a slot costs nothing at the peer; what waits is durable in the caller's database
anyway.  Purely a local pacing: no guarantee depends on it, so it lives in memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

#: The limit a peer starts with, its floor and its ceiling.
INITIAL_LIMIT: Final = 16.0
MIN_LIMIT: Final = 1.0
MAX_LIMIT: Final = 64.0
#: An attempt slower than this share of its timeout says the peer has too much at once.
SLOW_SHARE: Final = 0.5


@dataclass(frozen=True, slots=True)
class Slot:
    """One request in flight: when it started, in which round of the limit."""

    started: float
    epoch: int


class PeerLimit:
    """The requests in flight to one peer, up to a limit that adapts to its answers."""

    def __init__(
        self,
        timeout: float,
        *,
        initial: float = INITIAL_LIMIT,
        minimum: float = MIN_LIMIT,
        maximum: float = MAX_LIMIT,
    ) -> None:
        self.timeout = timeout
        self.limit = initial
        self.minimum = minimum
        self.maximum = maximum
        self.in_flight = 0
        #: A decrease ends an epoch: slow attempts started before it say nothing new.
        self.epoch = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def free(self) -> int:
        """Slots to be had at once (none while anyone waits: first come, first served)."""
        if self.waiting:
            return 0
        return max(0, int(self.limit) - self.in_flight)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for a slot and hold it for one request (whose timeout starts inside).

        A ``TimeoutError`` out of the block, or an answer or failure later than
        ``SLOW_SHARE`` of the timeout, shrinks the limit; a prompt answer grows it; a
        prompt failure (connection refused) says nothing of the peer's load.
        """
        await self._acquire()
        slot = Slot(time.monotonic(), self.epoch)
        congested: bool | None = None
        try:
            yield slot
        except TimeoutError:
            congested = True
            raise
        except Exception:
            congested = True if self._slow(slot) else None
            raise
        else:
            congested = self._slow(slot)
        finally:
            self._release(slot, congested)

    def _slow(self, slot: Slot) -> bool:
        return time.monotonic() - slot.started > self.timeout * SLOW_SHARE

    async def _acquire(self) -> None:
        if not self.waiting and self.in_flight < int(self.limit):
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releasing request handed its slot over (in_flight counted)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1  # handed over as we were cancelled: pass it on
                self._wake()
            raise

    def _release(self, slot: Slot, congested: bool | None) -> None:
        if congested is True and slot.epoch == self.epoch:
            self.limit = max(self.minimum, self.limit / 2)
            self.epoch += 1
        elif congested is False:
            self.limit = min(self.maximum, self.limit + 1 / self.limit)
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
