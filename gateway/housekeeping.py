"""Periodic clean-up of a gateway's replay store.

``used_permits`` makes permits single use, across restarts and across gateway
processes.  A row can only be forgotten once the permit could no longer be
accepted anyway: after its ``expires_at`` plus the allowed clock skew
(``Timing.permit_skew``), because verification accepts a permit until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .state import GATEWAY_STATE, GatewayState

log = structlog.get_logger("chukan.gateway.housekeeping")


async def purge_used_permits(state: GatewayState) -> int:
    """Delete used permits that expired more than ``permit_skew`` ago; returns how many."""
    status = await state.pool.execute(
        "DELETE FROM used_permits WHERE expires_at < now() - $1::interval",
        state.config.timing.permit_skew,
    )
    purged = int(status.rsplit(" ", 1)[-1])
    if purged:
        log.info("used_permits_purged", count=purged)
    return purged


async def _purge_loop(state: GatewayState) -> None:
    while True:
        try:
            await purge_used_permits(state)
        except Exception:  # a database hiccup must not end the loop
            log.exception("used_permits_purge_failed")
        await asyncio.sleep(state.config.timing.purge_interval)


async def housekeeping_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context running the purge loop while the gateway runs."""
    task = asyncio.create_task(_purge_loop(app[GATEWAY_STATE]), name="used-permits-purge")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
