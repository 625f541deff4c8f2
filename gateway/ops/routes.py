"""システム管理: the ops staff API (statistics, jobs, the deletion job), ``/ready``,
``/metrics`` and the periodic deletion job.

The deletion job: :mod:`.purge`; statistics: :mod:`.statistics`; readiness:
:mod:`.readiness`; metrics: :mod:`.metrics_http`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.jobs import get_job, list_jobs
from chukan.gateway.core.keyring import reload_keys
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.web import observe
from chukan.gateway.ops.errors import JobUnknownError
from chukan.gateway.ops.health import health
from chukan.gateway.ops.metrics_http import METRICS, metrics
from chukan.gateway.ops.purge import purge_now, purger
from chukan.gateway.ops.readiness import ready
from chukan.gateway.ops.statistics import STATISTICS_FIELDS, parse_period, statistics, today_in
from chukan.gateway.ops.status import gateway_status
from chukan.gateway.staff.api import csv_response, query_limit, to_csv
from chukan.gateway.staff.roles import ROLE_ADMIN, ROLE_AUDITOR, ROLE_OPERATOR
from chukan.gateway.staff.sessions import audit_staff, require_staff


def _format(request: web.Request) -> str:
    value = request.query.get("format", "json")
    if value not in ("json", "csv"):
        raise ValidationError("format must be json or csv")
    return value


async def get_statistics(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_OPERATOR, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    tz = state.config.ops.statistics_time_zone
    first, last = parse_period(
        request.query.get("from"), request.query.get("to"), today=today_in(tz)
    )
    fmt = _format(request)
    rows = await statistics(state.pool, first, last, tz)
    await audit_staff(
        request,
        "statistics.read",
        detail={"from": first.isoformat(), "to": last.isoformat(), "format": fmt},
    )
    if fmt == "csv":
        return csv_response(to_csv(rows, STATISTICS_FIELDS), f"statistics-{first}-{last}.csv")
    return web.json_response(
        {"from": first.isoformat(), "to": last.isoformat(), "time_zone": tz, "rows": rows}
    )


async def get_jobs(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_OPERATOR, ROLE_ADMIN, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    limit = query_limit(request)
    jobs = await list_jobs(
        state.pool, kind=request.query.get("kind"), status=request.query.get("status"), limit=limit
    )
    return web.json_response({"jobs": [j.to_json() for j in jobs]})


async def get_one_job(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_OPERATOR, ROLE_ADMIN, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    try:
        job_id = int(request.match_info["job_id"])
    except ValueError:
        raise ValidationError("job id must be a number") from None
    job = await get_job(state.pool, job_id)
    if job is None:
        raise JobUnknownError(f"no job {job_id}")
    return web.json_response(job.to_json())


async def post_purge(request: web.Request) -> web.Response:
    session = await require_staff(request, ROLE_OPERATOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    job = await purge_now(state, f"staff:{session.username}")
    await audit_staff(request, "jobs.purge", target=str(job.id), detail=job.counts)
    return web.json_response(job.to_json())


async def ops_context(app: web.Application) -> AsyncIterator[None]:
    state = app[GATEWAY_STATE]
    task = asyncio.create_task(purger(state), name="results-purger")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_ops(app: web.Application, config: GatewayConfig) -> None:
    app[METRICS] = metrics_for(config.agency_code)
    observe(app, f"gateway:{config.agency_code}", app[METRICS], config.ops)
    app.cleanup_ctx.append(ops_context)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)


def add_staff_routes(staff: web.Application) -> None:
    """Routes on the staff's ``/staff`` face (paths relative to its prefix)."""
    staff.router.add_get("/v1/statistics", get_statistics)
    staff.router.add_get("/v1/jobs", get_jobs)
    staff.router.add_get("/v1/jobs/{job_id}", get_one_job)
    staff.router.add_post("/v1/jobs/purge", post_purge)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face: operators' status and key reload."""
    internal.router.add_get("/v1/status", gateway_status)
    internal.router.add_post("/v1/keys/reload", reload_keys)
