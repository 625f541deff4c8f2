"""The hub's outbox (``deliveries``): signed messages queued in the transaction that
produced them, then leased, retried with backoff and ended by the delivery worker.

A lease (token and time) lets several hub workers share the table without ever
sending one delivery twice at once; every update checks the lease it holds.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.retry import jittered_backoff
from chukan.simulators.hub.config import HubConfig
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")

DELIVERY_LEASE: Final = dt.timedelta(seconds=30)


#: Queues a delivery; followed by VALUES or a SELECT of those columns, then DELIVERY_ONCE.
DELIVERY_INSERT: Final = (
    "INSERT INTO deliveries (kind, target, query_id, body, signature, give_up_at, request_id) "
)
#: Queues a delivery, maybe leased at once to the process queuing it; DELIVERY_INSERT's
#: columns, then LEASED_VALUES.format(lease=<an interval, NULL: not leased>).
DELIVERY_INSERT_LEASED: Final = (
    "INSERT INTO deliveries (kind, target, query_id, body, signature, give_up_at, request_id, "
    "attempts, lease_token, leased_until) "
)
LEASED_VALUES: Final = (
    "CASE WHEN {lease}::interval IS NULL THEN 0 ELSE 1 END, "
    "CASE WHEN {lease}::interval IS NULL THEN NULL ELSE gen_random_uuid() END, "
    "now() + {lease}::interval"
)
#: One delivery of each kind per query, whoever queues it twice.
DELIVERY_ONCE: Final = "ON CONFLICT (query_id, kind) DO NOTHING"


async def enqueue(
    conn: db.Conn,
    kind: str,
    target: str,
    query_id: str,
    body: bytes,
    signature: str,
    *,
    give_up_at: dt.datetime,
    request_id: str | None,
) -> None:
    """Put a signed message in the outbox, in the caller's transaction (sent after commit).

    ``request_id``: the query's (the request it arrived with), sent with every attempt.
    """
    await conn.execute(
        DELIVERY_INSERT + "VALUES ($1, $2, $3, $4, $5, $6, $7) " + DELIVERY_ONCE,
        kind,
        target,
        query_id,
        body,
        signature,
        give_up_at,
        request_id,
    )


def lease(config: HubConfig) -> dt.timedelta:
    """Long enough for one attempt to end (timeout included) before anyone else may try."""
    return max(DELIVERY_LEASE, dt.timedelta(seconds=config.delivery_timeout * 3))


async def claim_due(state: HubState, limit: int = 16) -> list[asyncpg.Record]:
    """Lease due deliveries so that several hub workers never send one twice at once."""
    return await state.pool.fetch(
        """UPDATE deliveries SET attempts = attempts + 1, lease_token = gen_random_uuid(),
               leased_until = now() + $2
           WHERE id IN (SELECT id FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= now()
                          AND (leased_until IS NULL OR leased_until <= now())
                        ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        limit,
        lease(state.config),
    )


async def finish(
    conn: db.Executor, delivery: asyncpg.Record, status: str, error: str | None = None
) -> bool:
    """End a delivery, only if this worker still holds its lease; returns whether it did."""
    done = await conn.fetchval(
        "UPDATE deliveries SET status = $3, last_error = $4, done_at = now(), "
        "leased_until = NULL, lease_token = NULL "
        "WHERE id = $1 AND lease_token = $2 AND status = 'pending' RETURNING 1",
        delivery["id"],
        delivery["lease_token"],
        status,
        error,
    )
    return done is not None


async def retry_later(
    state: HubState, delivery: asyncpg.Record, error: str, *, hold: dt.timedelta | None = None
) -> bool:
    """Back off (with jitter) and release the lease; True when the give-up time has passed.

    ``hold``: instead of the backoff, while its agency is away (released when it answers).
    """
    give_up_at = delivery["give_up_at"]
    if give_up_at is not None and utcnow() >= give_up_at:
        return True
    config = state.config
    delay = hold or jittered_backoff(
        delivery["attempts"], config.delivery_backoff, config.delivery_max_backoff
    )
    await state.pool.execute(
        "UPDATE deliveries SET next_attempt_at = now() + $3, last_error = $4, "
        "leased_until = NULL, lease_token = NULL "
        "WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
        delivery["id"],
        delivery["lease_token"],
        delay,
        error,
    )
    log.info("delivery_retry", delivery=delivery["id"], kind=delivery["kind"], error=error)
    return False


async def hold_target(pool: db.Pool, target: str, probe: int, hold: dt.timedelta) -> int:
    """``target`` cannot be reached: its pending deliveries nobody holds, but ``probe``, wait
    up to ``hold`` (its first answer makes them due at once, :func:`make_target_due`)."""
    count: int = await pool.fetchval(
        "WITH held AS (UPDATE deliveries SET next_attempt_at = now() + $3 "
        "WHERE status = 'pending' AND target = $1 AND id <> $2 "
        "AND next_attempt_at < now() + $3 "
        "AND (leased_until IS NULL OR leased_until <= now()) RETURNING 1) "
        "SELECT count(*) FROM held",
        target,
        probe,
        hold,
    )
    return count


async def make_target_due(pool: db.Pool, target: str) -> int:
    """``target``'s pending deliveries nobody holds become due now (it answers again after
    an outage): they need not wait out backoffs grown while it was away.  How many."""
    count: int = await pool.fetchval(
        "WITH due AS (UPDATE deliveries SET next_attempt_at = now() "
        "WHERE status = 'pending' AND target = $1 AND next_attempt_at > now() "
        "AND (leased_until IS NULL OR leased_until <= now()) RETURNING 1) "
        "SELECT count(*) FROM due",
        target,
    )
    return count


async def make_all_due(pool: db.Pool) -> int:
    """Every pending delivery nobody holds becomes due now; returns how many."""
    count: int = await pool.fetchval(
        "WITH due AS (UPDATE deliveries SET next_attempt_at = now() "
        "WHERE status = 'pending' AND (leased_until IS NULL OR leased_until <= now()) "
        "RETURNING 1) SELECT count(*) FROM due"
    )
    return count
