"""Who may call: core systems per operation on ``/internal``, only the hub on ``/network``.

A core system presents a client certificate (kind ``system``, this agency's,
holding the operation as a role) or, without one, a configured bearer token
(:func:`authorize`, called by each handler with its operation).  The network
face is guarded by :func:`hub_only_middleware`, the ``/network`` sub-application's
middleware: no client certificate → 401, a certificate that is not the hub's →
403.  Every refusal is counted in ``access_refusals`` with the caller's identity (one
row a minute per caller, peer, operation and code; 429 past a limit: :mod:`.refusals`).
Without TLS configured (plain-HTTP benchmark baseline) the hub check is skipped.
"""

from __future__ import annotations

from typing import Final, NoReturn

import structlog
from aiohttp import web

from chukan.gateway.core.config import SystemCredential
from chukan.gateway.core.errors import ForbiddenError, GatewayError, UnauthenticatedError
from chukan.gateway.core.refusals import REFUSAL_COUNTED, record_refusal
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.core.tls import identity_label, parse_system_subject, peer_identity
from chukan.gateway.core.web import CALLER, Handler
from chukan.keys.ca import ClientIdentity
from chukan.keys.errors import CertificateError

log = structlog.get_logger("chukan.gateway")

#: The operation recorded for refusals on the network face.
NETWORK_OPERATION: Final = "network"


async def refuse(
    state: GatewayState, request: web.Request, caller: str | None, op: str, exc: GatewayError
) -> NoReturn:
    """Count the refusal of ``caller`` for ``op`` (kept for audit, one row a minute per
    caller, peer, operation and code), then raise it — or 429 ``rate_limited`` when the
    peer was refused too often this minute (:mod:`.refusals`)."""
    answer = await record_refusal(
        state.pool,
        caller=caller,
        operation=op,
        remote=request.remote,
        exc=exc,
        limit=state.config.ops.refusals_per_minute,
    )
    request[REFUSAL_COUNTED] = True
    log.warning("access_refused", caller=caller, operation=op, code=answer.code)
    raise answer


async def _presented_certificate(
    state: GatewayState, request: web.Request, op: str
) -> ClientIdentity | None:
    """The caller's client certificate identity; None without one; refused if unusable."""
    try:
        return peer_identity(request)
    except CertificateError:
        pass  # refused below, outside the handler: the refusal is the error, not its context
    unusable = UnauthenticatedError("the client certificate is not usable here")
    return await refuse(state, request, "certificate:invalid", op, unusable)


async def authorize(request: web.Request, operation: str) -> SystemCredential:
    """Client certificate or bearer token → core system; 401 without either, 403 without the grant.

    A client certificate, when presented, decides alone (a bearer token beside it
    is ignored); without one, a configured bearer token is accepted.
    """
    state = request.config_dict[GATEWAY_STATE]
    peer = await _presented_certificate(state, request, operation)
    if peer is not None:
        return await _authorize_certificate(state, request, peer, operation)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    system = state.config.system_for_token(token) if scheme == "Bearer" and token else None
    if system is None:
        await refuse(
            state,
            request,
            None,
            operation,
            UnauthenticatedError("a client certificate or a valid system token is required"),
        )
    request[CALLER] = system.system_id
    if not _granted(system, None, operation):
        await refuse(
            state,
            request,
            system.system_id,
            operation,
            ForbiddenError(f"system {system.system_id} may not call {operation}"),
        )
    return system


def also_permits(request: web.Request, system: SystemCredential, operation: str) -> bool:
    """Whether the caller :func:`authorize` let in may call ``operation`` too, asked without
    refusing or counting anything (an optional extra, such as a submission's ``Prefer: wait``
    answering with the result that ``queries.read`` would give)."""
    try:
        peer = peer_identity(request)
    except CertificateError:
        return False
    return _granted(system, peer, operation)


def _granted(system: SystemCredential, peer: ClientIdentity | None, operation: str) -> bool:
    """The grant rule: the operations configured for the system, narrowed by the roles of
    its client certificate when it presented one."""
    return operation in system.operations and (peer is None or operation in peer.roles)


async def _authorize_certificate(
    state: GatewayState, request: web.Request, peer: ClientIdentity, operation: str
) -> SystemCredential:
    """A core system's certificate: this agency's, configured here, holding the operation."""
    label = identity_label(peer)
    subject = parse_system_subject(peer.subject_id) if peer.kind == "system" else None
    system = None
    if subject is not None and subject[0] == state.config.agency_code:
        system = next((s for s in state.config.systems if s.system_id == subject[1]), None)
    if system is None:
        await refuse(
            state,
            request,
            label,
            operation,
            ForbiddenError(f"{label} is not a core system of agency {state.config.agency_code}"),
        )
    request[CALLER] = system.system_id
    if not _granted(system, peer, operation):
        await refuse(
            state,
            request,
            label,
            operation,
            ForbiddenError(f"system {system.system_id} may not call {operation}"),
        )
    return system


async def require_hub(request: web.Request) -> None:
    """Refuse anyone but the hub's client certificate (when the gateway speaks TLS)."""
    state = request.config_dict[GATEWAY_STATE]
    if state.config.tls is None:
        return
    peer = await _presented_certificate(state, request, NETWORK_OPERATION)
    if peer is None:
        await refuse(
            state,
            request,
            None,
            NETWORK_OPERATION,
            UnauthenticatedError("the network API needs the hub's client certificate"),
        )
    label = identity_label(peer)
    request[CALLER] = label
    if peer.kind != "hub":
        await refuse(
            state,
            request,
            label,
            NETWORK_OPERATION,
            ForbiddenError(f"{label} may not call the network API; only the hub may"),
        )


@web.middleware
async def hub_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ``/network`` sub-application's guard: only the hub's certificate gets through."""
    await require_hub(request)
    return await handler(request)
