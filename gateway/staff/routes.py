"""職員認証・権限管理: the staff API of accounts, sessions and the audit trail (``/staff/v1``).

Passwords: :mod:`.passwords`; sessions and the check every flow's staff routes
run: :mod:`.sessions`; accounts: :mod:`.accounts`; the audit trail: :mod:`.audit`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.web import read_json, require_str
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
from chukan.gateway.staff.errors import AccountUnknownError, LoginFailedError
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
    return web.json_response(await log_in(state, username, password, request.remote))


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
    await require_account_admin(request)
    rows = await all_accounts(request.config_dict[GATEWAY_STATE].pool)
    await audit_staff(request, "staff.account.list")
    return web.json_response({"accounts": [account_json(r) for r in rows]})


async def require_account_admin(request: web.Request) -> StaffSession:
    """The role check of every account-administration operation, API and console alike."""
    return await require_staff(request, ROLE_ADMIN)


async def new_account(
    request: web.Request, session: StaffSession, data: Mapping[str, Any]
) -> asyncpg.Record:
    """Create an account from a request's fields (API: JSON; console: a form), audited."""
    state = request.config_dict[GATEWAY_STATE]
    username = check_username(require_str(data, "username", max_length=64))
    roles = parse_roles(data.get("roles"))
    display_name = check_display_name(data.get("display_name") or "")
    expires_at = parse_expiry(data.get("expires_at"))
    password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
    check_password_strength(password, state.config.staff, username)
    hashed = await hash_in_thread(state.config.staff, password)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await create_account(
            conn,
            username=username,
            roles=roles,
            password_hash=hashed,
            created_by=session.username,
            display_name=display_name,
            expires_at=expires_at,
        )
        await audit_staff(
            request, "staff.account.create", target=username, detail={"roles": roles}, conn=conn
        )
    return row


async def post_account(request: web.Request) -> web.Response:
    session = await require_account_admin(request)
    row = await new_account(request, session, await read_json(request))
    return web.json_response(account_json(row), status=201)


async def get_account(request: web.Request) -> web.Response:
    await require_account_admin(request)
    username = request.match_info["username"]
    row = await find_account(request.config_dict[GATEWAY_STATE].pool, username)
    if row is None:
        raise AccountUnknownError(f"no account {username}")
    return web.json_response(account_json(row))


async def patch_account(request: web.Request) -> web.Response:
    """Change roles, display name, expiry, password (reset) or clear a lockout."""
    session = await require_account_admin(request)
    state = request.config_dict[GATEWAY_STATE]
    username = request.match_info["username"]
    data = await read_json(request)
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
    return web.json_response(account_json(row))


async def revoke_as(request: web.Request, session: StaffSession, username: str) -> int:
    """Revoke ``username`` and end its sessions (API and console), audited; sessions ended."""
    state = request.config_dict[GATEWAY_STATE]
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
