"""The hub's authorization list: published signed, versioned, with an expiry, and pushed.

* At start-up the hub serves the newest version it published before, if that
  one is still valid and verifies under its key; otherwise it publishes the
  configured list (``HubConfig.authorization_list``, else 千葉市's sample list)
  as the next version.
* ``POST /admin/v1/authorization-list`` (operator certificate and admin token)
  publishes a new version from CSV (``text/csv``, the operator's format) or XML
  (``application/xml``, validated by the XSD): the rows are taken from the
  document, the version is always the newest one plus one, and the list is
  valid from now for ``HubConfig.list_lifetime`` (or ``?lifetime_seconds=``).
* Every version is kept in ``authorization_lists`` and pushed at once to every
  registered agency's ``POST /network/v1/authorization-list``; gateways also
  fetch ``GET /network/v1/authorization-list`` on their own schedule.
* While the hub's own list is expired, queries are refused with 503
  ``authorization_list_unavailable`` (reason ``authorization_list_expired``).
* Several hub processes on one database use one list, the newest published:
  publishing sends ``NOTIFY chukan_hub_list`` in the publishing transaction and
  every process then loads the newest version (verified under the hub's key);
  each also checks every :data:`LIST_CHECK_INTERVAL` seconds, so a notice lost
  during a database outage delays a new list by that much at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    AuthorizationListUnavailableError,
    UnsupportedMediaError,
    ValidationError,
)
from chukan.gateway.core.notices import HUB_LIST_CHANNEL, NOTICES, notify
from chukan.gateway.core.web import read_body
from chukan.keys import SigningKeyPair
from chukan.permits import (
    MAX_LIST_BYTES,
    AuthorizationList,
    AuthorizationRow,
    PermitsError,
    load_sample_list,
    parse_list_csv,
    parse_list_xml,
    sign_list,
    verify_signed_list,
)
from chukan.simulators.hub import auth
from chukan.simulators.hub.config import HubConfig
from chukan.simulators.hub.registry import tls_server_name
from chukan.simulators.hub.state import HUB_STATE, HubState, utcnow

log = structlog.get_logger("chukan.hub")

LIST_PUSH_PATH: Final = "/network/v1/authorization-list"
MIN_LIFETIME: Final = dt.timedelta(seconds=1)
MAX_LIFETIME: Final = dt.timedelta(days=366)
PUSH_TIMEOUT: Final = 5.0
#: Seconds between two checks of the newest published version by each hub process.
LIST_CHECK_INTERVAL: Final = 10.0
#: Version, issued and expiry are the hub's to set: placeholders when parsing a CSV.
_PLACEHOLDER_VERSION: Final = 1


def require_current(lst: AuthorizationList, now: dt.datetime) -> None:
    """The hub authorizes nothing under an expired list."""
    if lst.is_expired(now):
        raise AuthorizationListUnavailableError(
            "authorization_list_expired",
            f"the hub's authorization list (version {lst.version}) has expired",
        )


async def publish(
    pool: db.Pool,
    signer: SigningKeyPair,
    rows: Sequence[AuthorizationRow],
    *,
    lifetime: dt.timedelta,
    published_by: str | None,
) -> tuple[AuthorizationList, bytes]:
    """Sign ``rows`` as the next version and record it; versions only ever go up."""
    async with pool.acquire() as conn, conn.transaction():
        # One publisher at a time, so two publications never claim one version.
        await conn.execute("LOCK TABLE authorization_lists IN SHARE ROW EXCLUSIVE MODE")
        newest = await conn.fetchval("SELECT max(version) FROM authorization_lists")
        now = utcnow()
        lst = AuthorizationList(
            rows=tuple(rows),
            version=(newest or 0) + 1,
            issued_at=now,
            expires_at=now + lifetime,
        )
        signed = sign_list(lst, signer)
        await conn.execute(
            """INSERT INTO authorization_lists (version, issued_at, expires_at, row_count,
                   digest, signed_document, published_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            lst.version,
            lst.issued_at,
            lst.expires_at,
            len(lst.rows),
            hashlib.sha256(signed).hexdigest(),
            signed,
            published_by,
        )
        await notify(conn, HUB_LIST_CHANNEL, str(lst.version))  # the other hub processes
    log.info(
        "authorization_list_published",
        version=lst.version,
        rows=len(lst.rows),
        expires_at=lst.expires_at.isoformat(),
        published_by=published_by,
    )
    return lst, signed


async def initial_list(
    pool: db.Pool, config: HubConfig, signer: SigningKeyPair
) -> tuple[AuthorizationList, bytes]:
    """The newest valid version published before, or a new version of the configured rows."""
    if config.authorization_list is None:
        row = await pool.fetchrow(
            "SELECT signed_document FROM authorization_lists ORDER BY version DESC LIMIT 1"
        )
        if row is not None:
            signed: bytes = row["signed_document"]
            try:
                trusted = {signer.key_id: signer.public}
                return verify_signed_list(signed, trusted, now=utcnow()), signed
            except PermitsError as exc:  # expired, or signed under an earlier hub key
                log.info("authorization_list_republished", code=exc.code)
        now = utcnow()
        rows = load_sample_list(issued_at=now, expires_at=now + config.list_lifetime).rows
    else:
        rows = config.authorization_list.rows
    return await publish(
        pool, signer, rows, lifetime=config.list_lifetime, published_by="hub start-up"
    )


def adopt(state: HubState, lst: AuthorizationList, signed: bytes) -> bool:
    """Use ``lst`` unless this process already holds a newer version; returns whether it did."""
    if lst.version <= state.authorization_list.version:
        return False
    state.authorization_list = lst
    state.signed_list = signed
    return True


async def load_newest(state: HubState, *, source: str) -> bool:
    """Take up a version another hub process published; returns whether one was taken up."""
    row = await state.pool.fetchrow(
        "SELECT version, signed_document FROM authorization_lists "
        "WHERE version > $1 ORDER BY version DESC LIMIT 1",
        state.authorization_list.version,
    )
    if row is None:
        return False
    signed: bytes = row["signed_document"]
    try:
        trusted = {state.keys.signing.key_id: state.keys.signing.public}
        lst = verify_signed_list(signed, trusted, now=utcnow())
    except PermitsError as exc:
        log.warning("authorization_list_unusable", version=row["version"], code=exc.code)
        return False
    if not adopt(state, lst, signed):
        return False
    log.info("authorization_list_taken_up", version=lst.version, source=source)
    return True


async def _check_loop(state: HubState) -> None:
    while True:
        await asyncio.sleep(LIST_CHECK_INTERVAL)
        try:
            await load_newest(state, source="periodic check")
        except Exception as exc:  # the loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            else:
                log.exception("authorization_list_check_failed")


async def list_watch_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: take up what other hub processes publish (notice, periodic check)."""
    state = app[HUB_STATE]

    async def on_notice(_payload: str | None) -> None:
        await load_newest(state, source="notice")

    app[NOTICES].subscribe(HUB_LIST_CHANNEL, on_notice)
    task = asyncio.create_task(_check_loop(state), name="hub-list-check")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _lifetime(request: web.Request, default: dt.timedelta) -> dt.timedelta:
    text = request.query.get("lifetime_seconds")
    if text is None:
        return default
    try:
        lifetime = dt.timedelta(seconds=int(text))
    except (ValueError, OverflowError):
        raise ValidationError("lifetime_seconds must be a whole number of seconds") from None
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise ValidationError(
            f"lifetime_seconds must be from {int(MIN_LIFETIME.total_seconds())} "
            f"to {int(MAX_LIFETIME.total_seconds())}"
        )
    return lifetime


def _rows_of(content_type: str, data: bytes) -> tuple[AuthorizationRow, ...]:
    now = utcnow()
    if content_type in ("text/csv", "application/csv"):
        return parse_list_csv(
            data,
            version=_PLACEHOLDER_VERSION,
            issued_at=now,
            expires_at=now + MIN_LIFETIME,
        ).rows
    if content_type in ("application/xml", "text/xml"):
        return parse_list_xml(data).rows
    raise UnsupportedMediaError("send the list as text/csv or application/xml")


async def push_list(state: HubState, signed: bytes) -> dict[str, str]:
    """Push a signed version to every registered agency; returns each one's outcome or code."""
    agencies = await state.pool.fetch("SELECT code, endpoint FROM agencies ORDER BY code")

    async def push(code: str, endpoint: str) -> tuple[str, str]:
        try:
            async with state.session.post(
                endpoint.rstrip("/") + LIST_PUSH_PATH,
                data=signed,
                headers={"Content-Type": "application/xml"},
                timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT),
                server_hostname=tls_server_name(state, code, endpoint),
            ) as response:
                answer: Any = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return code, f"unreachable:{type(exc).__name__}"
        if response.status == 200 and isinstance(answer, dict):
            return code, str(answer.get("outcome", "accepted"))
        try:
            return code, str(answer["error"]["code"])
        except (KeyError, TypeError):
            return code, f"http_{response.status}"

    results = dict(await asyncio.gather(*(push(a["code"], a["endpoint"]) for a in agencies)))
    log.info("authorization_list_pushed", results=results)
    return results


async def publish_list(request: web.Request) -> web.Response:
    """``POST /admin/v1/authorization-list``: publish a new version and push it."""
    auth.require_admin(request)
    auth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    lifetime = _lifetime(request, state.config.list_lifetime)
    data = await read_body(request, limit=MAX_LIST_BYTES)
    try:
        rows = _rows_of(request.content_type, data)
    except PermitsError as exc:
        # Bad input is the operator's: 422 with the row and field, nothing published.
        raise ValidationError(f"{exc.code}: {exc}") from None
    peer = request.get(auth.HUB_PEER)
    lst, signed = await publish(
        state.pool,
        state.keys.signing,
        rows,
        lifetime=lifetime,
        published_by=None if peer is None else peer.subject_id,
    )
    adopt(state, lst, signed)
    pushed = await push_list(state, signed)
    return web.json_response(
        {
            "version": lst.version,
            "issued_at": lst.issued_at.isoformat(),
            "expires_at": lst.expires_at.isoformat(),
            "rows": len(lst.rows),
            "digest": hashlib.sha256(signed).hexdigest(),
            "pushed": pushed,
        },
        status=201,
    )


async def list_versions(request: web.Request) -> web.Response:
    """``GET /admin/v1/authorization-list/versions``: every published version (no content)."""
    auth.require_admin(request)
    auth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    rows = await state.pool.fetch(
        "SELECT version, issued_at, expires_at, row_count, digest, published_by, published_at "
        "FROM authorization_lists ORDER BY version DESC"
    )
    return web.json_response(
        {
            "versions": [
                {
                    k: (v.isoformat() if isinstance(v, dt.datetime) else v)
                    for k, v in dict(r).items()
                }
                for r in rows
            ]
        }
    )


async def authorization_list(request: web.Request) -> web.Response:
    """``GET /network/v1/authorization-list``: the current signed version, for gateways."""
    state = request.config_dict[HUB_STATE]
    return web.Response(body=state.signed_list, content_type="application/xml")
