"""システム管理: the result-deletion job, business statistics, jobs, ``/ready`` and ``/metrics``.

* :func:`purge_results` deletes what the gateway no longer may keep: results
  collected more than ``result_retention`` ago, queries past ``expires_at``
  (those never answered are first concluded as failed/expired, with their
  requester record), used permits and seen message ids that can no longer be
  replayed.  It runs every ``purge_interval`` and on demand (staff API, CLI),
  each run a ``results.purge`` job row with its counts.
* :func:`statistics` counts records per day (in the municipality's time zone) ×
  role × procedure × item × outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import io
import stat
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.config import DEFAULT_PERMIT_SKEW, GatewayConfig
from chukan.gateway.core.errors import (
    AuthorizationListUnavailableError,
    GatewayError,
    NotFoundError,
    ValidationError,
)
from chukan.gateway.core.jobs import (
    Job,
    create_job,
    fail_job,
    finish_job,
    get_job,
    list_jobs,
    start_job,
)
from chukan.gateway.core.keyring import ring_path
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.metrics import CONTENT_TYPE, GatewayMetrics, metrics_for
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.web import Handler
from chukan.gateway.hublink.listsync import require_list
from chukan.gateway.staff.accounts import (
    ROLE_ADMIN,
    ROLE_AUDITOR,
    ROLE_OPERATOR,
    audit_staff,
    require_staff,
)
from chukan.keys import KeysError
from chukan.keys.ring import ring_from_bytes

log = structlog.get_logger("chukan.ops")

PURGE_JOB: Final = "results.purge"
MAX_STATISTICS_DAYS: Final = 366
DEFAULT_STATISTICS_DAYS: Final = 31
STATISTICS_FIELDS: Final = ("day", "role", "procedure_code", "item_code", "outcome", "count")

METRICS: Final = web.AppKey("gateway_metrics", GatewayMetrics)


class JobUnknownError(NotFoundError):
    code = "job_unknown"


# -- deletion job ----------------------------------------------------------------------------


async def purge_results(
    conn: db.Conn,
    agency: str,
    *,
    retention: dt.timedelta,
    message_skew: dt.timedelta,
    permit_skew: dt.timedelta = DEFAULT_PERMIT_SKEW,
) -> dict[str, int]:
    """One transaction; returns how many of each kind were removed.

    A used permit is forgotten only once it could no longer be accepted: after its
    expiry plus the verification's clock skew (``permit_skew``, at least ``message_skew``).
    """
    async with conn.transaction():
        # Never answered before expiry: concluded as failed, recorded, then deleted below.
        expired_unanswered = await conn.fetchval(
            """WITH concluded AS (
                   UPDATE queries SET status = 'failed', reason_code = 'expired',
                       reason_message = 'no answer before the query expired',
                       answered_at = now()
                   WHERE expires_at <= now() AND status IN ('queued', 'sent')
                   RETURNING *),
               recorded AS (
                   INSERT INTO provision_records (role, query_id, permit_id, requester,
                       provider, business_code, procedure_code, item_code, legal_basis,
                       atena_id, requested_at, provided_at, outcome, reason_code,
                       non_disclosure)
                   SELECT 'requester', query_id, permit_id, $1, provider, business_code,
                          procedure_code, item_code, legal_basis, atena_id, created_at, NULL,
                          'failed', 'expired', non_disclosure
                   FROM concluded RETURNING 1)
               SELECT count(*) FROM recorded""",
            agency,
        )
        expired = await conn.fetchval(
            "WITH gone AS (DELETE FROM queries WHERE expires_at <= now() RETURNING 1) "
            "SELECT count(*) FROM gone"
        )
        collected = await conn.fetchval(
            """WITH cleared AS (
                   UPDATE queries SET result = NULL, result_deleted_at = now()
                   WHERE result IS NOT NULL AND collected_at <= now() - $1::interval
                   RETURNING 1)
               SELECT count(*) FROM cleared""",
            retention,
        )
        permits = await conn.fetchval(
            "WITH gone AS (DELETE FROM used_permits WHERE expires_at <= now() - $1::interval "
            "RETURNING 1) SELECT count(*) FROM gone",
            max(message_skew, permit_skew),
        )
        answers = await conn.fetchval(
            "WITH gone AS (DELETE FROM provision_answers "
            "WHERE expires_at <= now() - $1::interval RETURNING 1) SELECT count(*) FROM gone",
            max(message_skew, permit_skew),
        )
        messages = await conn.fetchval(
            "WITH gone AS (DELETE FROM seen_messages WHERE received_at <= now() - $1::interval "
            "RETURNING 1) SELECT count(*) FROM gone",
            message_skew * 2,
        )
    counts = {
        "expired_unanswered": int(expired_unanswered),
        "expired_deleted": int(expired),
        "collected_results_deleted": int(collected),
        "used_permits_deleted": int(permits),
        "provision_answers_deleted": int(answers),
        "seen_messages_deleted": int(messages),
    }
    if expired_unanswered:
        metrics_for(agency).queries.inc("failed", amount=expired_unanswered)
    return counts


async def run_purge_job(
    conn: db.Conn,
    agency: str,
    *,
    retention: dt.timedelta,
    message_skew: dt.timedelta,
    created_by: str,
    permit_skew: dt.timedelta = DEFAULT_PERMIT_SKEW,
) -> Job:
    """The deletion job with its job row: queued → running → done (counts) | failed."""
    job_id = await create_job(conn, PURGE_JOB, created_by=created_by)
    await start_job(conn, job_id)
    try:
        counts = await purge_results(
            conn, agency, retention=retention, message_skew=message_skew, permit_skew=permit_skew
        )
    except (asyncpg.PostgresError, OSError) as exc:
        await fail_job(conn, job_id, f"{type(exc).__name__}: {exc}")
        raise
    await finish_job(conn, job_id, counts)
    job = await get_job(conn, job_id)
    assert job is not None
    return job


async def _purge(state: GatewayState, created_by: str) -> Job:
    async with state.pool.acquire() as conn:
        return await run_purge_job(
            conn,
            state.config.agency_code,
            retention=state.config.ops.result_retention,
            message_skew=state.config.timing.message_skew,
            created_by=created_by,
            permit_skew=state.config.timing.permit_skew,
        )


async def _purger(state: GatewayState) -> None:
    while True:
        await asyncio.sleep(state.config.ops.purge_interval.total_seconds())
        try:
            await _purge(state, "gateway")
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("purge_failed")


# -- statistics ------------------------------------------------------------------------------


async def statistics(
    conn: db.Executor, start: dt.date, end: dt.date, time_zone: str
) -> list[dict[str, Any]]:
    """Records per day (``time_zone``) × role × procedure × item × outcome, ``start``..``end``
    inclusive."""
    rows = await conn.fetch(
        """SELECT (requested_at AT TIME ZONE $3)::date AS day, role, procedure_code,
                  item_code, outcome, count(*) AS count
           FROM provision_records
           WHERE requested_at >= $1::date::timestamp AT TIME ZONE $3
             AND requested_at < ($2::date + 1)::timestamp AT TIME ZONE $3
             AND recorded_at >= $1::date::timestamp AT TIME ZONE $3
           GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""",
        start,
        end,
        time_zone,
    )
    return [
        {**{k: r[k] for k in STATISTICS_FIELDS}, "day": r["day"].isoformat(), "count": r["count"]}
        for r in rows
    ]


def to_csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return out.getvalue()


def parse_period(start: str | None, end: str | None, *, today: dt.date) -> tuple[dt.date, dt.date]:
    try:
        last = dt.date.fromisoformat(end) if end else today
        first = (
            dt.date.fromisoformat(start)
            if start
            else last - dt.timedelta(days=DEFAULT_STATISTICS_DAYS - 1)
        )
    except ValueError:
        raise ValidationError("from and to must be dates YYYY-MM-DD") from None
    if first > last:
        raise ValidationError("from must not be after to")
    if (last - first).days >= MAX_STATISTICS_DAYS:
        raise ValidationError(f"at most {MAX_STATISTICS_DAYS} days at once")
    return first, last


def _format(request: web.Request) -> str:
    value = request.query.get("format", "json")
    if value not in ("json", "csv"):
        raise ValidationError("format must be json or csv")
    return value


def csv_response(text: str, filename: str) -> web.Response:
    return web.Response(
        body=text.encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def get_statistics(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_OPERATOR, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    tz = state.config.ops.statistics_time_zone
    first, last = parse_period(request.query.get("from"), request.query.get("to"), today=_today(tz))
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


def _today(time_zone: str) -> dt.date:
    from zoneinfo import ZoneInfo

    return utcnow().astimezone(ZoneInfo(time_zone)).date()


# -- jobs API --------------------------------------------------------------------------------


async def get_jobs(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_OPERATOR, ROLE_ADMIN, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        raise ValidationError("limit must be a whole number") from None
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
    job = await _purge(state, f"staff:{session.username}")
    await audit_staff(request, "jobs.purge", target=str(job.id), detail=job.counts)
    return web.json_response(job.to_json())


# -- health, readiness, metrics --------------------------------------------------------------


async def _check_hub(state: GatewayState) -> dict[str, Any]:
    import json

    data = json.loads(await state.hub.get(f"/network/v1/agencies/{state.config.agency_code}"))
    ours = {
        "signing": state.keys.signing.key_id,
        "encryption": state.keys.encryption.key_id,
    }
    theirs = {
        "signing": data.get("signing_key", {}).get("key_id"),
        "encryption": data.get("encryption_key", {}).get("key_id"),
    }
    if ours != theirs:
        return {"ok": False, "reason": "the hub holds other keys for this agency"}
    return {"ok": True}


#: Outcomes of :func:`_check_key_ring` by (file, its bytes' digest, its mode, keys in use).
_RING_CHECKS: dict[tuple[Any, ...], str | None] = {}


def _check_key_ring(config: GatewayConfig, keys: AgencyKeys) -> dict[str, Any]:
    """The key ring at rest opens with the configured passphrase and holds the keys in
    use: a key reload or a restart would come back with them.  Opening it costs an
    scrypt, so the outcome is kept for the file's exact bytes and mode."""
    path = ring_path(config.key_dir, config.agency_code)
    try:
        data, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return {"ok": False, "reason": "the key ring cannot be read"}
    in_use = {k.key_id: k.public.raw for k in (keys.signing, keys.encryption)}
    memo = (path, hashlib.sha256(data).digest(), mode, tuple(sorted(in_use.items())))
    if memo not in _RING_CHECKS:
        reason: str | None = None
        if mode & 0o077:
            reason = "the key ring is readable by others"
        else:
            try:
                ring = ring_from_bytes(data, config.key_passphrase)
            except KeysError:
                reason = "the key ring does not open with the configured passphrase"
            else:
                held = {k.key_id: k.pair.public.raw for k in ring.signing_keys}
                held.update((k.key_id, k.pair.public.raw) for k in ring.encryption_keys)
                if ring.owner != config.agency_code or any(
                    held.get(key_id) != raw for key_id, raw in in_use.items()
                ):
                    reason = "the key ring does not hold the keys in use"
        if len(_RING_CHECKS) >= 64:
            _RING_CHECKS.clear()
        _RING_CHECKS[memo] = reason
    reason = _RING_CHECKS[memo]
    if reason is not None:
        return {"ok": False, "reason": reason}
    return {"ok": True, "signing_key": keys.signing.key_id}


async def _timed(check: Any, limit: float) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await asyncio.wait_for(check, limit)
        return result
    except TimeoutError:
        return {"ok": False, "reason": "timed out"}
    except GatewayError as exc:
        return {"ok": False, "reason": exc.code}
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        return {"ok": False, "reason": type(exc).__name__}


async def ready(request: web.Request) -> web.Response:
    """200 when the database and hub answer, the authorization list is valid, the hub
    holds this agency's current keys and the key ring at rest holds them too (see
    :func:`_check_key_ring`); 503 with the failing checks otherwise."""
    state = request.config_dict[GATEWAY_STATE]
    timeout = state.config.ops.ready_timeout
    # The database probe never raises: an outage is a failing check (503), not a 500.
    database, hub = await asyncio.gather(
        db.probe(state.pool, timeout), _timed(_check_hub(state), timeout)
    )
    authorization: dict[str, Any]
    try:
        authorization = {"ok": True, "version": require_list(state).version}
    except AuthorizationListUnavailableError as exc:  # the same reason queries are refused with
        authorization = {"ok": False, "reason": exc.reason}
    keys = await _timed(asyncio.to_thread(_check_key_ring, state.config, state.keys), timeout)
    checks = {"database": database, "hub": hub, "authorization_list": authorization, "keys": keys}
    ok = all(c["ok"] for c in checks.values())
    if not ok:
        log.warning("not_ready", failing=sorted(name for name, c in checks.items() if not c["ok"]))
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks}, status=200 if ok else 503
    )


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


# -- wiring ----------------------------------------------------------------------------------


async def ops_context(app: web.Application) -> AsyncIterator[None]:
    state = app[GATEWAY_STATE]
    task = asyncio.create_task(_purger(state), name="results-purger")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_ops(app: web.Application, config: GatewayConfig) -> None:
    app[METRICS] = metrics_for(config.agency_code)
    app.cleanup_ctx.append(ops_context)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/staff/v1/statistics", get_statistics)
    app.router.add_get("/staff/v1/jobs", get_jobs)
    app.router.add_get("/staff/v1/jobs/{job_id}", get_one_job)
    app.router.add_post("/staff/v1/jobs/purge", post_purge)
