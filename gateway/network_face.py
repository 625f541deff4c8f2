"""The network face: messages the hub delivers, handed to the flow they belong to.

A provision request (from the hub, with its permit) goes to :mod:`provision`;
a provider's answer or the hub's refusal concludes one of our queries
(:mod:`query.answers`).  Only the hub's client certificate reaches this face
(the ``/network`` sub-application's middleware).
"""

from __future__ import annotations

from aiohttp import web

from chukan.codecs.envelope import HUB, ProvisionRequest, decode_message
from chukan.gateway.authlist.sync import require_list
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.web import SIGNATURE_HEADER, read_xml
from chukan.gateway.provision.batch import PROVISION_BATCHES
from chukan.gateway.provision.provide import provide_once
from chukan.gateway.query.answers import apply_conclusion
from chukan.gateway.records.reconcile import list_records
from chukan.gateway.records.witnessing import require_recording


async def receive_message(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    raw = await read_xml(request)
    envelope = decode_message(raw)
    header = envelope.header
    await state.hub.verify_sender(envelope, raw, request.headers.get(SIGNATURE_HEADER))
    body = envelope.body
    if isinstance(body, ProvisionRequest) and header.sender == HUB:
        require_list(state)  # 503 before anything is claimed: the hub retries
        await require_recording(state)  # likewise while records cannot be witnessed
        return await provide_once(state, envelope, body, request.config_dict[PROVISION_BATCHES])
    # An answer or a refusal concludes one of our open queries, once: bound to that
    # query (and its permit, in the sealed payload's associated data) and signed, a
    # copy can only conclude it the same way.  So a delivery the hub retries, even
    # long after (the requester was down), is acknowledged, never refused as stale.
    return await apply_conclusion(state, envelope)


def add_network_routes(network: web.Application) -> None:
    """Routes on the hub's ``/network`` face (paths relative to its prefix)."""
    network.router.add_post("/v1/messages", receive_message)
    # The hub's reconciliation of this agency's records with its own (hub certificate only).
    network.router.add_get("/v1/records", list_records)
