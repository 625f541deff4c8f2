"""A query's one conclusion: recorded once, queued for its requester, contradictions kept.

A conclusion is the provider's signed answer or the hub's own signed refusal
(e.g. the provider never answered).  Whoever concludes first wins; the same
conclusion again is a repeat, another one is kept apart as evidence.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Final

import asyncpg
import structlog

from chukan.codecs.envelope import Header
from chukan.gateway.core.web import current_request_id
from chukan.simulators.hub import outbox
from chukan.simulators.hub.group_commit import GroupCommit
from chukan.simulators.hub.outbox import DELIVERY_INSERT_LEASED, DELIVERY_ONCE, LEASED_VALUES
from chukan.simulators.hub.records import ROUTED_INSERT, log_routed
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")


class Conclusion(enum.Enum):
    """What recording a conclusion did."""

    WON = "won"  # this is the query's one conclusion: recorded and forwarded
    REPEATED = "repeated"  # the same conclusion again (a retried delivery)
    CONTRADICTS = "contradicts"  # another conclusion stands: kept apart as evidence


#: The conclusion event, the routed message and the answer's delivery, and the end of
#: the provision request's delivery (if this worker holds its lease) — one statement,
#: none of it unless this conclusion is the first.  $1 query id, $2 outcome, $3 reason,
#: $4 request id, $5-$8 the message header, $9 permit id, $10 direction, $11 bytes,
#: $12 signature, $13 requester, $14 answer's give-up time, $15-$16 the delivery's id
#: and lease (NULL: none), $17 its end status, $18 the answer delivery's lease to this
#: process, which delivers it at once (NULL: queued for the worker).  Returns ``won``
#: and the answer's delivery as queued.
_CONCLUDE_SQL: Final = f"""
    WITH won AS (
        INSERT INTO hub_record_events (query_id, kind, outcome, reason_code, answered_at,
                                       request_id)
        VALUES ($1, 'concluded', $2, $3, now(), $4) ON CONFLICT DO NOTHING RETURNING 1),
    finished AS (
        UPDATE deliveries SET status = $17, last_error = $3, done_at = now(),
            leased_until = NULL, lease_token = NULL
        WHERE id = $15 AND lease_token = $16 AND status = 'pending'
          AND EXISTS (SELECT 1 FROM won) RETURNING 1),
    routed AS ({ROUTED_INSERT}
        SELECT $5, $6, $7, $8, $1, $9, $10, $11 WHERE EXISTS (SELECT 1 FROM won)),
    queued AS ({DELIVERY_INSERT_LEASED}
        SELECT 'answer', $13, $1, $11, $12, $14,
               (SELECT request_id FROM hub_record_events
                WHERE query_id = $1 AND kind = 'opened'), {LEASED_VALUES.format(lease="$18")}
        WHERE EXISTS (SELECT 1 FROM won) {DELIVERY_ONCE} RETURNING *)
    SELECT EXISTS (SELECT 1 FROM won) AS won, queued.*
    FROM (SELECT 1) AS one LEFT JOIN queued ON true"""  # noqa: S608 -- constant fragments


#: _CONCLUDE_SQL for several queries at once (distinct query ids), as the same writes
#: over arrays of its parameters $1-$18, in order: one row per query, in order, as
#: _CONCLUDE_SQL returns it.  Rows are written (and chained) in the queries' order.
_CONCLUDE_MANY_SQL: Final = f"""
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                             $11::bytea[], $12::text[], $13::text[], $14::timestamptz[],
                             $15::bigint[], $16::uuid[], $17::text[], $18::interval[])
            WITH ORDINALITY AS t(query_id, outcome, reason_code, request_id, message_id,
                                 message_type, sender, receiver, permit_id, direction, body,
                                 signature, requester, give_up_at, delivery_id, lease_token,
                                 finish_status, lease, position)),
    won AS (
        INSERT INTO hub_record_events (query_id, kind, outcome, reason_code, answered_at,
                                       request_id)
        SELECT query_id, 'concluded', outcome, reason_code, now(), request_id
        FROM input ORDER BY position
        ON CONFLICT DO NOTHING RETURNING query_id),
    finished AS (
        UPDATE deliveries d SET status = i.finish_status, last_error = i.reason_code,
            done_at = now(), leased_until = NULL, lease_token = NULL
        FROM input i JOIN won w USING (query_id)
        WHERE d.id = i.delivery_id AND d.lease_token = i.lease_token AND d.status = 'pending'
        RETURNING 1),
    routed AS ({ROUTED_INSERT}
        SELECT i.message_id, i.message_type, i.sender, i.receiver, i.query_id, i.permit_id,
               i.direction, i.body
        FROM input i JOIN won w USING (query_id) ORDER BY i.position),
    queued AS ({DELIVERY_INSERT_LEASED}
        SELECT 'answer', i.requester, i.query_id, i.body, i.signature, i.give_up_at,
               (SELECT e.request_id FROM hub_record_events e
                WHERE e.query_id = i.query_id AND e.kind = 'opened'),
               {LEASED_VALUES.format(lease="i.lease")}
        FROM input i JOIN won w USING (query_id) ORDER BY i.position {DELIVERY_ONCE}
        RETURNING *)
    SELECT w.query_id IS NOT NULL AS won, q.*
    FROM input i LEFT JOIN won w USING (query_id) LEFT JOIN queued q ON q.query_id = i.query_id
    ORDER BY i.position"""  # noqa: S608 -- constant fragments


def group_commit(pool: asyncpg.Pool) -> GroupCommit:
    """The hub process's conclusions, concurrent ones in one statement and one commit."""
    return GroupCommit(pool, one=_CONCLUDE_SQL, many=_CONCLUDE_MANY_SQL, name="hub-conclusions")


async def _conclude_at_once(
    state: HubState,
    query_id: str,
    outcome: str,
    reason_code: str | None,
    *,
    requester: str,
    message: bytes,
    signature: str,
    header: Header,
    direction: str,
    permit_id: str | None,
    delivery: asyncpg.Record | None,
    finish_status: str,
    lease_answer: tuple[dt.timedelta, Callable[[asyncpg.Record], None]] | None,
) -> bool:
    """The first conclusion of a query, in one statement (shared with the conclusions of
    other queries waiting at the same time); False if it was concluded before."""
    params = (
        query_id,
        outcome,
        reason_code,
        current_request_id(),
        header.message_id,
        header.message_type,
        header.sender,
        header.receiver,
        permit_id,
        direction,
        message,
        signature,
        requester,
        utcnow() + state.config.answer_retention,
        None if delivery is None else delivery["id"],
        None if delivery is None else delivery["lease_token"],
        finish_status,
        None if lease_answer is None else lease_answer[0],
    )
    row: asyncpg.Record | None
    if state.concluding is not None:
        row = await state.concluding.fetchrow(params)
    else:  # a state not started by the hub's application: alone
        row = await state.pool.fetchrow(_CONCLUDE_SQL, *params)
    assert row is not None
    if row["won"] and lease_answer is not None and row["id"] is not None:
        lease_answer[1](row)
    return bool(row["won"])


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
    lease_answer: tuple[dt.timedelta, Callable[[asyncpg.Record], None]] | None = None,
) -> Conclusion:
    """Record the query's one conclusion and queue it for the requester, in one transaction.

    With ``delivery`` (the provision request that produced it), that delivery ends too,
    if this worker still holds its lease.  With ``lease_answer`` (a lease and a callback),
    the answer's delivery is queued leased to the caller, who is handed it to deliver.
    """
    if await _conclude_at_once(
        state,
        query_id,
        outcome,
        reason_code,
        requester=requester,
        message=message,
        signature=signature,
        header=header,
        direction=direction,
        permit_id=permit_id,
        delivery=delivery,
        finish_status=finish_status,
        lease_answer=lease_answer,
    ):
        if lease_answer is None:  # else the caller delivers it
            state.wake.set()
        log.info("query_concluded", query_id=query_id, outcome=outcome, reason=reason_code)
        return Conclusion.WON
    # Concluded before (a repeat, or a contradiction to keep): the long way, in which
    # this delivery ends too.
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
