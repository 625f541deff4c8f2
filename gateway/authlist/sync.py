"""The gateway's copy of the authorization list: fetched, verified, kept, never rolled back.

The hub publishes the list signed, versioned and with an expiry.  A gateway:

* verifies every document it receives (hub signature under the pinned hub key,
  XSD and row rules, expiry) before using it;
* keeps every version it accepted in ``authorization_lists`` (version, issued
  and expiry times, SHA-256 digest, time received, the raw signed document);
* never goes back: a version older than the newest one received is refused
  (``authorization_list_rollback``), and the same version with other content is
  refused too (``authorization_list_conflict``);
* takes a new version without a restart: a refresh loop (``Timing.list_refresh``),
  ``POST /internal/v1/authorization-list/refresh`` for operators, and the hub's
  push to ``POST /network/v1/authorization-list`` when it publishes;
* refuses to send or answer queries while it holds no valid list (none yet,
  expired, or only refused documents): 503 ``authorization_list_unavailable``
  with the underlying ``reason``.  A refused document does not displace a list
  that is still valid; the refusal shows as ``last_error`` in the status.

At start-up the newest stored version is verified again and used if still valid,
so a restart while the hub is unreachable keeps working until that list expires.

Several processes of one agency use one list, the newest valid one in the
database: a process that stores a new version sends ``NOTIFY
chukan_authorization_list, '<agency>'`` in the storing transaction, and every
process then loads the newest stored version (verified again, never older than
the one it holds).  Each refresh pass (every ``Timing.list_refresh`` seconds)
also loads it first, so no process answers from an older list than the database
holds for longer than that, notice lost or hub away.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_MANAGE_LIST
from chukan.gateway.core.errors import (
    AuthorizationListConflictError,
    AuthorizationListRollbackError,
    AuthorizationListUnavailableError,
    GatewayError,
)
from chukan.gateway.core.notices import LIST_CHANNEL, NOTICES, notify
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.web import read_xml
from chukan.permits import (
    AuthorizationList,
    NotAuthorizedError,
    Permit,
    PermitsError,
    verify_signed_list,
)
from chukan.permits.authorization import MAX_SIGNED_LIST_BYTES

log = structlog.get_logger("chukan.gateway.list")

LIST_PATH: Final = "/network/v1/authorization-list"
MISSING: Final = "authorization_list_missing"
EXPIRED: Final = "authorization_list_expired"
HISTORY_LIMIT: Final = 20

Outcome = Literal["accepted", "unchanged"]


@dataclass
class ListSync:
    """What operators see about the list besides the list itself; one per gateway process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    digest: str | None = None
    received_at: dt.datetime | None = None
    last_refresh_at: dt.datetime | None = None
    last_error: str | None = None
    last_error_at: dt.datetime | None = None


LIST_SYNC: Final = web.AppKey("list_sync", ListSync)


def digest_of(signed: bytes) -> str:
    return hashlib.sha256(signed).hexdigest()


def require_list(state: GatewayState, now: dt.datetime | None = None) -> AuthorizationList:
    """The list in force, or 503 ``authorization_list_unavailable`` with the reason."""
    current = state.authorization_list
    if current is None:
        raise AuthorizationListUnavailableError(state.list_error or MISSING)
    if current.is_expired(now or utcnow()):
        raise AuthorizationListUnavailableError(
            EXPIRED, f"the authorization list (version {current.version}) has expired"
        )
    return current


def check_provision(state: GatewayState, permit: Permit) -> None:
    """The provider's own check: its list must carry the permit's row (as the hub's did)."""
    now = utcnow()
    row = require_list(state, now).find(
        permit.requester,
        state.config.agency_code,
        permit.procedure_code,
        permit.item_code,
        now.date(),
    )
    if (
        row is None
        or row.business_code != permit.business_code
        or row.legal_basis != permit.legal_basis
    ):
        raise NotAuthorizedError(
            "this provider's authorization list has no row for this requester, procedure and item"
        )


def _activate(
    state: GatewayState, sync: ListSync, lst: AuthorizationList, digest: str, received: dt.datetime
) -> None:
    current = state.authorization_list
    if current is not None and current.version > lst.version:
        return  # never replace a newer list in memory
    state.authorization_list = lst
    state.list_error = None
    sync.digest = digest
    sync.received_at = received


def _refused(state: GatewayState, sync: ListSync, code: str) -> None:
    sync.last_error = code
    sync.last_error_at = utcnow()
    state.list_error = code


async def accept(
    state: GatewayState, sync: ListSync, signed: bytes, *, source: str
) -> tuple[AuthorizationList, Outcome]:
    """Verify a signed document, record it as a new version, and use it; or refuse it.

    Nothing is stored or changed for a refused document except ``last_error``.
    """
    try:
        lst = verify_signed_list(signed, state.hub.trusted_hub, now=utcnow())
    except PermitsError as exc:
        _refused(state, sync, exc.code)
        log.warning("authorization_list_refused", source=source, code=exc.code)
        raise
    digest = digest_of(signed)
    async with sync.lock:
        try:
            outcome, received = await _store(state, lst, digest, signed)
        except GatewayError as exc:
            _refused(state, sync, exc.code)
            log.warning(
                "authorization_list_refused", source=source, code=exc.code, version=lst.version
            )
            raise
        _activate(state, sync, lst, digest, received)
        sync.last_error = None
        sync.last_error_at = None
    if outcome == "accepted":
        log.info(
            "authorization_list_accepted",
            source=source,
            version=lst.version,
            rows=len(lst.rows),
            expires_at=lst.expires_at.isoformat(),
        )
    return lst, outcome


async def _store(
    state: GatewayState, lst: AuthorizationList, digest: str, signed: bytes
) -> tuple[Outcome, dt.datetime]:
    async with state.pool.acquire() as conn, conn.transaction():
        newest = await conn.fetchrow(
            "SELECT version, digest, received_at FROM authorization_lists "
            "ORDER BY version DESC LIMIT 1"
        )
        if newest is not None and lst.version < newest["version"]:
            raise AuthorizationListRollbackError(
                f"list version {lst.version} is older than version {newest['version']} "
                "already received"
            )
        if newest is not None and lst.version == newest["version"]:
            if newest["digest"] != digest:
                raise AuthorizationListConflictError(
                    f"list version {lst.version} was already received with other content"
                )
            received: dt.datetime = newest["received_at"]
            return "unchanged", received
        inserted = await conn.fetchval(
            """INSERT INTO authorization_lists
                   (version, issued_at, expires_at, row_count, digest, signed_document)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (tenant, version) DO NOTHING
               RETURNING received_at""",
            lst.version,
            lst.issued_at,
            lst.expires_at,
            len(lst.rows),
            digest,
            signed,
        )
        if inserted is not None:  # the other processes of this agency load it too
            await notify(conn, LIST_CHANNEL, state.config.agency_code)
        if inserted is None:  # another process of this gateway stored it a moment ago
            other = await conn.fetchval(
                "SELECT digest FROM authorization_lists WHERE version = $1", lst.version
            )
            if other != digest:
                raise AuthorizationListConflictError(
                    f"list version {lst.version} was already received with other content"
                )
            return "unchanged", utcnow()
        return "accepted", inserted


async def restore(state: GatewayState, sync: ListSync) -> None:
    """Use the newest stored version again after a restart, if it still verifies and is valid."""
    loaded = await load_stored(state, sync, source="restore")
    if not loaded and state.authorization_list is None and not sync.last_error:
        state.list_error = MISSING  # nothing stored yet (a refused one names its code)


async def load_stored(state: GatewayState, sync: ListSync, *, source: str) -> bool:
    """Use the newest stored version if it is newer than the one in use and verifies.

    What another process of this agency stored (pushed to it, or fetched by it)
    becomes this process's list too.  Returns whether a list was taken up.
    """
    current = state.authorization_list
    row = await state.pool.fetchrow(
        "SELECT version, signed_document, digest, received_at FROM authorization_lists "
        "WHERE version > $1 ORDER BY version DESC LIMIT 1",
        -1 if current is None else current.version,
    )
    if row is None:
        return False
    try:
        lst = verify_signed_list(row["signed_document"], state.hub.trusted_hub, now=utcnow())
    except PermitsError as exc:
        _refused(state, sync, exc.code)
        log.warning("authorization_list_stored_unusable", version=row["version"], code=exc.code)
        return False
    async with sync.lock:
        _activate(state, sync, lst, row["digest"], row["received_at"])
    log.info("authorization_list_restored", version=lst.version, source=source)
    return True


async def refresh(state: GatewayState, sync: ListSync) -> tuple[AuthorizationList, Outcome]:
    """Fetch the hub's current list and accept it; failures are recorded and raised."""
    sync.last_refresh_at = utcnow()
    try:
        signed = await state.hub.get(LIST_PATH)
    except GatewayError as exc:
        _refused(state, sync, exc.code)
        log.warning("authorization_list_fetch_failed", code=exc.code)
        raise
    return await accept(state, sync, signed, source="refresh")


async def _refresh_quietly(state: GatewayState, sync: ListSync) -> None:
    with contextlib.suppress(GatewayError, PermitsError):  # recorded in the status
        await refresh(state, sync)


async def _refresh_loop(state: GatewayState, sync: ListSync) -> None:
    while True:
        await asyncio.sleep(state.config.timing.list_refresh)
        try:
            # What another process stored counts even while the hub is away.
            await load_stored(state, sync, source="periodic check")
            await _refresh_quietly(state, sync)
        except Exception as exc:  # a database hiccup must not end the loop
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("authorization_list_refresh_crashed")


async def list_sync_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: restore, fetch once, then refresh in the background until shutdown."""
    state = app[GATEWAY_STATE]
    sync = app[LIST_SYNC]
    await restore(state, sync)

    async def on_notice(payload: str | None) -> None:
        if payload is None or payload == state.config.agency_code:
            await load_stored(state, sync, source="notice")

    app[NOTICES].subscribe(LIST_CHANNEL, on_notice)
    await _refresh_quietly(state, sync)
    task = asyncio.create_task(_refresh_loop(state, sync), name="list-refresher")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def list_status(state: GatewayState, sync: ListSync) -> dict[str, Any]:
    """Operator view: is a valid list in force (and why not), which version, last refusal."""
    current = state.authorization_list
    reason: str | None = None
    try:
        require_list(state)
    except AuthorizationListUnavailableError as exc:
        reason = exc.reason

    def iso(moment: dt.datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "available": reason is None,
        "reason": reason,
        "error": reason,
        "version": None if current is None else current.version,
        "issued_at": None if current is None else iso(current.issued_at),
        "expires_at": None if current is None else iso(current.expires_at),
        "rows": None if current is None else len(current.rows),
        "digest": sync.digest,
        "received_at": iso(sync.received_at),
        "last_refresh_at": iso(sync.last_refresh_at),
        "last_error": sync.last_error,
        "last_error_at": iso(sync.last_error_at),
    }


async def list_history(state: GatewayState, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    rows = await state.pool.fetch(
        "SELECT version, issued_at, expires_at, row_count, digest, received_at "
        "FROM authorization_lists ORDER BY version DESC LIMIT $1",
        limit,
    )
    return [
        {
            key: (value.isoformat() if isinstance(value, dt.datetime) else value)
            for key, value in dict(row).items()
        }
        for row in rows
    ]


# -- HTTP ------------------------------------------------------------------------------


async def receive_pushed_list(request: web.Request) -> web.Response:
    """``POST /network/v1/authorization-list``: the hub pushes a newly published version."""
    state = request.config_dict[GATEWAY_STATE]
    signed = await read_xml(request, limit=MAX_SIGNED_LIST_BYTES)
    lst, outcome = await accept(state, request.config_dict[LIST_SYNC], signed, source="push")
    return web.json_response({"version": lst.version, "outcome": outcome})


async def refresh_list(request: web.Request) -> web.Response:
    """``POST /internal/v1/authorization-list/refresh``: fetch from the hub now (operators)."""
    await authorize(request, OP_MANAGE_LIST)
    state = request.config_dict[GATEWAY_STATE]
    sync = request.config_dict[LIST_SYNC]
    lst, outcome = await refresh(state, sync)
    return web.json_response(
        {"version": lst.version, "outcome": outcome, "status": list_status(state, sync)}
    )


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face: an operator's refresh now."""
    internal.router.add_post("/v1/authorization-list/refresh", refresh_list)


def add_network_routes(network: web.Application) -> None:
    """Routes on the hub's ``/network`` face: a list the hub pushes."""
    network.router.add_post("/v1/authorization-list", receive_pushed_list)
