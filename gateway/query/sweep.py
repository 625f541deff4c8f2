"""The durable sweep: what a crash, a stall or an outage left unfinished is taken up again.

Every gateway process runs one.  Each pass claims, with ``FOR UPDATE SKIP LOCKED``
so that several processes of one agency share the work, what is due:

* queries still ``queued`` are sent to the hub (which deduplicates by query id);
* queries ``sent`` whose conclusion has not arrived are asked of the hub (a
  ``ConclusionRequest``): the conclusion it holds is applied exactly as a delivery;
* decided reviews whose answer is not yet sent are sent.

Nothing gives up after a number of attempts: backoff grows to ``Timing.max_backoff``
and the query's own expiry (the deletion job) is the only end besides a conclusion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from typing import Final

import structlog

from chukan.codecs.envelope import ConclusionRequest
from chukan.gateway.core import db
from chukan.gateway.core.aio import wait_event
from chukan.gateway.core.errors import UpstreamError
from chukan.gateway.core.state import GatewayState, task_failed
from chukan.gateway.core.web import request_id_bound
from chukan.gateway.provision.review import deliver_decision, due_decisions
from chukan.gateway.query.answers import apply_pulled_conclusion
from chukan.gateway.query.lifecycle import (
    QueryStatus,
    retry_later,
    send_query,
    to_hub,
)

log = structlog.get_logger("chukan.gateway")

SWEEP_BATCH: Final = 64


async def pull_conclusion(
    state: GatewayState, query_id: str, attempts: int, request_id: str | None = None
) -> None:
    """Ask the hub for a sent query's conclusion; apply it, or try again later.

    Done as part of the query's submission (``request_id``): its id goes to the hub.
    """
    with request_id_bound(request_id):
        await _pull(state, query_id, attempts)


async def _pull(state: GatewayState, query_id: str, attempts: int) -> None:
    try:
        reply = await to_hub(state, ConclusionRequest(query_id))
    except UpstreamError:
        await retry_later(state, query_id, attempts)
        return
    if reply.status == 200:
        await apply_pulled_conclusion(state, reply.body, reply.signature)
        log.info("conclusion_pulled", query_id=query_id)
        return
    if reply.status == 404:  # the hub has no trace of it: hand it over again
        await state.pool.execute(
            "UPDATE queries SET status = 'queued', next_attempt_at = now() "
            "WHERE query_id = $1 AND status = 'sent'",
            query_id,
        )
        log.warning("query_unknown_at_hub", query_id=query_id)
        return
    await retry_later(state, query_id, attempts)  # 202: still open at the hub


async def _claim_open_queries(
    state: GatewayState,
) -> list[tuple[str, str, int, str | None]]:
    # Only what goes out with the next exchange to the hub: a query claimed but waiting
    # behind a backlog could come due again meanwhile and be sent twice.
    free = min(SWEEP_BATCH, state.hub.room())
    if free == 0:
        return []
    rows = await state.pool.fetch(
        """UPDATE queries q SET next_attempt_at = now() + $2,
               attempts = q.attempts + (q.status = 'sent')::int
           FROM (SELECT tenant, query_id FROM queries
                 WHERE status IN ('queued', 'sent') AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
           WHERE q.tenant = due.tenant AND q.query_id = due.query_id
           RETURNING q.query_id, q.status, q.attempts, q.request_id""",
        free,
        # Claimed for longer than one attempt can take; the attempt sets the backoff.
        dt.timedelta(seconds=state.config.timing.http_timeout * 2),
    )
    return [(row["query_id"], row["status"], row["attempts"], row["request_id"]) for row in rows]


async def sweep_once(state: GatewayState) -> int:
    """One pass; returns how many items were taken up."""
    work: list[tuple[str, Awaitable[object]]] = []
    for query_id, status, attempts, request_id in await _claim_open_queries(state):
        if status == QueryStatus.QUEUED:
            work.append(("send", send_query(state, query_id)))
        else:
            work.append(("pull", pull_conclusion(state, query_id, attempts, request_id)))
    for query_id in await due_decisions(state, SWEEP_BATCH):
        work.append(("review", deliver_decision(state, query_id)))
    results = await asyncio.gather(*(job for _, job in work), return_exceptions=True)
    for (kind, _), result in zip(work, results, strict=True):
        if isinstance(result, Exception):
            task_failed(state.config.agency_code, f"sweep.{kind}", result)
    return len(work)


async def sweep_loop(state: GatewayState) -> None:
    """Sweep every ``Timing.sweep_interval`` (or when woken) until cancelled."""
    interval = state.config.timing.sweep_interval
    failing = False
    while True:
        state.sweep_wake.clear()
        try:
            taken = await sweep_once(state)
        except Exception as exc:  # the database is away, or a bug: say so once
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            elif not failing:
                log.warning("sweep_failing", error=type(exc).__name__, exc_info=exc)
            failing = True
            taken = 0
        else:
            if failing:
                log.info("sweep_recovered")
            failing = False
        if taken >= SWEEP_BATCH:
            continue
        await wait_event(state.sweep_wake, interval)
