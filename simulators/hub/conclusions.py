"""A query's one conclusion: recorded once, queued for its requester, contradictions kept.

A conclusion is the provider's signed answer or the hub's own signed refusal
(e.g. the provider never answered).  Whoever concludes first wins; the same
conclusion again is a repeat, another one is kept apart as evidence.
"""

from __future__ import annotations

import enum

import asyncpg
import structlog

from chukan.codecs.envelope import Header
from chukan.gateway.core.web import current_request_id
from chukan.simulators.hub import outbox
from chukan.simulators.hub.records import log_routed
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")


class Conclusion(enum.Enum):
    """What recording a conclusion did."""

    WON = "won"  # this is the query's one conclusion: recorded and forwarded
    REPEATED = "repeated"  # the same conclusion again (a retried delivery)
    CONTRADICTS = "contradicts"  # another conclusion stands: kept apart as evidence


async def conclude(
    state: HubState,
    query_id: str,
    outcome: str,
    reason_code: str | None,
    *,
    requester: str,
    sender: str,
    message: bytes,
    signature: str,
    header: Header,
    direction: str,
    permit_id: str | None,
    delivery: asyncpg.Record | None = None,
    finish_status: str = "done",
) -> Conclusion:
    """Record the query's one conclusion and queue it for the requester, in one transaction.

    With ``delivery`` (the provision request that produced it), that delivery ends too,
    if this worker still holds its lease.
    """
    async with state.pool.acquire() as conn, conn.transaction():
        # The event keeps the id of the request (or delivery) that concluded the query;
        # the answer's delivery carries the query's own, as every delivery does.
        won = await conn.fetchval(
            "INSERT INTO hub_record_events (query_id, kind, outcome, reason_code, answered_at, "
            "request_id) VALUES ($1, 'concluded', $2, $3, now(), $4) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            query_id,
            outcome,
            reason_code,
            current_request_id(),
        )
        if delivery is not None:
            await outbox.finish(conn, delivery, finish_status, reason_code)
        if won is None:
            stored = await conn.fetchrow(
                "SELECT outcome, reason_code FROM hub_record_events "
                "WHERE query_id = $1 AND kind = 'concluded'",
                query_id,
            )
            assert stored is not None
            if stored["outcome"] == outcome:
                return Conclusion.REPEATED
            await conn.execute(
                "INSERT INTO hub_conclusion_conflicts (query_id, sender, outcome, reason_code, "
                "body) VALUES ($1, $2, $3, $4, $5)",
                query_id,
                sender,
                outcome,
                reason_code,
                message,
            )
            log.error(
                "conclusion_contradicted",
                query_id=query_id,
                stored=stored["outcome"],
                received=outcome,
                sender=sender,
            )
            return Conclusion.CONTRADICTS
        await log_routed(
            conn,
            header=header,
            direction=direction,
            body=message,
            query_id=query_id,
            permit_id=permit_id,
        )
        await outbox.enqueue(
            conn,
            "answer",
            requester,
            query_id,
            message,
            signature,
            give_up_at=utcnow() + state.config.answer_retention,
            request_id=await conn.fetchval(
                "SELECT request_id FROM hub_record_events WHERE query_id = $1 AND kind = 'opened'",
                query_id,
            ),
        )
    state.wake.set()
    log.info("query_concluded", query_id=query_id, outcome=outcome, reason=reason_code)
    return Conclusion.WON
