"""Shared state of a gateway process, and the authentication of core systems."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.config import (
    GatewayConfig,
    SystemCredential,
)
from chukan.gateway.core.errors import (
    ForbiddenError,
    GatewayError,
    UnauthenticatedError,
)
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.tls import identity_label, parse_system_subject, peer_identity
from chukan.gateway.core.web import CALLER
from chukan.gateway.hublink.client import HubClient
from chukan.keys.ca import ClientIdentity
from chukan.keys.errors import CertificateError
from chukan.keys.ring import KeyRing
from chukan.permits import (
    AuthorizationList,
)

log = structlog.get_logger("chukan.gateway")

ATENA_PATTERN: Final = re.compile(r"^[0-9]{1,15}$")
ITEM_CODE_PATTERN: Final = re.compile(r"^TM[0-9]{14}$")
PROCEDURE_CODE_PATTERN: Final = re.compile(r"^JT[0-9]{14}$")
AGENCY_PATTERN: Final = re.compile(r"^[0-9]{6}(?:[0-9]{10})?$")
QUERY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
MAX_ITEM_BYTES: Final = 1024 * 1024


@dataclass
class GatewayState:
    config: GatewayConfig
    endpoint: str
    pool: asyncpg.Pool
    keys: AgencyKeys
    hub: HubClient
    #: Every key pair of this agency, old and new; ``keys`` are its current ones.
    ring: KeyRing
    authorization_list: AuthorizationList | None = None
    list_error: str | None = "not yet fetched"
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    #: Set to run the durable sweep now rather than at its next interval.
    sweep_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def spawn(self, coro: Any, name: str) -> None:
        """Run background work, kept referenced and supervised.

        An exception is never lost: it is logged once as ``background_task_failed``
        and counted; the work itself is durable and the sweep takes it up again.
        """
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            kind = task.get_name().split("-", 1)[0]
            task_failed(self.config.agency_code, kind, exc)

    def notify(self, query_id: str) -> None:
        event = self.waiters.get(query_id)
        if event is not None:
            event.set()


GATEWAY_STATE: Final = web.AppKey("gateway_state", GatewayState)


def task_failed(agency: str, kind: str, exc: BaseException) -> None:
    """One event (with the traceback) and one count per failed background task."""
    metrics_for(agency).task_failures.inc(kind)
    log.error("background_task_failed", task=kind, exc_info=exc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def answer_aad(query_id: str, permit_id: str, provider: str, requester: str) -> bytes:
    """Associated data binding a sealed answer to its query, permit and parties."""
    return f"chukan-answer|{query_id}|{permit_id}|{provider}|{requester}".encode()


# -- authentication of core systems ------------------------------------------------------


async def _record_refusal(
    state: GatewayState, request: web.Request, caller: str | None, op: str, exc: GatewayError
) -> None:
    await state.pool.execute(
        "INSERT INTO access_refusals (caller, operation, status, code, remote) "
        "VALUES ($1, $2, $3, $4, $5)",
        caller,
        op,
        exc.status,
        exc.code,
        request.remote,
    )
    log.warning("access_refused", caller=caller, operation=op, code=exc.code)


async def authorize(request: web.Request, operation: str) -> SystemCredential:
    """Client certificate or bearer token → core system; 401 without either, 403 without the grant.

    A client certificate, when presented, decides alone (a bearer token beside it
    is ignored); without one, a configured bearer token is accepted.
    """
    state = request.config_dict[GATEWAY_STATE]
    try:
        peer = peer_identity(request)
    except CertificateError:
        exc: GatewayError = UnauthenticatedError("the client certificate is not usable here")
        await _record_refusal(state, request, "certificate:invalid", operation, exc)
        raise exc from None
    if peer is not None:
        return await _authorize_certificate(state, request, peer, operation)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    system = state.config.system_for_token(token) if scheme == "Bearer" and token else None
    if system is None:
        exc = UnauthenticatedError("a client certificate or a valid system token is required")
        await _record_refusal(state, request, None, operation, exc)
        raise exc
    request[CALLER] = system.system_id
    if operation not in system.operations:
        exc = ForbiddenError(f"system {system.system_id} may not call {operation}")
        await _record_refusal(state, request, system.system_id, operation, exc)
        raise exc
    return system


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
        exc: GatewayError = ForbiddenError(
            f"{label} is not a core system of agency {state.config.agency_code}"
        )
        await _record_refusal(state, request, label, operation, exc)
        raise exc
    request[CALLER] = system.system_id
    if operation not in system.operations or operation not in peer.roles:
        exc = ForbiddenError(f"system {system.system_id} may not call {operation}")
        await _record_refusal(state, request, label, operation, exc)
        raise exc
    return system
