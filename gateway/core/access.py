"""Only the hub may call a gateway's network API (``/network/...``), over mutual TLS.

Core systems on ``/internal/...`` are authorized per operation by
:func:`chukan.gateway.core.state.authorize`; this middleware guards the network face:
no client certificate → 401, a certificate that is not the hub's → 403, each
refusal recorded in ``access_refusals`` with the caller's identity.  Without TLS
configured (plain-HTTP benchmark baseline) the check is skipped.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from chukan.gateway.core.errors import ForbiddenError, GatewayError, UnauthenticatedError
from chukan.gateway.core.state import GATEWAY_STATE, _record_refusal
from chukan.gateway.core.tls import identity_label, peer_identity
from chukan.gateway.core.web import CALLER, Handler
from chukan.keys.errors import CertificateError

NETWORK_PREFIX: Final = "/network/"
NETWORK_OPERATION: Final = "network"


async def require_hub(request: web.Request) -> None:
    """Refuse anyone but the hub's client certificate (when the gateway speaks TLS)."""
    state = request.config_dict[GATEWAY_STATE]
    if state.config.tls is None:
        return
    try:
        peer = peer_identity(request)
    except CertificateError:
        exc: GatewayError = UnauthenticatedError("the client certificate is not usable here")
        await _record_refusal(state, request, "certificate:invalid", NETWORK_OPERATION, exc)
        raise exc from None
    if peer is None:
        exc = UnauthenticatedError("the network API needs the hub's client certificate")
        await _record_refusal(state, request, None, NETWORK_OPERATION, exc)
        raise exc
    label = identity_label(peer)
    request[CALLER] = label
    if peer.kind != "hub":
        exc = ForbiddenError(f"{label} may not call the network API; only the hub may")
        await _record_refusal(state, request, label, NETWORK_OPERATION, exc)
        raise exc


@web.middleware
async def network_peer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(NETWORK_PREFIX):
        await require_hub(request)
    return await handler(request)
