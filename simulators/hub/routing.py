"""Queries, answers and conclusions: the hub's routing of 情報照会 (DESIGN §3 flow 4).

A query is checked against the authorization list, the requester's 符号 is
converted to the provider's, a permit is issued for exactly the provision
request that carries it, and that request is queued in the outbox — all
recorded in one transaction.  A query id seen before gets its first answer
again; the permit is never issued twice.  Answers the provider sends later
(after manual review) and requesters asking for a conclusion are handled here
too; the delivery worker (:mod:`chukan.simulators.hub.worker`) does the sending.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    ConclusionRequest,
    Envelope,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    QueryRequest,
    encode_body_c14n,
    encode_message,
    new_message_id,
)
from chukan.gateway.core.errors import (
    AgencyUnknownError,
    ConclusionConflictError,
    ForbiddenError,
    GatewayError,
    MisaddressedError,
    QueryUnknownError,
)
from chukan.gateway.core.web import (
    SIGNATURE_HEADER,
    current_request_id,
    error_response,
    signature_header,
)
from chukan.permits import (
    AuthorizationRow,
    NotAuthorizedError,
    Permit,
    encode_permit,
    issue_permit,
)
from chukan.simulators.hub import lists, outbox, record_status, worker
from chukan.simulators.hub.codes import provider_person_code
from chukan.simulators.hub.conclusions import Conclusion, conclude
from chukan.simulators.hub.group_commit import GroupCommit
from chukan.simulators.hub.outbox import DELIVERY_INSERT_LEASED, DELIVERY_ONCE, LEASED_VALUES
from chukan.simulators.hub.records import ROUTED_INSERT
from chukan.simulators.hub.registry import Agency
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")


@dataclass(frozen=True, slots=True)
class Route:
    """What the checks of a query established: the list row, both agencies, the 符号."""

    row: AuthorizationRow
    requester: Agency
    provider: Agency
    provider_person_code: str


# -- a new query ----------------------------------------------------------------------


async def route_query(
    state: HubState,
    envelope: Envelope,
    body: QueryRequest,
    raw: bytes,
    sender: Agency,
    provider: Agency | None,
) -> web.Response:
    """情報照会: check the list, convert 符号, issue the permit, queue the provision request.

    ``sender`` and ``provider`` (None: not registered) as read with the message.
    """
    requester = envelope.header.sender
    now = utcnow()
    # A query id seen before gets its first answer again.  It is looked up only when
    # routing stops (a refusal) or finds the query opened already (_OPEN_SQL).
    try:
        await record_status.require_recording(state)  # 503 records_unavailable: hub-records.md
        lists.require_current(state.authorization_list, now)
    except GatewayError:
        existing = await _seen_before(state, body.query_id)
        if existing is not None:
            return _query_again(existing, requester, body.query_id)
        raise
    try:
        route = await _check_query(state, sender, provider, body, now)
    except (GatewayError, NotAuthorizedError) as exc:
        existing = await _seen_before(state, body.query_id)
        if existing is not None:
            return _query_again(existing, requester, body.query_id)
        await _record_refusal(state, requester, body, exc)
        raise
    request_body = _provision_request(body, route)
    permit = issue_permit(
        route.row,
        query_id=body.query_id,
        provider_person_code=route.provider_person_code,
        body=encode_body_c14n(request_body),
        now=now,
        lifetime=state.config.permit_lifetime,
    )
    out_header = Header(
        new_message_id(),
        "ProvisionRequest",
        HUB,
        route.provider.code,
        now,
        encode_permit(permit, state.keys.signing),
    )
    message = encode_message(out_header, request_body)
    header = envelope.header
    # Delivered at once, leased to this process, if a slot to the provider is free; else
    # queued due for the worker, which claims only what it can send (a slow provider's
    # backlog waits in the outbox, not in deliveries that time out at the provider).
    at_once = worker.can_deliver_now(state, route.provider.code)
    params = (
        *_open_values(body, route, permit, now),
        header.message_id,
        header.message_type,
        header.sender,
        header.receiver,
        raw,
        out_header.message_id,
        message,
        signature_header(state.keys.signing, message),
        permit.expires_at + state.config.delivery_grace,
        outbox.lease(state.config) if at_once else None,
    )
    opened: asyncpg.Record | None
    if state.opening is not None:  # with the queries opened at the same time: one commit
        opened = await state.opening.fetchrow(params)
    else:  # a state not started by the hub's application: alone
        opened = await state.pool.fetchrow(_OPEN_SQL, *params)
    assert opened is not None
    if not opened["opened"]:
        # The same query again (or twice at once): the first one stands.
        existing = await _seen_before(state, body.query_id)
        assert existing is not None
        return _query_again(existing, requester, body.query_id)
    if opened["lease_token"] is not None:  # queued leased to this process: it goes out now
        known = worker.Known(route.provider, route.requester, permit.permit_id)
        worker.deliver_now(state, opened, known)
    elif opened["id"] is not None:
        state.wake.set()
    log.info(
        "permit_issued",
        requester=requester,
        provider=route.provider.code,
        permit_id=permit.permit_id,
        legal_basis=permit.legal_basis,
    )
    return web.json_response(
        {
            "query_id": body.query_id,
            "permit_id": permit.permit_id,
            "expires_at": permit.expires_at.isoformat(),
        },
        status=202,
    )


async def _seen_before(state: HubState, query_id: str) -> asyncpg.Record | None:
    """The hub's record of a query id seen before, if any."""
    return await state.pool.fetchrow(
        "SELECT requester, permit_id, reason_code FROM hub_records WHERE query_id = $1", query_id
    )


async def _check_query(
    state: HubState,
    requester: Agency,
    provider: Agency | None,
    body: QueryRequest,
    now: dt.datetime,
) -> Route:
    """The list allows the query, both agencies are registered, the provider knows the person.

    ``requester``: the sender, as read to check the message's signature.
    """
    row = state.authorization_list.check(
        requester.code, body.provider, body.procedure_code, body.item_code, on=now.date()
    )
    if row.business_code != body.business_code:
        raise NotAuthorizedError("事務コード does not match the authorization list")
    if provider is None:
        raise AgencyUnknownError(f"agency {body.provider} is not registered with the hub")
    provider_code = await provider_person_code(
        state.pool, requester.code, body.requester_person_code, provider.code
    )
    return Route(row, requester, provider, provider_code)


def _provision_request(body: QueryRequest, route: Route) -> ProvisionRequest:
    """The request the provider receives: its own 符号, and the key to seal the answer for."""
    return ProvisionRequest(
        query_id=body.query_id,
        requester=route.requester.code,
        provider_person_code=route.provider_person_code,
        business_code=body.business_code,
        procedure_code=body.procedure_code,
        item_code=body.item_code,
        legal_basis=route.row.legal_basis,
        requester_key_id=route.requester.encryption_key_id,
        requester_key=route.requester.encryption_key,
        reference_date=body.reference_date,
        non_disclosure=body.non_disclosure,
    )


#: Opens the query's record with its permit; RETURNING nothing if another request
#: opened it first.  Parameters $1-$14 (:func:`_open_values`).
_OPEN_RECORD_SQL: Final = """
    INSERT INTO hub_record_events (query_id, kind, permit_id, requester, provider,
        business_code, procedure_code, item_code, legal_basis, requester_person_code,
        provider_person_code, requested_at, permit_expires_at, outcome,
        non_disclosure, request_id)
    VALUES ($1, 'opened', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
            'permitted', $13, $14)
    ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING RETURNING 1"""

#: The record opened, the query and the provision request kept byte for byte, and the
#: provision request queued — one statement, one commit; nothing of it if the record
#: was opened before.  $15-$19 the query's header and bytes, $20 the request's message
#: id, $21 its bytes, $22 its signature, $23 when its delivery gives up, $24 its lease
#: to this process, which delivers it at once (NULL: queued due, for the worker).
#: Returns ``opened`` and the delivery.
_OPEN_SQL: Final = f"""
    WITH opened AS ({_OPEN_RECORD_SQL}),
    routed AS ({ROUTED_INSERT}
        SELECT * FROM (VALUES ($15::text, $16::text, $17::text, $18::text, $1, NULL::text,
                               'in', $19::bytea),
                              ($20, 'ProvisionRequest', '{HUB}', $4, $1, $2, 'out', $21))
            AS m WHERE EXISTS (SELECT 1 FROM opened)),
    queued AS ({DELIVERY_INSERT_LEASED}
        SELECT 'provision_request', $4, $1, $21, $22, $23, $14,
               {LEASED_VALUES.format(lease="$24")}
        WHERE EXISTS (SELECT 1 FROM opened) {DELIVERY_ONCE} RETURNING *)
    SELECT EXISTS (SELECT 1 FROM opened) AS opened, queued.*
    FROM (SELECT 1) AS one LEFT JOIN queued ON true"""  # noqa: S608 -- constant fragments


#: _OPEN_SQL for several new queries at once (distinct query ids), as the same writes
#: over arrays of its parameters $1-$24, in order: one row per query, in order, as
#: _OPEN_SQL returns it.  Rows are written (and chained) in the queries' order.
_OPEN_MANY_SQL: Final = f"""
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::integer[], $9::text[], $10::text[],
                             $11::timestamptz[], $12::timestamptz[], $13::boolean[],
                             $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                             $19::bytea[], $20::text[], $21::bytea[], $22::text[],
                             $23::timestamptz[], $24::interval[])
            WITH ORDINALITY AS t(query_id, permit_id, requester, provider, business_code,
                                 procedure_code, item_code, legal_basis,
                                 requester_person_code, provider_person_code, requested_at,
                                 permit_expires_at, non_disclosure, request_id, message_id,
                                 message_type, sender, receiver, raw, request_message_id,
                                 request_body, request_signature, give_up_at, lease,
                                 position)),
    opened AS (
        INSERT INTO hub_record_events (query_id, kind, permit_id, requester, provider,
            business_code, procedure_code, item_code, legal_basis, requester_person_code,
            provider_person_code, requested_at, permit_expires_at, outcome,
            non_disclosure, request_id)
        SELECT query_id, 'opened', permit_id, requester, provider, business_code,
               procedure_code, item_code, legal_basis, requester_person_code,
               provider_person_code, requested_at, permit_expires_at, 'permitted',
               non_disclosure, request_id
        FROM input ORDER BY position
        ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING RETURNING query_id),
    routed AS ({ROUTED_INSERT}
        SELECT m.message_id, m.message_type, m.sender, m.receiver, m.query_id, m.permit_id,
               m.direction, m.body
        FROM input i JOIN opened o USING (query_id)
        CROSS JOIN LATERAL (VALUES
            (i.message_id, i.message_type, i.sender, i.receiver, i.query_id, NULL::text,
             'in', i.raw, 1),
            (i.request_message_id, 'ProvisionRequest', '{HUB}', i.provider, i.query_id,
             i.permit_id, 'out', i.request_body, 2))
            AS m(message_id, message_type, sender, receiver, query_id, permit_id, direction,
                 body, step)
        ORDER BY i.position, m.step),
    queued AS ({DELIVERY_INSERT_LEASED}
        SELECT 'provision_request', i.provider, i.query_id, i.request_body,
               i.request_signature, i.give_up_at, i.request_id,
               {LEASED_VALUES.format(lease="i.lease")}
        FROM input i JOIN opened o USING (query_id) ORDER BY i.position {DELIVERY_ONCE}
        RETURNING *)
    SELECT o.query_id IS NOT NULL AS opened, q.*
    FROM input i LEFT JOIN opened o USING (query_id)
    LEFT JOIN queued q ON q.query_id = i.query_id
    ORDER BY i.position"""  # noqa: S608 -- constant fragments


def group_commit(pool: asyncpg.Pool) -> GroupCommit:
    """The hub process's new queries, concurrent ones opened in one statement and one commit."""
    return GroupCommit(pool, one=_OPEN_SQL, many=_OPEN_MANY_SQL, name="hub-openings")


def _open_values(
    body: QueryRequest, route: Route, permit: Permit, now: dt.datetime
) -> tuple[object, ...]:
    return (
        body.query_id,
        permit.permit_id,
        route.requester.code,
        route.provider.code,
        body.business_code,
        body.procedure_code,
        body.item_code,
        route.row.legal_basis,
        body.requester_person_code,
        route.provider_person_code,
        now,
        permit.expires_at,
        body.non_disclosure,
        current_request_id(),
    )


async def _record_refusal(
    state: HubState,
    requester: str,
    body: QueryRequest,
    error: GatewayError | NotAuthorizedError,
) -> None:
    """A query refused at the hub is recorded once, with its code, and never gets a permit."""
    code = error.code
    await state.pool.execute(
        """INSERT INTO hub_record_events (query_id, kind, requester, provider, business_code,
                                          procedure_code, item_code, requester_person_code,
                                          requested_at, answered_at, outcome, reason_code,
                                          non_disclosure, request_id)
           VALUES ($1, 'opened', $2, $3, $4, $5, $6, $7, now(), now(), 'refused', $8, $9,
                   $10)
           ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING""",
        body.query_id,
        requester,
        body.provider,
        body.business_code,
        body.procedure_code,
        body.item_code,
        body.requester_person_code,
        code,
        body.non_disclosure,
        current_request_id(),
    )
    log.info("query_refused", requester=requester, provider=body.provider, code=code)


def _query_again(existing: asyncpg.Record, requester: str, query_id: str) -> web.Response:
    """A query id seen before: its first answer again (the permit is never issued twice)."""
    if existing["requester"] != requester:
        raise ForbiddenError("query id belongs to another agency")
    if existing["permit_id"] is None:
        return _refused_again(query_id, existing["reason_code"])
    return web.json_response(
        {"query_id": query_id, "permit_id": existing["permit_id"], "duplicate": True},
        status=202,
    )


def _refused_again(query_id: str, reason_code: str | None) -> web.Response:
    """The hub's first refusal of a query, repeated with its stable code."""
    code = reason_code or "refused"
    return error_response(403, code, f"query {query_id} was refused by the hub: {code}")


# -- answers and conclusions ------------------------------------------------------------


async def route_deferred_answer(
    state: HubState,
    envelope: Envelope,
    body: ProvisionAnswer,
    raw: bytes,
    signature: str,
) -> web.Response:
    """An answer a provider sends later (after manual review): route it to the requester."""
    provider = envelope.header.sender
    record = await state.pool.fetchrow(
        "SELECT requester, provider, permit_id, outcome FROM hub_records WHERE query_id = $1",
        body.query_id,
    )
    if record is None or record["provider"] != provider or record["permit_id"] != body.permit_id:
        raise ForbiddenError("no query with this permit is awaiting this provider's answer")
    if envelope.header.receiver != record["requester"]:
        raise MisaddressedError("answer is not addressed to the requester of the query")
    won = await conclude(
        state,
        body.query_id,
        body.outcome,
        body.reason_code,
        requester=record["requester"],
        sender=provider,
        message=raw,
        signature=signature,
        header=envelope.header,
        direction="in",
        permit_id=body.permit_id,
    )
    if won is Conclusion.CONTRADICTS:
        raise ConclusionConflictError("the query was already concluded otherwise")
    return web.json_response(
        {"query_id": body.query_id, "routed": True, "duplicate": won is Conclusion.REPEATED},
        status=202,
    )


async def recover_conclusion(
    state: HubState, envelope: Envelope, body: ConclusionRequest
) -> web.Response:
    """A requester recovers its query's conclusion: the message the hub holds for it.

    200 with the conclusion (the provider's signed answer or the hub's signed refusal,
    byte for byte, as delivered); 202 while the query is open; 404 if the hub never
    accepted the query; a query refused at the hub is refused again with its code.
    """
    record = await state.pool.fetchrow(
        "SELECT r.requester, r.permit_id, r.outcome, r.reason_code, d.body, d.signature "
        "FROM hub_records r LEFT JOIN deliveries d "
        "ON d.query_id = r.query_id AND d.kind = 'answer' WHERE r.query_id = $1",
        body.query_id,
    )
    if record is None or record["requester"] != envelope.header.sender:
        raise QueryUnknownError("the hub holds no query with this id for this agency")
    if record["body"] is not None:
        return web.Response(
            body=record["body"],
            content_type="application/xml",
            headers={SIGNATURE_HEADER: record["signature"]},
        )
    if record["permit_id"] is None:  # refused when it arrived
        return _refused_again(body.query_id, record["reason_code"])
    return web.json_response({"query_id": body.query_id, "status": "open"}, status=202)
