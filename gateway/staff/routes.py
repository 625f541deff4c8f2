"""職員認証・権限管理: the staff API of accounts, sessions and the audit trail (``/staff/v1``).

Passwords: :mod:`.passwords`; sessions and the check every flow's staff routes
run: :mod:`.sessions`; accounts: :mod:`.accounts`; the audit trail: :mod:`.audit`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.errors import RateLimitedError, ValidationError
from chukan.gateway.core.oplog import note_target, read_operations
from chukan.gateway.core.refusals import REFUSAL_COUNTED
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.core.web import CALLER, read_json, require_str
from chukan.gateway.staff.accounts import (
    account_json,
    all_accounts,
    check_display_name,
    check_username,
    create_account,
    ensure_initial_admin,
    find_account,
    parse_expiry,
    password_hash_of,
    plan_update,
    review_accounts,
    revoke_account,
    set_password,
    update_account,
)
from chukan.gateway.staff.api import query_limit
from chukan.gateway.staff.audit import audit, read_events
from chukan.gateway.staff.errors import AccountUnknownError, LoginFailedError, OfficeScopeError
from chukan.gateway.staff.offices import (
    all_offices,
    check_office_code,
    check_office_name,
    create_office,
    office_json,
    parse_item_classes,
    update_office,
)
from chukan.gateway.staff.passwords import (
    MAX_PASSWORD_LENGTH,
    check_password_strength,
    hash_in_thread,
    verify_in_thread,
)
from chukan.gateway.staff.roles import ROLE_ADMIN, ROLE_AUDITOR, parse_roles
from chukan.gateway.staff.sessions import (
    StaffSession,
    audit_staff,
    log_in,
    log_out,
    require_staff,
)

log = structlog.get_logger("chukan.staff")

MAX_UNUSED_DAYS = 3650


async def login(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    username = require_str(data, "username", max_length=64)
    password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
    return web.json_response(await logged_in(request, state, username, password))


async def logged_in(
    request: web.Request, state: GatewayState, username: str, password: str
) -> dict[str, Any]:
    """:func:`log_in` for a request (API and console): the operation log names the new
    session's user; a refused login is counted in ``access_refusals`` instead."""
    try:
        answer = await log_in(state, username, password, request.remote)
    except (LoginFailedError, RateLimitedError):
        request[REFUSAL_COUNTED] = True
        raise
    request[CALLER] = f"staff:{username}"
    return answer


async def logout(request: web.Request) -> web.Response:
    session = await require_staff(request)
    await log_out(request, session)
    return web.json_response({"logged_out": True})


async def me(request: web.Request) -> web.Response:
    session = await require_staff(request)
    row = await find_account(request.config_dict[GATEWAY_STATE].pool, session.username)
    assert row is not None
    return web.json_response(account_json(row))


async def change_own_password(request: web.Request) -> web.Response:
    session = await require_staff(request)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    current = require_str(data, "current_password", max_length=MAX_PASSWORD_LENGTH)
    new = require_str(data, "new_password", max_length=MAX_PASSWORD_LENGTH)
    stored = await password_hash_of(state.pool, session.username)
    if not await verify_in_thread(current, stored):
        await audit(
            state.pool,
            actor_kind="staff",
            actor=session.username,
            action="staff.password.change",
            outcome="refused",
            remote=request.remote,
        )
        raise LoginFailedError("the current password is wrong")
    check_password_strength(new, state.config.staff, session.username)
    hashed = await hash_in_thread(state.config.staff, new)
    async with state.pool.acquire() as conn, conn.transaction():
        await set_password(conn, session.username, hashed)
        await audit_staff(request, "staff.password.change", conn=conn)
    return web.json_response({"changed": True})


async def list_accounts(request: web.Request) -> web.Response:
    session = await require_account_admin(request)
    rows = await all_accounts(request.config_dict[GATEWAY_STATE].pool)
    rows = [r for r in rows if session.central or r["office"] == session.office]
    await audit_staff(request, "staff.account.list")
    return web.json_response({"accounts": [account_json(r) for r in rows]})


async def require_account_admin(request: web.Request) -> StaffSession:
    """The role check of every account-administration operation, API and console alike."""
    return await require_staff(request, ROLE_ADMIN)


def check_office_scope(session: StaffSession, office: str | None) -> None:
    """An administrator of the central office (介護保険管理課) administers every office's
    accounts; one of another office only its own office's (403 ``office_scope``)."""
    if not session.central and office != session.office:
        raise OfficeScopeError(
            f"an administrator of {session.office} administers only its own accounts"
        )


async def _account_in_scope(
    request: web.Request, session: StaffSession, username: str
) -> asyncpg.Record:
    row = await find_account(request.config_dict[GATEWAY_STATE].pool, username)
    if row is None or (not session.central and row["office"] != session.office):
        raise AccountUnknownError(f"no account {username}")
    return row


async def new_account(
    request: web.Request, session: StaffSession, data: Mapping[str, Any]
) -> asyncpg.Record:
    """Create an account from a request's fields (API: JSON; console: a form), audited."""
    state = request.config_dict[GATEWAY_STATE]
    username = check_username(require_str(data, "username", max_length=64))
    roles = parse_roles(data.get("roles"))
    display_name = check_display_name(data.get("display_name") or "")
    expires_at = parse_expiry(data.get("expires_at"))
    office = check_office_code(data.get("office"))  # required: every account has an office
    check_office_scope(session, office)
    item_classes = parse_item_classes(data.get("item_classes"))
    password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
    check_password_strength(password, state.config.staff, username)
    hashed = await hash_in_thread(state.config.staff, password)
    note_target(request, username)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await create_account(
            conn,
            username=username,
            roles=roles,
            password_hash=hashed,
            created_by=session.username,
            display_name=display_name,
            expires_at=expires_at,
            office=office,
            item_classes=item_classes,
        )
        await audit_staff(
            request,
            "staff.account.create",
            target=username,
            detail={"roles": roles, "account_office": office, "item_classes": item_classes},
            conn=conn,
        )
    return row


async def post_account(request: web.Request) -> web.Response:
    session = await require_account_admin(request)
    row = await new_account(request, session, await read_json(request))
    return web.json_response(account_json(row), status=201)


async def get_account(request: web.Request) -> web.Response:
    session = await require_account_admin(request)
    row = await _account_in_scope(request, session, request.match_info["username"])
    return web.json_response(account_json(row))


async def patch_account(request: web.Request) -> web.Response:
    """Change roles, display name, expiry, password (reset) or clear a lockout."""
    session = await require_account_admin(request)
    username = request.match_info["username"]
    row = await change_account(request, session, username, await read_json(request))
    return web.json_response(account_json(row))


async def change_account(
    request: web.Request, session: StaffSession, username: str, data: Mapping[str, Any]
) -> asyncpg.Record:
    """Apply a checked change to an account in the administrator's scope (API, console)."""
    state = request.config_dict[GATEWAY_STATE]
    await _account_in_scope(request, session, username)
    if "office" in data:
        check_office_scope(session, data["office"])
    update = await plan_update(data, state.config.staff, username)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await update_account(conn, update)
        await audit_staff(
            request,
            "staff.account.update",
            target=username,
            detail={"fields": sorted(data)},
            conn=conn,
        )
    log.info("staff_account_updated", actor=session.username, fields=sorted(data))
    return row


async def revoke_as(request: web.Request, session: StaffSession, username: str) -> int:
    """Revoke ``username`` and end its sessions (API and console), audited; sessions ended."""
    state = request.config_dict[GATEWAY_STATE]
    await _account_in_scope(request, session, username)
    async with state.pool.acquire() as conn:
        ended = await revoke_account(conn, username, session.username)
        await audit_staff(
            request,
            "staff.account.revoke",
            target=username,
            detail={"sessions_ended": ended},
            conn=conn,
        )
    log.info("staff_account_revoked", actor=session.username, sessions_ended=ended)
    return ended


async def revoke(request: web.Request) -> web.Response:
    session = await require_account_admin(request)
    username = request.match_info["username"]
    ended = await revoke_as(request, session, username)
    return web.json_response({"username": username, "revoked": True, "sessions_ended": ended})


async def account_review(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_ADMIN, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    try:
        days = int(request.query.get("unused_days", state.config.staff.unused_days))
    except ValueError:
        raise ValidationError("unused_days must be a whole number") from None
    if not 0 <= days <= MAX_UNUSED_DAYS:
        raise ValidationError(f"unused_days must be between 0 and {MAX_UNUSED_DAYS}")
    report = await review_accounts(state.pool, days)
    await audit_staff(request, "staff.account.review", detail={"unused_days": days})
    return web.json_response(report)


async def audit_events(request: web.Request) -> web.Response:
    """The audit trail, newest first; ``?actor=``, ``?action=``, ``?limit=``."""
    await require_staff(request, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    events = await read_events(
        state.pool,
        actor=request.query.get("actor"),
        action=request.query.get("action"),
        limit=query_limit(request),
    )
    await audit_staff(request, "staff.audit.read")
    return web.json_response({"events": events})


async def list_offices(request: web.Request) -> web.Response:
    """The offices (any staff member: the console shows them beside accounts)."""
    await require_staff(request)
    rows = await all_offices(request.config_dict[GATEWAY_STATE].pool)
    return web.json_response({"offices": [office_json(r) for r in rows]})


async def require_office_admin(request: web.Request) -> StaffSession:
    """Offices are administered by administrators of the central office only."""
    session = await require_account_admin(request)
    if not session.central:
        raise OfficeScopeError("offices are administered by the central office")
    return session


async def new_office(
    request: web.Request, session: StaffSession, data: Mapping[str, Any]
) -> asyncpg.Record:
    """Create an office from a request's fields (API: JSON; console: a form), audited."""
    state = request.config_dict[GATEWAY_STATE]
    code = check_office_code(data.get("code"))
    name = check_office_name(data.get("name"))
    classes = parse_item_classes(data.get("item_classes"))
    note_target(request, code)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await create_office(
            conn, code=code, name=name, item_classes=classes, by=session.username
        )
        await audit_staff(
            request, "staff.office.create", target=code, detail={"item_classes": classes}, conn=conn
        )
    return row


async def change_office(
    request: web.Request, session: StaffSession, code: str, data: Mapping[str, Any]
) -> asyncpg.Record:
    """Rename an office or change its item classes, audited."""
    state = request.config_dict[GATEWAY_STATE]
    check_office_code(code)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await update_office(conn, code, data, session.username)
        await audit_staff(
            request, "staff.office.update", target=code, detail={"fields": sorted(data)}, conn=conn
        )
    return row


async def post_office(request: web.Request) -> web.Response:
    session = await require_office_admin(request)
    row = await new_office(request, session, await read_json(request))
    return web.json_response(office_json(row), status=201)


async def patch_office(request: web.Request) -> web.Response:
    session = await require_office_admin(request)
    data = await read_json(request)
    row = await change_office(request, session, request.match_info["code"], data)
    return web.json_response(office_json(row))


def _instant(value: str | None, name: str) -> dt.datetime | None:
    """An ISO date (its start, UTC) or a date-time with offset; None when absent."""
    if not value:
        return None
    try:
        if len(value) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{name} must be an ISO date or date-time") from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{name} needs a UTC offset")
    return parsed


async def operations_query(request: web.Request) -> list[dict[str, Any]]:
    """The operation log for an auditor, filtered by ``?from&to&caller&operation&target
    &office&limit`` (``to`` a date: through that day)."""
    await require_staff(request, ROLE_AUDITOR)
    query = request.query
    start = _instant(query.get("from"), "from")
    end = _instant(query.get("to"), "to")
    if end is not None and len(query.get("to", "")) == 10:
        end += dt.timedelta(days=1)
    filters = {k: query.get(k) or None for k in ("caller", "operation", "target", "office")}
    for name, value in filters.items():
        if value is not None and len(value) > 128:
            raise ValidationError(f"{name} is longer than 128 characters")
    rows = await read_operations(
        request.config_dict[GATEWAY_STATE].pool,
        start=start,
        end=end,
        limit=query_limit(request),
        **filters,
    )
    await audit_staff(
        request, "operations.read", detail={k: v for k, v in filters.items() if v is not None}
    )
    return rows


async def get_operations(request: web.Request) -> web.Response:
    """``GET /staff/v1/operations``: the operation log (auditor), newest first."""
    return web.json_response({"operations": await operations_query(request)})


async def staff_context(app: web.Application) -> AsyncIterator[None]:
    state = app[GATEWAY_STATE]
    await ensure_initial_admin(state.pool, state.config.staff)
    yield


def setup_staff(app: web.Application) -> None:
    app.cleanup_ctx.append(staff_context)


def add_staff_routes(staff: web.Application) -> None:
    """Routes on the staff's ``/staff`` face (paths relative to its prefix)."""
    staff.router.add_post("/v1/login", login)
    staff.router.add_post("/v1/logout", logout)
    staff.router.add_get("/v1/me", me)
    staff.router.add_post("/v1/me/password", change_own_password)
    staff.router.add_get("/v1/accounts", list_accounts)
    staff.router.add_post("/v1/accounts", post_account)
    staff.router.add_get("/v1/accounts/{username}", get_account)
    staff.router.add_patch("/v1/accounts/{username}", patch_account)
    staff.router.add_delete("/v1/accounts/{username}", revoke)
    staff.router.add_post("/v1/accounts/{username}/revoke", revoke)
    staff.router.add_get("/v1/reviews/accounts", account_review)
    staff.router.add_get("/v1/audit", audit_events)
    staff.router.add_get("/v1/offices", list_offices)
    staff.router.add_post("/v1/offices", post_office)
    staff.router.add_patch("/v1/offices/{code}", patch_office)
    staff.router.add_get("/v1/operations", get_operations)
