"""The network face: messages the hub delivers, handed to the flow they belong to.

A provision request (from the hub, with its permit) goes to :mod:`provision`;
a provider's answer or the hub's refusal concludes one of our queries
(:mod:`query.answers`).  Only the hub's client certificate reaches this face
(the ``/network`` sub-application's middleware).  Under load the hub sends
several messages in one exchange (``…/messages/batch``,
:mod:`chukan.gateway.core.message_exchange`); each is handled by
:func:`handle_message` exactly as it would be alone.
"""

from __future__ import annotations

from aiohttp import web

from chukan.codecs.envelope import HUB, ProvisionRequest, decode_message
from chukan.gateway.authlist.sync import require_list
from chukan.gateway.core.message_exchange import serve_batch
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.core.web import SIGNATURE_HEADER, read_xml
from chukan.gateway.provision.batch import PROVISION_BATCHES, ProvisionBatches
from chukan.gateway.provision.provide import provide_once
from chukan.gateway.query.answers import apply_conclusion
from chukan.gateway.records.reconcile import list_records
from chukan.gateway.records.witnessing import require_recording


async def handle_message(
    state: GatewayState, batches: ProvisionBatches, raw: bytes, signature: str | None
) -> web.Response:
    """One message from the hub (its envelope's bytes and signature header value), as
    answered alone or within a batch: the same checks, claims and signed answers."""
    envelope = decode_message(raw)
    header = envelope.header
    await state.hub.verify_sender(envelope, raw, signature)
    body = envelope.body
    if isinstance(body, ProvisionRequest) and header.sender == HUB:
        require_list(state)  # 503 before anything is claimed: the hub retries
        await require_recording(state)  # likewise while records cannot be witnessed
        return await provide_once(state, envelope, body, batches)
    # An answer or a refusal concludes one of our open queries, once: bound to that
    # query (and its permit, in the sealed payload's associated data) and signed, a
    # copy can only conclude it the same way.  So a delivery the hub retries, even
    # long after (the requester was down), is acknowledged, never refused as stale.
    return await apply_conclusion(state, envelope)


async def receive_message(request: web.Request) -> web.Response:
    """``POST /network/v1/messages``: one message from the hub."""
    raw = await read_xml(request)
    return await handle_message(
        request.config_dict[GATEWAY_STATE],
        request.config_dict[PROVISION_BATCHES],
        raw,
        request.headers.get(SIGNATURE_HEADER),
    )


async def receive_batch(request: web.Request) -> web.Response:
    """``POST /network/v1/messages/batch``: several messages from the hub, each answered
    as it would be alone, in order."""
    state = request.config_dict[GATEWAY_STATE]
    batches = request.config_dict[PROVISION_BATCHES]

    async def handle(raw: bytes, signature: str | None) -> web.Response:
        return await handle_message(state, batches, raw, signature)

    return await serve_batch(request, handle)


def add_network_routes(network: web.Application) -> None:
    """Routes on the hub's ``/network`` face (paths relative to its prefix)."""
    network.router.add_post("/v1/messages", receive_message)
    network.router.add_post("/v1/messages/batch", receive_batch)
    # The hub's reconciliation of this agency's records with its own (hub certificate only).
    network.router.add_get("/v1/records", list_records)
