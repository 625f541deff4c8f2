"""``GET /metrics`` (Prometheus text); every answer is counted by the access log
middleware (:func:`chukan.gateway.core.web.access_log_middleware`)."""

from __future__ import annotations

import contextlib
from typing import Final

import asyncpg
from aiohttp import web

from chukan.gateway.core.metrics import CONTENT_TYPE, GatewayMetrics
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.records.witnessing import metrics_lines as records_metrics

METRICS: Final = web.AppKey("gateway_metrics", GatewayMetrics)


async def metrics(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    jobs: dict[tuple[str, ...], float] = {}
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        rows = await state.pool.fetch("SELECT kind, status, count(*) AS n FROM jobs GROUP BY 1, 2")
        jobs = {(r["kind"], r["status"]): float(r["n"]) for r in rows}
    text = request.config_dict[METRICS].render(jobs)
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        text += "\n".join(await records_metrics(state)) + "\n"
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})
