"""Shared state of one gateway process: its pool, keys, hub client, list and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.batching import Batcher
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.hubclient import HubClient
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.pacing import PeerLimit
from chukan.keys.ring import KeyRing
from chukan.permits import (
    AuthorizationList,
)

log = structlog.get_logger("chukan.gateway")


@dataclass
class GatewayState:
    config: GatewayConfig
    endpoint: str
    pool: asyncpg.Pool
    keys: AgencyKeys
    hub: HubClient
    #: Every key pair of this agency, old and new; ``keys`` are its current ones.
    ring: KeyRing
    authorization_list: AuthorizationList | None = None
    list_error: str | None = "not yet fetched"
    #: Long polls waiting for a query's conclusion, by query id.
    waiters: dict[str, set[asyncio.Event]] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    #: Set to run the durable sweep now rather than at its next interval.
    sweep_wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a graceful stop begins: long-polls answer at once instead of waiting.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: How many exchanges (each one or several messages) this process has at the hub at
    #: once: local pacing only (:mod:`chukan.gateway.core.pacing`); the hub client's.
    hub_limit: PeerLimit = field(init=False)
    #: This tenant's answered conclusions, written in batches (group commit): made on first
    #: use by :mod:`chukan.gateway.query.answers`, drained before the pool closes.
    #: (Its items are ``query.answers.Answered``: core does not import the flows.)
    conclusions: Batcher[Any, bool] | None = None

    def __post_init__(self) -> None:
        self.hub_limit = self.hub.limit

    def spawn(self, coro: Any, name: str) -> None:
        """Run background work, kept referenced and supervised.

        An exception is never lost: it is logged once as ``background_task_failed``
        and counted; the work itself is durable and the sweep takes it up again.
        """
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            kind = task.get_name().split("-", 1)[0]
            task_failed(self.config.agency_code, kind, exc)

    @contextlib.contextmanager
    def waiting(self, query_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``query_id`` may have concluded (registered before reading it)."""
        event = asyncio.Event()
        self.waiters.setdefault(query_id, set()).add(event)
        try:
            yield event
        finally:
            events = self.waiters.get(query_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self.waiters[query_id]

    def notify(self, query_id: str) -> None:
        for event in self.waiters.get(query_id, ()):
            event.set()

    def notify_all(self) -> None:
        """Every long poll looks again (a stop, or notices that may have been missed)."""
        for events in self.waiters.values():
            for event in events:
                event.set()


GATEWAY_STATE: Final = web.AppKey("gateway_state", GatewayState)


def task_failed(agency: str, kind: str, exc: BaseException) -> None:
    """One event (with the traceback) and one count per failed background task."""
    metrics_for(agency).task_failures.inc(kind)
    log.error("background_task_failed", task=kind, exc_info=exc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
