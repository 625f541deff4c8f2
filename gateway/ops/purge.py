"""The result-deletion job: what the gateway no longer may keep goes.

Results collected more than ``result_retention`` ago, queries past
``expires_at`` (those never answered are first concluded as failed/expired,
with their requester record), used permits and seen message ids that can no
longer be replayed, and provision records past their seven years (whole months,
:mod:`chukan.gateway.records.retention`).  It runs every ``purge_interval`` and on demand (staff
API, CLI), each run a ``results.purge`` job row with its counts.

Several processes of one agency: runs are serialized by an advisory lock per
tenant (taken in the run's transaction), and a process's periodic run is
skipped when another process ran one less than ``purge_interval`` ago, so the
agency purges about once per interval whatever the number of processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.config import DEFAULT_PERMIT_SKEW
from chukan.gateway.core.jobs import Job, create_job, fail_job, finish_job, get_job, start_job
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.records.retention import dispose_expired_records

log = structlog.get_logger("chukan.ops")

PURGE_JOB: Final = "results.purge"
#: Who runs the periodic deletion job (``created_by`` of its job rows).
PERIODIC_PURGER: Final = "gateway"


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
        # One run at a time per tenant, whichever process (or command) starts it.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('chukan-purge:' || chukan_tenant(), 0))"
        )
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
                       non_disclosure, request_id)
                   SELECT 'requester', query_id, permit_id, $1, provider, business_code,
                          procedure_code, item_code, legal_basis, atena_id, created_at, NULL,
                          'failed', 'expired', non_disclosure, request_id
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
        # Records past their seven years go too, a whole month at a time (every tenant's).
        disposal = await dispose_expired_records(conn)
        counts["record_partitions_disposed"] = len(disposal.dropped)
        counts["records_disposed"] = disposal.records
    except (asyncpg.PostgresError, OSError) as exc:
        await fail_job(conn, job_id, f"{type(exc).__name__}: {exc}")
        raise
    await finish_job(conn, job_id, counts)
    job = await get_job(conn, job_id)
    assert job is not None
    return job


async def purge_now(state: GatewayState, created_by: str) -> Job:
    """The deletion job with the gateway's configured retention and clock skews."""
    async with state.pool.acquire() as conn:
        return await run_purge_job(
            conn,
            state.config.agency_code,
            retention=state.config.ops.result_retention,
            message_skew=state.config.timing.message_skew,
            created_by=created_by,
            permit_skew=state.config.timing.permit_skew,
        )


async def purge_due(state: GatewayState) -> bool:
    """Whether no process of this agency started a periodic run within the interval."""
    interval = state.config.ops.purge_interval
    last = await state.pool.fetchval(
        "SELECT max(created_at) FROM jobs WHERE kind = $1 AND created_by = $2",
        PURGE_JOB,
        PERIODIC_PURGER,
    )
    # A little slack, so that the process whose turn it is does not skip by a hair.
    return last is None or utcnow() - last >= interval * 0.9


async def purger(state: GatewayState) -> None:
    """Background task: the deletion job every ``purge_interval`` (once for all processes)."""
    while True:
        await asyncio.sleep(state.config.ops.purge_interval.total_seconds())
        try:
            if await purge_due(state):
                await purge_now(state, PERIODIC_PURGER)
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("purge_failed")
