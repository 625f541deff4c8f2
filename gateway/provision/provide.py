"""Network API for the hub: provision requests with permits, answers, refusals."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Final

import asyncpg
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
from chukan.codecs.errors import CodecError
from chukan.codecs.schema_items import canonical_item_bytes
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    MessageSignatureError,
    MisaddressedError,
    ProvisionInProgressError,
    QueryUnknownError,
    StaleMessageError,
)
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, answer_aad, utcnow
from chukan.gateway.core.web import (
    SIGNATURE_HEADER,
    XML_CONTENT_TYPE,
    read_xml,
    signature_header,
    verify_signature,
)
from chukan.gateway.hublink.listsync import check_provision, require_list
from chukan.gateway.query.lifecycle import (
    CONCLUDE_ANSWERED_SQL,
    OPEN_STATUSES,
    QueryStatus,
    conclude_refused,
)
from chukan.gateway.records.store import RecordEntry, count_record, insert_record
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.items import PROVISION_SQL, provision_document, today_jst
from chukan.keys import KeysError, public_encryption_key, seal
from chukan.permits import (
    Permit,
    PermitsError,
    peek_permit_id,
    verify_permit,
)
from chukan.permits.errors import PermitMalformedError

log = structlog.get_logger("chukan.gateway")

# -- network API ---------------------------------------------------------------------------


async def _verify_sender(
    state: GatewayState, envelope: Envelope, raw: bytes, signature: str | None
) -> None:
    """Addressed to us and signed by its sender: the hub, or a peer agency's current key."""
    header = envelope.header
    if header.receiver != state.config.agency_code:
        raise MisaddressedError("message is not addressed to this agency")
    if header.sender == HUB:
        verify_signature(signature, raw, state.hub.trusted_hub)
        return
    keys = await state.hub.peer_signing_keys(header.sender)
    try:
        verify_signature(signature, raw, keys)
    except MessageSignatureError:
        keys = await state.hub.peer_signing_keys(header.sender, refresh=True)
        verify_signature(signature, raw, keys)


async def receive_message(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    raw = await read_xml(request)
    envelope = decode_message(raw)
    header = envelope.header
    await _verify_sender(state, envelope, raw, request.headers.get(SIGNATURE_HEADER))
    body = envelope.body
    if isinstance(body, ProvisionRequest) and header.sender == HUB:
        require_list(state)  # 503 before anything is claimed: the hub retries
        return await _provide_once(state, envelope, body)
    # An answer or a refusal concludes one of our open queries, once: bound to that
    # query (and its permit, in the sealed payload's associated data) and signed, a
    # copy can only conclude it the same way.  So a delivery the hub retries, even
    # long after (the requester was down), is acknowledged, never refused as stale.
    return await _apply_conclusion(state, envelope)


async def _apply_conclusion(state: GatewayState, envelope: Envelope) -> web.Response:
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
    await _verify_sender(state, envelope, raw, signature)
    await _apply_conclusion(state, envelope)


# -- 情報提供: exactly once per provision request ---------------------------------------------

#: Claims a provision request's message id in the caller's transaction.  A copy that
#: arrives while the first is in progress waits here (on the uncommitted row) and
#: then finds the stored answer; a rollback releases the claim for a retry.
_CLAIM_SQL: Final = """
    INSERT INTO provision_answers (message_id, permit_id, status, body, expires_at)
    VALUES ($1, $2, 0, ''::bytea, now() + $3::interval)
    ON CONFLICT DO NOTHING RETURNING 1"""
_STORE_SQL: Final = """
    UPDATE provision_answers SET status = $2, body = $3, signature = $4,
        expires_at = greatest(expires_at, $5::timestamptz + $6::interval)
    WHERE message_id = $1"""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer to one provision request, kept to be repeated byte for byte."""

    status: int
    body: bytes
    signature: str | None

    def response(self) -> web.Response:
        if self.signature is None:
            return web.Response(body=self.body, status=self.status, content_type="application/json")
        return web.Response(
            body=self.body,
            status=self.status,
            content_type=XML_CONTENT_TYPE,
            headers={SIGNATURE_HEADER: self.signature},
        )


@dataclass(slots=True)
class _Provision:
    """What one provision decided, for the metrics and log once it is committed."""

    outcome: str
    reason: str | None
    answer: StoredAnswer
    recorded: bool = True


async def _provide_once(
    state: GatewayState, envelope: Envelope, body: ProvisionRequest
) -> web.Response:
    """情報提供: the claim, the work, its record and the stored answer commit together.

    A duplicate (the hub retrying after a lost answer, or a copy racing the first)
    gets the stored answer; a copy still waiting after the HTTP timeout gets 503
    ``provision_in_progress`` and is retried; a failure rolls everything back.
    """
    header = envelope.header
    requested_at = utcnow()  # before the transaction: its now() stamps provided_at
    permit_id = peek_permit_id(header.permit) if header.permit else None
    if permit_id is None:
        raise PermitMalformedError("provision request carries no readable permit")
    timing = state.config.timing
    done: _Provision | None = None
    try:
        async with state.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(timing.http_timeout * 1000)}")
            claimed = await conn.fetchval(
                _CLAIM_SQL, header.message_id, permit_id, timing.answer_retention
            )
            if claimed is not None:
                done = await _provide(conn, state, envelope, body, permit_id, requested_at)
    except asyncpg.LockNotAvailableError:
        raise ProvisionInProgressError("this provision request is being answered") from None
    if done is None:
        return await _repeat_answer(state, header.message_id)
    if done.recorded:
        count_record(state.config.agency_code, "provider", done.outcome)
    log.info(
        "provision_held" if done.outcome == "held" else "provision_answered",
        query_id=body.query_id,
        outcome=done.outcome,
        reason=done.reason,
    )
    return done.answer.response()


def _check_permit(state: GatewayState, envelope: Envelope, body: ProvisionRequest) -> Permit:
    if abs(utcnow() - envelope.header.created) > state.config.timing.message_skew:
        raise StaleMessageError("the provision request is older than the accepted window")
    assert envelope.header.permit is not None
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


def _record_entry(
    state: GatewayState,
    body: ProvisionRequest,
    *,
    permit_id: str | None,
    atena_id: str | None,
    requested_at: dt.datetime,
    outcome: str,
    reason: str | None,
) -> RecordEntry:
    return RecordEntry(
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
    )


def _signed_answer(
    state: GatewayState, body: ProvisionRequest, answer: ProvisionAnswer
) -> StoredAnswer:
    header = Header(
        new_message_id(), "ProvisionAnswer", state.config.agency_code, body.requester, utcnow()
    )
    message = encode_message(header, answer)
    return StoredAnswer(200, message, signature_header(state.keys.signing, message))


async def _store(
    conn: db.Conn,
    state: GatewayState,
    message_id: str,
    answer: StoredAnswer,
    permit_expires_at: dt.datetime,
) -> None:
    await conn.execute(
        _STORE_SQL,
        message_id,
        answer.status,
        answer.body,
        answer.signature,
        permit_expires_at,
        state.config.timing.answer_retention,
    )


async def _provide(
    conn: db.Conn,
    state: GatewayState,
    envelope: Envelope,
    body: ProvisionRequest,
    permit_id: str,
    requested_at: dt.datetime,
) -> _Provision:
    """Verify the permit, find the person and item, seal for the requester; all in ``conn``.

    Every refusal of a permit the hub signed is a signed answer too: only such an
    answer is final for the hub, and it is recorded here exactly as the hub records it.
    """
    message_id = envelope.header.message_id
    try:
        permit = _check_permit(state, envelope, body)
        # A malformed requester key is refused before anything is consumed.
        recipient = public_encryption_key(body.requester_key_id, body.requester_key)
    except (PermitsError, KeysError, StaleMessageError) as exc:
        await insert_record(
            conn,
            _record_entry(
                state,
                body,
                permit_id=permit_id,
                atena_id=None,
                requested_at=requested_at,
                outcome="refused",
                reason=exc.code,
            ),
        )
        answer = _signed_answer(
            state, body, ProvisionAnswer(body.query_id, permit_id, "refused", exc.code)
        )
        await _store(conn, state, message_id, answer, requested_at)
        log.warning("permit_refused", query_id=body.query_id, code=exc.code)
        return _Provision("refused", exc.code, answer)
    reference_date = body.reference_date or today_jst()
    # One statement: permit consumed, outcome decided, held provision queued and the
    # record appended together (see replica.PROVISION_SQL).
    row = await conn.fetchrow(
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
    document: bytes | None = row["contents"][0] if outcome == "provided" else None
    if outcome is None:  # several record keys in force: combine them, then record
        try:
            document = provision_document(body.item_code, row["contents"])
        except ReplicaInconsistentError as exc:
            outcome, reason = "refused", exc.code
        else:
            outcome, reason = "provided", None
        await insert_record(
            conn,
            _record_entry(
                state,
                body,
                permit_id=permit.permit_id,
                atena_id=row["atena_id"],
                requested_at=requested_at,
                outcome=outcome,
                reason=reason,
            ),
        )
    if outcome == "held":
        held = web.json_response({"query_id": body.query_id, "status": "held"}, status=202)
        assert isinstance(held.body, bytes)
        answer = StoredAnswer(202, held.body, None)
    else:
        payload = None
        if outcome == "provided" and document is not None:
            aad = answer_aad(
                body.query_id, permit.permit_id, state.config.agency_code, body.requester
            )
            payload = seal(recipient, document, aad)
        answer = _signed_answer(
            state,
            body,
            ProvisionAnswer(
                query_id=body.query_id,
                permit_id=permit.permit_id,
                outcome="provided" if outcome == "provided" else "refused",
                reason_code=reason,
                payload=payload,
            ),
        )
    await _store(conn, state, message_id, answer, permit.expires_at)
    return _Provision(outcome, reason, answer)


async def _repeat_answer(state: GatewayState, message_id: str) -> web.Response:
    """The stored answer to a provision request the hub delivers again."""
    row = await state.pool.fetchrow(
        "SELECT status, body, signature FROM provision_answers WHERE message_id = $1",
        message_id,
    )
    if row is None or row["status"] == 0:  # only if a purge raced the claim
        raise ProvisionInProgressError("this provision request is being answered")
    log.info("provision_answer_repeated", status=row["status"])
    return StoredAnswer(row["status"], row["body"], row["signature"]).response()


# -- answers to our own queries ---------------------------------------------------------------


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
            await asyncio.to_thread(canonical_item_bytes, row["item_code"], plaintext)
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
            concluded = bool(
                await state.pool.fetchval(
                    CONCLUDE_ANSWERED_SQL, body.query_id, plaintext, body.permit_id
                )
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
