"""``GET /metrics`` (Prometheus text) and the middleware that counts every answer."""

from __future__ import annotations

import contextlib
import time
from typing import Final

import asyncpg
from aiohttp import web

from chukan.gateway.core.metrics import CONTENT_TYPE, GatewayMetrics
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.web import Handler

METRICS: Final = web.AppKey("gateway_metrics", GatewayMetrics)


async def metrics(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    jobs: dict[tuple[str, ...], float] = {}
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        rows = await state.pool.fetch("SELECT kind, status, count(*) AS n FROM jobs GROUP BY 1, 2")
        jobs = {(r["kind"], r["status"]): float(r["n"]) for r in rows}
    text = request.config_dict[METRICS].render(jobs)
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: counts every answer (errors included) by route template and status."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        registry = request.config_dict.get(METRICS)
        if registry is not None:
            registry.requests.inc(route, request.method, str(status))
            registry.latency.observe(time.perf_counter() - started, route)
