"""Notices between the processes of one server: PostgreSQL ``LISTEN``/``NOTIFY``.

Several processes of one agency (or of the hub) share a database; what one of
them changes at rest (the key ring reloaded, a new authorization list stored)
must reach the others at once, not at their next periodic check.  The process
that made the change sends ``NOTIFY <channel>, '<payload>'`` (in the
transaction that stored it, so the notice is delivered only if the change
committed); every process keeps one dedicated connection that ``LISTEN``s.

A notice is a hint, never the data: the receiver reads the state at rest again
(the ring file, the newest stored list) and checks it as at start-up.  Notices
sent while a process's connection was down are lost, so after every
(re)connection each handler is called once with ``None`` ("look again"), and
every consumer keeps a periodic check as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.aio import wait_event
from chukan.gateway.core.retry import backoff_delay

log = structlog.get_logger("chukan.notices")

#: The key ring of a tenant was reloaded (payload: ``<tenant> <sha256 of the file>``).
KEYS_CHANNEL: Final = "chukan_keys"
#: A gateway stored a new authorization list (payload: the tenant).
LIST_CHANNEL: Final = "chukan_authorization_list"
#: The hub published a new authorization list (payload: the version).
HUB_LIST_CHANNEL: Final = "chukan_hub_list"
#: How often the listening connection is checked (a silently dropped TCP connection).
PING_INTERVAL: Final = 5.0
PING_TIMEOUT: Final = 5.0

Handler = Callable[[str | None], Awaitable[None]]


async def notify(executor: db.Executor, channel: str, payload: str) -> None:
    """Send a notice (delivered when the surrounding transaction, if any, commits)."""
    await executor.execute("SELECT pg_notify($1, $2)", channel, payload)


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


class Listener:
    """One connection listening on the channels handlers subscribed to, kept alive."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: asyncpg.Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        #: Set each time the listening connection is (re)established (tests wait on it).
        self.connected = asyncio.Event()

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(payload)`` on each notice, ``handler(None)`` after each reconnection.

        Subscribe before :meth:`start`.
        """
        self._handlers.setdefault(channel, []).append(handler)

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"notices-{self._name}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), PING_TIMEOUT)
            if not conn.is_closed():
                conn.terminate()

    def _dispatch(self, channel: str, payload: str | None) -> None:
        for handler in self._handlers.get(channel, ()):
            task = asyncio.create_task(self._call(channel, handler, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, channel: str, handler: Handler, payload: str | None) -> None:
        try:
            await handler(payload)
        except Exception as exc:  # a handler's failure is logged; the next notice retries
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            else:
                log.exception("notice_handler_failed", channel=channel)

    def _on_notice(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        self._dispatch(channel, str(payload))

    async def _run(self) -> None:
        attempt = 0
        first = True
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url, timeout=db.DEFAULT_CONNECT_TIMEOUT)
                self._conn = conn
                conn.add_termination_listener(_setter(lost))
                for channel in self._handlers:
                    await conn.add_listener(channel, self._on_notice)
            except Exception as exc:
                await self._close()
                if not db.is_database_error(exc) and not isinstance(exc, OSError):
                    log.exception("notice_listener_failed", listener=self._name)
                attempt += 1
                await asyncio.sleep(backoff_delay(attempt, 0.5, 10.0))
                continue
            if not first:
                log.info("notice_listener_reconnected", listener=self._name)
            # Notices sent before (or while the connection was down) are lost: look again.
            for channel in self._handlers:
                self._dispatch(channel, None)
            attempt = 0
            first = False
            self.connected.set()
            await self._watch(conn, lost)
            await self._close()

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Until the connection ends: it is pinged, so a silent drop is noticed too."""
        task = asyncio.current_task()
        while not lost.is_set():
            # A stop that the ping's wait_for swallowed (Python 3.11) still ends the watch.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            await wait_event(lost, PING_INTERVAL)
            if lost.is_set():
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_TIMEOUT)
            except Exception:  # gone: reconnect
                return


#: The listener of a server process (subscribe in a cleanup context before it starts).
NOTICES: Final = web.AppKey("notices", Listener)


async def listener_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context, registered after every subscriber's: listen until shutdown."""
    listener = app[NOTICES]
    listener.start()
    yield
    await listener.stop()
