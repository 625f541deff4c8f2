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

from chukan.permits import (
    AuthorizationList,
)

from .config import (
    GatewayConfig,
    SystemCredential,
)
from .errors import (
    ForbiddenError,
    GatewayError,
    UnauthenticatedError,
)
from .hubclient import HubClient
from .keystore import AgencyKeys
from .web import CALLER

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
    authorization_list: AuthorizationList | None = None
    list_error: str | None = "not yet fetched"
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Any, name: str) -> None:
        """Keep a reference to background tasks so they are not garbage-collected mid-flight."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def notify(self, query_id: str) -> None:
        event = self.waiters.get(query_id)
        if event is not None:
            event.set()


GATEWAY_STATE: Final = web.AppKey("gateway_state", GatewayState)


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
    """Bearer token → core system; 401 without a valid token, 403 without the grant."""
    state = request.app[GATEWAY_STATE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    system = state.config.system_for_token(token) if scheme == "Bearer" and token else None
    if system is None:
        exc: GatewayError = UnauthenticatedError("a valid system token is required")
        await _record_refusal(state, request, None, operation, exc)
        raise exc
    request[CALLER] = system.system_id
    if operation not in system.operations:
        exc = ForbiddenError(f"system {system.system_id} may not call {operation}")
        await _record_refusal(state, request, system.system_id, operation, exc)
        raise exc
    return system
