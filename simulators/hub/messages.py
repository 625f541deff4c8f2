"""``POST /network/v1/messages``: the one door for agencies' signed envelopes.

Each envelope is checked in the same order — certificate of the sender, a
signature under the sender's registered keys, a fresh timestamp, the hub as
receiver (answers pass through to their requester), a message id never seen —
and then dispatched by type to 符号 issuance or routing.  Under load a gateway
sends several envelopes in one exchange (``POST /network/v1/messages/batch``,
:mod:`chukan.gateway.core.message_exchange`); each is handled by
:func:`handle_message` exactly as it would be alone: same checks, answer, records.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    AcquisitionRequest,
    CodeRequest,
    ConclusionRequest,
    PersonNotice,
    ProvisionAnswer,
    QueryRequest,
    ResidentCodeRequest,
    decode_message,
)
from chukan.gateway.core.errors import MessageReplayError, MisaddressedError, StaleMessageError
from chukan.gateway.core.message_exchange import serve_batch
from chukan.gateway.core.web import SIGNATURE_HEADER, read_xml, verify_signature
from chukan.simulators.hub import auth, codes, routing
from chukan.simulators.hub.registry import load_agencies, require_agency
from chukan.simulators.hub.state import HUB_STATE, utcnow


async def receive_message(request: web.Request) -> web.Response:
    """Every signed envelope from agencies arrives here and is dispatched by type."""
    raw = await read_xml(request)
    return await handle_message(request, raw, request.headers.get(SIGNATURE_HEADER))


async def receive_batch(request: web.Request) -> web.Response:
    """``POST /network/v1/messages/batch``: several envelopes of one agency, each answered
    as it would be alone, in order (one exchange's cost shared by all)."""

    async def handle(raw: bytes, signature: str | None) -> web.Response:
        return await handle_message(request, raw, signature)

    return await serve_batch(request, handle)


async def handle_message(request: web.Request, raw: bytes, signature: str | None) -> web.Response:
    """One envelope (its bytes and ``Chukan-Signature`` value), alone or within a batch:
    the request gives only the caller's certificate and the hub's state."""
    state = request.config_dict[HUB_STATE]
    envelope = decode_message(raw)
    header = envelope.header
    auth.require_sender(request, header.sender)
    # A query's provider is read with its sender: one round trip for both.
    named = envelope.body.provider if isinstance(envelope.body, QueryRequest) else None
    agencies = await load_agencies(state.pool, [header.sender, named or header.sender])
    sender = require_agency(agencies, header.sender)
    verify_signature(signature, raw, sender.signing_keys)
    if abs(utcnow() - header.created) > state.config.message_skew:
        raise StaleMessageError("message timestamp is outside the accepted window")
    body = envelope.body
    if not isinstance(body, ProvisionAnswer) and header.receiver != HUB:
        raise MisaddressedError("message is not addressed to the hub")
    inserted = await state.pool.fetchval(
        "INSERT INTO seen_messages (message_id, sender) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        header.message_id,
        header.sender,
    )
    if inserted is None:
        raise MessageReplayError("message id already seen")
    structlog.contextvars.bind_contextvars(message_type=header.message_type)
    try:
        match body:
            case AcquisitionRequest():
                return await codes.issue_acquisition_number(state, envelope, body)
            case CodeRequest():
                return await codes.issue_person_code(state, envelope, body)
            case ResidentCodeRequest():
                return await codes.issue_serial_number(state, envelope, body)
            case PersonNotice():
                return await codes.apply_person_notice(state, envelope, body)
            case QueryRequest():
                return await routing.route_query(
                    state, envelope, body, raw, sender, agencies.get(body.provider)
                )
            case ProvisionAnswer():
                assert signature is not None  # verified above
                return await routing.route_deferred_answer(state, envelope, body, raw, signature)
            case ConclusionRequest():
                return await routing.recover_conclusion(state, envelope, body)
            case _:
                raise MisaddressedError(f"the hub does not accept {header.message_type}")
    finally:
        structlog.contextvars.unbind_contextvars("message_type")
