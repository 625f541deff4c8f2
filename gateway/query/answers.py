"""The conclusions of our own queries: a provider's answer or the hub's refusal, applied once.

Bound to the query (and its permit, in the sealed payload's associated data) and
signed, a copy can only conclude a query the same way; a contradicting one is
kept as evidence, counted and logged.

Answers that arrive together are concluded together (group commit): each
conclusion appends a requester record to the tenant's hash chain, whose head is
locked from the record's insert to the commit, so one commit per answer queues
them behind each other's WAL flush.  An opened answer waits in the tenant's
:class:`~chukan.gateway.core.batching.Batcher`; one statement concludes every
waiting one (each only if still open, its record chained in the same statement,
its notice sent at the commit) and one commit makes them durable together.  An
idle gateway runs a batch of one: today's one-query statement.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    Envelope,
    ProvisionAnswer,
    QueryRefusal,
    answer_aad,
    decode_message,
)
from chukan.codecs.errors import CodecError
from chukan.codecs.schema_items import canonical_item_bytes
from chukan.gateway.core.batching import Batcher
from chukan.gateway.core.errors import MisaddressedError, QueryUnknownError
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.query.lifecycle import (
    CONCLUDE_ANSWERED_SQL,
    OPEN_STATUSES,
    QUERY_CHANNEL,
    RECORD_CONCLUDED,
    QueryStatus,
    conclude_refused,
)
from chukan.gateway.records.store import count_record
from chukan.gateway.replica.items import INLINE_DECODE_BYTES
from chukan.keys import KeysError

log = structlog.get_logger("chukan.gateway")


async def apply_conclusion(state: GatewayState, envelope: Envelope) -> web.Response:
    body, sender = envelope.body, envelope.header.sender
    if isinstance(body, ProvisionAnswer) and sender != HUB:
        return await take_answer(state, envelope, body)
    if isinstance(body, QueryRefusal) and sender == HUB:
        return await take_refusal(state, body)
    raise MisaddressedError(f"{envelope.header.message_type} from {sender} is not accepted here")


async def apply_pulled_conclusion(state: GatewayState, raw: bytes, signature: str | None) -> None:
    """A conclusion the hub kept for us, fetched by the sweep: checked like a delivery.

    Its timestamp is not checked against the message window: it is the message the
    hub tried to deliver earlier, byte for byte, and is applied idempotently.
    """
    envelope = decode_message(raw)
    await state.hub.verify_sender(envelope, raw, signature)
    await apply_conclusion(state, envelope)


# -- 情報提供: exactly once per provision request ---------------------------------------------


#: Claims a provision request's message id in the caller's transaction.  A copy that
#: arrives while the first is in progress waits here (on the uncommitted row) and
#: then finds the stored answer; a rollback releases the claim for a retry.
async def take_answer(
    state: GatewayState, envelope: Envelope, body: ProvisionAnswer
) -> web.Response:
    """An answer to one of our queries: decrypt, keep until collected, record.

    Applied once: a repeat of the conclusion already held is acknowledged; an answer
    that contradicts it is kept as evidence, counted and logged, never dropped silently.
    """
    provider = envelope.header.sender
    row = await state.pool.fetchrow(
        "SELECT provider, status, permit_id, item_code FROM queries WHERE query_id = $1",
        body.query_id,
    )
    if row is None or row["provider"] != provider:
        raise QueryUnknownError("no query of ours matches this answer")
    if row["permit_id"] is not None and row["permit_id"] != body.permit_id:
        return await _contradiction(
            state, body.query_id, row["status"], provider, body.outcome, "permit_mismatch"
        )
    received = QueryStatus.ANSWERED if body.outcome == "provided" else QueryStatus.REFUSED
    if row["status"] not in OPEN_STATUSES:
        return await _already_concluded(state, body.query_id, row["status"], received, provider)
    if body.outcome == "refused" or body.payload is None:
        concluded = await conclude_refused(
            state,
            body.query_id,
            body.reason_code or "refused",
            "the provider refused",
            permit_id=body.permit_id,
        )
    else:
        aad = answer_aad(body.query_id, body.permit_id, provider, state.config.agency_code)
        try:
            # Any key of the ring still in its overlap window opens the answer.
            plaintext = state.ring.unseal(body.payload, aad, now=utcnow())
            # What we hand to core systems is safe XML that its item's schema accepts.
            if len(plaintext) > INLINE_DECODE_BYTES:  # a large item off the event loop
                await asyncio.to_thread(canonical_item_bytes, row["item_code"], plaintext)
            else:
                canonical_item_bytes(row["item_code"], plaintext)
        except (KeysError, CodecError) as exc:
            # Provided by the provider, but not usable here: this side's record says why.
            concluded = await conclude_refused(
                state,
                body.query_id,
                exc.code,
                "the answer could not be opened",
                permit_id=body.permit_id,
            )
            received = QueryStatus.REFUSED
            log.warning("answer_unusable", query_id=body.query_id, code=exc.code)
        else:
            concluded = await conclude_answered(
                state, Answered(body.query_id, plaintext, body.permit_id)
            )
            if concluded:
                count_record(state.config.agency_code, "requester", "provided")
                state.notify(body.query_id)
                log.info("query_answered", query_id=body.query_id)
    if not concluded:  # another delivery (or a pull) concluded it meanwhile
        status = await state.pool.fetchval(
            "SELECT status FROM queries WHERE query_id = $1", body.query_id
        )
        return await _already_concluded(state, body.query_id, status, received, provider)
    return web.json_response({"query_id": body.query_id, "accepted": True})


# -- group commit of answered conclusions ---------------------------------------------------

#: At most this many conclusions per statement (bounded parameter arrays; each item at
#: most ``INLINE_DECODE_BYTES``, larger ones are concluded alone).
MAX_BATCH: Final = 128

#: Every query of the batch still open (``queued``/``sent``) concluded as answered, its
#: requester record appended (after every update: the rows are locked before the chain
#: head is) and its notice sent; one row per input, in order, saying whether it concluded.
_BATCH_RECORDED: Final = RECORD_CONCLUDED.format(source="concluded")
CONCLUDE_ANSWERED_BATCH_SQL: Final = f"""
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[])
            WITH ORDINALITY AS t(query_id, result, permit_id, position)),
    concluded AS (
        UPDATE queries q SET status = 'answered', result = i.result, answered_at = now(),
               permit_id = i.permit_id, sent_at = COALESCE(q.sent_at, now())
        FROM input i
        WHERE q.query_id = i.query_id AND q.query_id = ANY($1)
          AND q.status IN ('queued', 'sent')
        RETURNING q.*, i.position),{_BATCH_RECORDED}
        ORDER BY q.position
        RETURNING query_id)
    SELECT i.query_id, r.query_id IS NOT NULL AS concluded,
           CASE WHEN r.query_id IS NOT NULL
                THEN pg_notify('{QUERY_CHANNEL}', chukan_tenant() || ' ' || i.query_id) END
    FROM input i LEFT JOIN recorded r USING (query_id)
    ORDER BY i.position"""  # noqa: S608 -- constant fragments, values are parameters


@dataclass(frozen=True, slots=True)
class Answered:
    """An answer opened and checked, waiting for its conclusion's commit."""

    query_id: str
    result: bytes
    permit_id: str


async def conclude_answered(state: GatewayState, answered: Answered) -> bool:
    """True once ``answered`` concluded its query (committed); False if it was not open.

    A failed statement raises here for every conclusion of its batch (the hub retries).
    A large item is concluded alone, so that a batch's parameters stay bounded.
    """
    if len(answered.result) > INLINE_DECODE_BYTES:
        return await _conclude_one(state.pool, answered)
    batcher = state.conclusions
    if batcher is None:  # one per tenant's state, as its pool
        batcher = state.conclusions = Batcher(
            functools.partial(_conclude_batch, state.pool),
            max_batch=MAX_BATCH,
            name="query-conclusions",
            keys=lambda a: (a.query_id,),
        )
    return await batcher.submit(answered)


async def _conclude_batch(pool: asyncpg.Pool, batch: Sequence[Answered]) -> list[bool]:
    """One statement, one commit for the batch; a batch of one is the one-query statement."""
    if len(batch) == 1:
        return [await _conclude_one(pool, batch[0])]
    rows = await pool.fetch(
        CONCLUDE_ANSWERED_BATCH_SQL,
        [a.query_id for a in batch],
        [a.result for a in batch],
        [a.permit_id for a in batch],
    )
    concluded = [bool(row["concluded"]) for row in rows]
    log.info("query_conclusions_batch", size=len(batch), concluded=sum(concluded))
    return concluded


async def _conclude_one(pool: asyncpg.Pool, answered: Answered) -> bool:
    """Today's one-query statement: the cheapest for a conclusion alone."""
    return bool(
        await pool.fetchval(
            CONCLUDE_ANSWERED_SQL, answered.query_id, answered.result, answered.permit_id
        )
    )


async def take_refusal(state: GatewayState, body: QueryRefusal) -> web.Response:
    """The hub's signed refusal of one of our queries (after a permit, or a give-up)."""
    concluded = await conclude_refused(
        state, body.query_id, body.reason_code, body.message, permit_id=body.permit_id
    )
    if not concluded:
        status = await state.pool.fetchval(
            "SELECT status FROM queries WHERE query_id = $1", body.query_id
        )
        if status is None:
            raise QueryUnknownError("no query of ours matches this refusal")
        return await _already_concluded(state, body.query_id, status, QueryStatus.REFUSED, HUB)
    return web.json_response({"query_id": body.query_id, "accepted": True})


async def _already_concluded(
    state: GatewayState, query_id: str, stored: str, received: QueryStatus, sender: str
) -> web.Response:
    """A second conclusion: the same one is a retried delivery, another is a contradiction."""
    if stored == received:
        return web.json_response({"query_id": query_id, "accepted": True, "duplicate": True})
    return await _contradiction(state, query_id, stored, sender, received, "outcome_differs")


async def _contradiction(
    state: GatewayState, query_id: str, stored: str, sender: str, received: str, kind: str
) -> web.Response:
    """Keep what contradicts our conclusion (it should never happen): evidence for audit."""
    await state.pool.execute(
        "INSERT INTO conclusion_conflicts (query_id, stored_status, received, sender, kind) "
        "VALUES ($1, $2, $3, $4, $5)",
        query_id,
        stored,
        received,
        sender,
        kind,
    )
    metrics_for(state.config.agency_code).conclusion_conflicts.inc(kind)
    log.error(
        "answer_contradicts_conclusion",
        query_id=query_id,
        stored=stored,
        received=received,
        sender=sender,
        kind=kind,
    )
    return web.json_response(
        {"query_id": query_id, "accepted": False, "conflict": kind}, status=200
    )
