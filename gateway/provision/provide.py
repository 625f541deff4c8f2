"""情報提供: a provision request the hub delivers with its permit, answered exactly once.

The claim on the message id, the use of the permit, the lookup, the record and
the signed answer commit together; a copy of the request gets the stored answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    Envelope,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    answer_aad,
    encode_message,
    new_message_id,
)
from chukan.gateway.authlist.sync import check_provision
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    ProvisionInProgressError,
    StaleMessageError,
)
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.core.web import (
    SIGNATURE_HEADER,
    XML_CONTENT_TYPE,
    current_request_id,
    signature_header,
)
from chukan.gateway.provision.batch import Decided, Lookup, ProvisionBatches
from chukan.gateway.records.store import RecordEntry, count_record, insert_record
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.items import (
    PROVISION_SQL,
    provision_document,
    today_jst,
)
from chukan.keys import KeysError, PublicEncryptionKey, public_encryption_key, seal
from chukan.permits import (
    Permit,
    PermitsError,
    peek_permit_id,
    verify_permit,
)
from chukan.permits.errors import PermitMalformedError

log = structlog.get_logger("chukan.gateway")

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


async def provide_once(
    state: GatewayState,
    envelope: Envelope,
    body: ProvisionRequest,
    batches: ProvisionBatches | None = None,
) -> web.Response:
    """情報提供: the claim, the work, its record and the stored answer commit together.

    The usual provision is decided from one read and written with others in one
    group commit (:mod:`.batch`).  Anything else — a refused permit, a copy of a
    request seen before, a provision held for review, a batch that failed — takes
    the one-transaction path, where a duplicate (the hub retrying after a lost
    answer, or a copy racing the first) gets the stored answer; a copy still
    waiting after the HTTP timeout gets 503 ``provision_in_progress`` and is
    retried; a failure rolls everything back.
    """
    header = envelope.header
    requested_at = utcnow()  # before the transaction: its now() stamps provided_at
    permit_id = peek_permit_id(header.permit) if header.permit else None
    if permit_id is None:
        raise PermitMalformedError("provision request carries no readable permit")
    if batches is not None:
        done = await _provide_batched(state, batches, envelope, body, requested_at)
        if done is not None:
            return _finished(state, body, done)
    timing = state.config.timing
    done = None
    try:
        async with state.pool.acquire() as conn, conn.transaction():
            # One round trip: how long to wait for a copy's lock, and the request id the
            # records of this transaction take by default (metadata; migration 0070).
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true), "
                "set_config('chukan.request_id', $2, true)",
                str(int(timing.http_timeout * 1000)),
                current_request_id() or "",
            )
            claimed = await conn.fetchval(
                _CLAIM_SQL, header.message_id, permit_id, timing.answer_retention
            )
            if claimed is not None:
                done = await _provide(conn, state, envelope, body, permit_id, requested_at)
    except asyncpg.LockNotAvailableError:
        raise ProvisionInProgressError("this provision request is being answered") from None
    if done is None:
        return await _repeat_answer(state, header.message_id)
    return _finished(state, body, done)


def _finished(state: GatewayState, body: ProvisionRequest, done: _Provision) -> web.Response:
    """The committed provision counted, logged and answered."""
    if done.recorded:
        count_record(state.config.agency_code, "provider", done.outcome)
    log.info(
        "provision_held" if done.outcome == "held" else "provision_answered",
        query_id=body.query_id,
        outcome=done.outcome,
        reason=done.reason,
    )
    return done.answer.response()


async def _provide_batched(
    state: GatewayState,
    batches: ProvisionBatches,
    envelope: Envelope,
    body: ProvisionRequest,
    requested_at: dt.datetime,
) -> _Provision | None:
    """Decide from one read, answer, and write in the next group commit.

    None: this provision takes the one-transaction path (which decides it again).
    """
    try:
        permit = _check_permit(state, envelope, body)
        recipient = public_encryption_key(body.requester_key_id, body.requester_key)
    except (PermitsError, KeysError, StaleMessageError):
        return None  # refused, and recorded so, on the one-transaction path
    reference_date = body.reference_date or today_jst()
    found = await batches.find(
        Lookup(
            body.provider_person_code,
            body.item_code,
            reference_date,
            permit.permit_id,
            envelope.header.message_id,
        )
    )
    atena_id = found.atena_id
    unregistered = found.person_state == "unregistered"  # refused, even if flagged
    if found.seen or (atena_id is not None and found.manual_review and not unregistered):
        return None
    document: bytes | None = None
    reason: str | None
    if atena_id is None:
        outcome, reason = "refused", "person_unknown"
    elif unregistered:
        outcome, reason = "refused", "person_unregistered"
    elif found.contents is None:
        outcome, reason = "refused", "item_not_found"
    else:
        try:
            document = provision_document(body.item_code, found.contents)
        except ReplicaInconsistentError as exc:
            outcome, reason = "refused", exc.code
        else:
            outcome, reason = "provided", None
    answer = _answer(state, body, permit, outcome, reason, document, recipient)
    decided = Decided(
        message_id=envelope.header.message_id,
        permit_expires_at=permit.expires_at,
        status=answer.status,
        body=answer.body,
        signature=answer.signature,
        request_id=current_request_id(),
        record=_record_entry(
            state,
            body,
            permit_id=permit.permit_id,
            atena_id=atena_id,
            requested_at=requested_at,
            outcome=outcome,
            reason=reason,
        ),
    )
    if not await batches.write(decided):
        return None
    return _Provision(outcome, reason, answer)


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
    answer = _answer(state, body, permit, outcome, reason, document, recipient)
    await _store(conn, state, message_id, answer, permit.expires_at)
    return _Provision(outcome, reason, answer)


def _answer(
    state: GatewayState,
    body: ProvisionRequest,
    permit: Permit,
    outcome: str,
    reason: str | None,
    document: bytes | None,
    recipient: PublicEncryptionKey,
) -> StoredAnswer:
    """The answer to a decided provision: "held" (202), or signed, sealed when provided."""
    if outcome == "held":
        held = web.json_response({"query_id": body.query_id, "status": "held"}, status=202)
        assert isinstance(held.body, bytes)
        return StoredAnswer(202, held.body, None)
    payload = None
    if outcome == "provided" and document is not None:
        aad = answer_aad(body.query_id, permit.permit_id, state.config.agency_code, body.requester)
        payload = seal(recipient, document, aad)
    return _signed_answer(
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
