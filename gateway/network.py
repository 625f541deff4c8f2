"""Network API for the hub: provision requests with permits, answers, refusals."""

from __future__ import annotations

import datetime as dt

import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    Envelope,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    QueryRefusal,
    decode_message,
    encode_message,
    new_message_id,
)
from chukan.codecs.xmlsafe import parse_xml
from chukan.keys import KeysError, public_encryption_key, seal
from chukan.permits import (
    Permit,
    PermitReplayedError,
    PermitsError,
    verify_permit,
)
from chukan.permits.errors import PermitMalformedError

from . import db
from .errors import (
    ForbiddenError,
    MessageReplayError,
    MessageSignatureError,
    MisaddressedError,
    QueryUnknownError,
    StaleMessageError,
)
from .listsync import check_provision, require_list
from .queries import CONCLUDE_ANSWERED_SQL, conclude_refused
from .records import RecordEntry, count_record, write_record
from .replica import PROVISION_SQL, ReplicaInconsistentError, provision_document, today_jst
from .state import GATEWAY_STATE, GatewayState, answer_aad, utcnow
from .web import (
    SIGNATURE_HEADER,
    XML_CONTENT_TYPE,
    read_xml,
    signed_xml_response,
    verify_signature,
)

log = structlog.get_logger("chukan.gateway")

# -- network API ---------------------------------------------------------------------------


async def receive_message(request: web.Request) -> web.Response:
    state = request.app[GATEWAY_STATE]
    raw = await read_xml(request)
    envelope = decode_message(raw)
    header = envelope.header
    if header.receiver != state.config.agency_code:
        raise MisaddressedError("message is not addressed to this agency")
    signature = request.headers.get(SIGNATURE_HEADER)
    if header.sender == HUB:
        verify_signature(signature, raw, state.hub.trusted_hub)
    else:
        keys = await state.hub.peer_signing_keys(header.sender)
        try:
            verify_signature(signature, raw, keys)
        except MessageSignatureError:
            keys = await state.hub.peer_signing_keys(header.sender, refresh=True)
            verify_signature(signature, raw, keys)
    if abs(utcnow() - header.created) > state.config.timing.message_skew:
        raise StaleMessageError("message timestamp is outside the accepted window")
    if isinstance(envelope.body, ProvisionRequest):
        require_list(state)  # 503 before the message id is spent: the hub may retry it
    fresh = await state.pool.fetchval(
        "INSERT INTO seen_messages (message_id, sender) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        header.message_id,
        header.sender,
    )
    body = envelope.body
    if isinstance(body, ProvisionRequest) and header.sender == HUB:
        if fresh is None:  # the hub retries: the first answer again, or a refusal
            return await _repeat_answer(state, header.message_id)
        return await _provide(state, envelope, body)
    if fresh is None and not isinstance(body, ProvisionAnswer | QueryRefusal):
        raise MessageReplayError("message id already seen")
    # Answers and refusals are applied idempotently (by query state), so a delivery
    # retried after a lost response is acknowledged again rather than refused.
    if isinstance(body, ProvisionAnswer) and header.sender != HUB:
        return await _take_answer(state, envelope, body)
    if isinstance(body, QueryRefusal) and header.sender == HUB:
        await conclude_refused(
            state, body.query_id, body.reason_code, body.message, permit_id=body.permit_id
        )
        return web.json_response({"query_id": body.query_id, "accepted": True})
    raise MisaddressedError(f"{header.message_type} from {header.sender} is not accepted here")


async def _record_provision(
    conn: db.Executor,
    state: GatewayState,
    body: ProvisionRequest,
    *,
    permit_id: str | None,
    atena_id: str | None,
    requested_at: dt.datetime,
    outcome: str,
    reason: str | None,
) -> None:
    await write_record(
        conn,
        state.config.agency_code,
        RecordEntry(
            role="provider",
            query_id=body.query_id,
            permit_id=permit_id,
            requester=body.requester,
            provider=state.config.agency_code,
            business_code=body.business_code,
            procedure_code=body.procedure_code,
            item_code=body.item_code,
            legal_basis=body.legal_basis,
            atena_id=atena_id,
            requested_at=requested_at,
            provided_at=utcnow() if outcome == "provided" else None,
            outcome=outcome,
            reason_code=reason,
            non_disclosure=body.non_disclosure,
        ),
    )


def _check_permit(state: GatewayState, envelope: Envelope, body: ProvisionRequest) -> Permit:
    if envelope.header.permit is None:
        raise PermitMalformedError("provision request carries no permit")
    permit = verify_permit(
        envelope.header.permit,
        state.hub.trusted_hub,
        audience=state.config.agency_code,
        now=utcnow(),
        body=envelope.body_c14n,
        skew=state.config.timing.permit_skew,
    )
    if (
        permit.query_id != body.query_id
        or permit.requester != body.requester
        or permit.provider_person_code != body.provider_person_code
        or permit.procedure_code != body.procedure_code
        or permit.item_code != body.item_code
        or permit.business_code != body.business_code
    ):
        raise PermitMalformedError("permit does not match the request it travels with")
    check_provision(state, permit)
    return permit


async def _provide(state: GatewayState, envelope: Envelope, body: ProvisionRequest) -> web.Response:
    """情報提供: verify the permit, find the person and item, seal for the requester."""
    requested_at = utcnow()
    try:
        permit = _check_permit(state, envelope, body)
    except PermitsError as exc:
        await _record_provision(
            state.pool,
            state,
            body,
            permit_id=None,
            atena_id=None,
            requested_at=requested_at,
            outcome="refused",
            reason=exc.code,
        )
        log.warning("permit_refused", query_id=body.query_id, code=exc.code)
        raise
    # A malformed requester key is refused before anything is consumed or recorded.
    recipient = public_encryption_key(body.requester_key_id, body.requester_key)
    reference_date = body.reference_date or today_jst()
    # One autocommitted statement: permit consumed, outcome decided, held provision
    # queued and the record appended together (see replica.PROVISION_SQL).
    row = await state.pool.fetchrow(
        PROVISION_SQL,
        permit.permit_id,
        permit.query_id,
        permit.expires_at,
        body.provider_person_code,
        body.item_code,
        reference_date,
        body.requester,
        state.config.agency_code,
        body.business_code,
        body.procedure_code,
        body.legal_basis,
        requested_at,
        body.requester_key_id,
        body.requester_key,
        body.non_disclosure,
    )
    assert row is not None
    outcome: str | None = row["outcome"]
    reason: str | None = row["reason"]
    if outcome is not None:
        count_record(state.config.agency_code, "provider", outcome)
    if not row["fresh"]:
        raise PermitReplayedError("permit was already used")
    atena_id = row["atena_id"]
    payload = None
    document: bytes | None = row["contents"][0] if outcome == "provided" else None
    if outcome is None:  # several record keys in force: combine them, then record
        try:
            document = provision_document(body.item_code, row["contents"])
        except ReplicaInconsistentError as exc:
            outcome, reason = "refused", exc.code
        else:
            outcome, reason = "provided", None
        await _record_provision(
            state.pool,
            state,
            body,
            permit_id=permit.permit_id,
            atena_id=atena_id,
            requested_at=requested_at,
            outcome=outcome,
            reason=reason,
        )
    if outcome == "provided" and document is not None:
        aad = answer_aad(body.query_id, permit.permit_id, state.config.agency_code, body.requester)
        payload = seal(recipient, document, aad)
    if outcome == "held":
        log.info("provision_held", query_id=body.query_id)
        held = web.json_response({"query_id": body.query_id, "status": "held"}, status=202)
        assert isinstance(held.body, bytes)
        await _keep_answer(state, envelope, permit, 202, held.body, None)
        return held
    answer = ProvisionAnswer(
        query_id=body.query_id,
        permit_id=permit.permit_id,
        outcome="provided" if outcome == "provided" else "refused",
        reason_code=reason,
        payload=payload,
    )
    header = Header(
        new_message_id(), "ProvisionAnswer", state.config.agency_code, body.requester, utcnow()
    )
    log.info("provision_answered", query_id=body.query_id, outcome=outcome, reason=reason)
    response = signed_xml_response(state.keys.signing, encode_message(header, answer))
    assert isinstance(response.body, bytes)
    await _keep_answer(
        state, envelope, permit, 200, response.body, response.headers[SIGNATURE_HEADER]
    )
    return response


async def _keep_answer(
    state: GatewayState,
    envelope: Envelope,
    permit: Permit,
    status: int,
    body: bytes,
    signature: str | None,
) -> None:
    """Keep the answer until the permit expires, for a retry of the same request."""
    await state.pool.execute(
        "INSERT INTO provision_answers (message_id, permit_id, status, body, signature, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        envelope.header.message_id,
        permit.permit_id,
        status,
        body,
        signature,
        permit.expires_at,
    )


async def _repeat_answer(state: GatewayState, message_id: str) -> web.Response:
    """The stored answer to a provision request the hub delivers again."""
    row = await state.pool.fetchrow(
        "SELECT status, body, signature FROM provision_answers WHERE message_id = $1",
        message_id,
    )
    if row is None:
        raise MessageReplayError("message id already seen")
    log.info("provision_answer_repeated", status=row["status"])
    if row["signature"] is None:
        return web.Response(body=row["body"], status=row["status"], content_type="application/json")
    return web.Response(
        body=row["body"],
        status=row["status"],
        content_type=XML_CONTENT_TYPE,
        headers={SIGNATURE_HEADER: row["signature"]},
    )


async def _take_answer(
    state: GatewayState, envelope: Envelope, body: ProvisionAnswer
) -> web.Response:
    """An answer to one of our queries: decrypt, keep until collected, record."""
    provider = envelope.header.sender
    row = await state.pool.fetchrow(
        "SELECT provider, status, permit_id FROM queries WHERE query_id = $1", body.query_id
    )
    if row is None or row["provider"] != provider:
        raise QueryUnknownError("no query of ours matches this answer")
    if row["status"] not in ("queued", "sent"):
        if row["permit_id"] == body.permit_id:  # a retried delivery of what we have
            return web.json_response(
                {"query_id": body.query_id, "accepted": True, "duplicate": True}
            )
        raise MessageReplayError("the query was already concluded")
    if row["permit_id"] is not None and row["permit_id"] != body.permit_id:
        raise ForbiddenError("answer names another permit than the query's")
    if body.outcome == "refused" or body.payload is None:
        await conclude_refused(
            state,
            body.query_id,
            body.reason_code or "refused",
            "the provider refused",
            permit_id=body.permit_id,
        )
        return web.json_response({"query_id": body.query_id, "accepted": True})
    aad = answer_aad(body.query_id, body.permit_id, provider, state.config.agency_code)
    try:
        # Any key of the ring still in its overlap window opens the answer.
        plaintext = state.ring.unseal(body.payload, aad, now=utcnow())
    except KeysError as exc:
        await conclude_refused(
            state, body.query_id, exc.code, "the answer could not be decrypted", permit_id=None
        )
        raise
    parse_xml(plaintext)  # what we hand to core systems must be safe XML too
    recorded = await state.pool.fetchval(
        CONCLUDE_ANSWERED_SQL,
        body.query_id,
        plaintext,
        body.permit_id,
    )
    if not recorded:
        raise MessageReplayError("the query was already concluded")
    count_record(state.config.agency_code, "requester", "provided")
    state.notify(body.query_id)
    log.info("query_answered", query_id=body.query_id)
    return web.json_response({"query_id": body.query_id, "accepted": True})
