"""Who may call the hub: every caller presents a client certificate of the network CA.

* ``/network/...``: agency gateways (kind ``agency``, subject = agency code).  A
  signed envelope is accepted only from the certificate of its ``Sender``
  (:func:`require_sender`), and that agency must be registered.
* ``/admin/...``: the hub operator (kind ``system`` with role ``hub.admin``),
  or an agency gateway enrolling *itself* (:func:`require_enrolling`).  Every
  operator call also needs the admin bearer token (:func:`require_admin`);
  enrolment needs the agency's own enrolment token instead
  (:mod:`chukan.simulators.hub.enrolment`), never the admin token.

Without a certificate → 401; with the wrong one → 403; both logged with the
caller's identity.  Without TLS configured (plain-HTTP benchmark baseline) no
certificate checks are made.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from chukan.gateway.core.errors import ForbiddenError, GatewayError, UnauthenticatedError
from chukan.gateway.core.identities import HUB_ADMIN_ROLE
from chukan.gateway.core.tls import identity_label, peer_identity
from chukan.keys.ca import ClientIdentity
from chukan.keys.errors import CertificateError
from chukan.simulators.errors import PeerMismatchError
from chukan.simulators.hub.state import HUB_STATE

log = structlog.get_logger("chukan.hub")

HUB_PEER: Final = web.RequestKey("hub_peer", ClientIdentity)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_admin(request: web.Request) -> None:
    """Every ``/admin`` call carries the hub's admin bearer token (compared in constant time)."""
    state = request.config_dict[HUB_STATE]
    supplied = request.headers.get("Authorization", "")
    expected = f"Bearer {state.config.admin_token}"
    if not supplied:
        raise UnauthenticatedError("an administrator token is required")
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ForbiddenError("the administrator token is not valid")


def caller_label(request: web.Request) -> str | None:
    """Who called, as records and logs name it (None over plain HTTP)."""
    identity = request.get(HUB_PEER)
    return None if identity is None else identity_label(identity)


def is_operator(identity: ClientIdentity) -> bool:
    return identity.kind == "system" and HUB_ADMIN_ROLE in identity.roles


def _refuse(request: web.Request, label: str | None, exc: GatewayError) -> GatewayError:
    log.warning("hub_access_refused", caller=label, path=request.path, code=exc.code)
    return exc


def peer_middleware(tls_enabled: bool) -> Middleware:
    """Authenticate every request by its client certificate (when the hub speaks TLS)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tls_enabled:
            return await handler(request)
        try:
            identity = peer_identity(request)
        except CertificateError:
            raise _refuse(
                request, "certificate:invalid", UnauthenticatedError("unusable certificate")
            ) from None
        if identity is None:
            raise _refuse(request, None, UnauthenticatedError("a client certificate is required"))
        label = identity_label(identity)
        if identity.kind != "agency" and not is_operator(identity):
            raise _refuse(request, label, ForbiddenError(f"{label} may not call the hub"))
        request[HUB_PEER] = identity
        return await handler(request)

    return middleware


def require_sender(request: web.Request, sender: str) -> None:
    """The envelope's sender must be the agency whose certificate sent it."""
    identity = request.get(HUB_PEER)
    if identity is None:  # plain HTTP
        return
    if identity.kind != "agency" or identity.subject_id != sender:
        label = identity_label(identity)
        raise _refuse(
            request, label, PeerMismatchError(f"{label} may not send messages as {sender}")
        )


def require_enrolling(request: web.Request, code: str, endpoint: str) -> None:
    """An agency enrols only itself, at an https endpoint; the operator may enrol anyone."""
    identity = request.get(HUB_PEER)
    if identity is None:
        return
    label = identity_label(identity)
    if not is_operator(identity) and identity.subject_id != code:
        raise _refuse(request, label, PeerMismatchError(f"{label} may not enrol agency {code}"))
    if not endpoint.startswith("https://"):
        raise _refuse(
            request, label, ForbiddenError("endpoints must be https: the hub calls over TLS")
        )


def require_operator(request: web.Request) -> None:
    """Publishing lists and reading the hub's records: the operator's certificate only."""
    identity = request.get(HUB_PEER)
    if identity is None:
        return
    if not is_operator(identity):
        label = identity_label(identity)
        raise _refuse(request, label, ForbiddenError(f"{label} is not the hub operator"))
