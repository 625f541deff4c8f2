"""職員認証・権限管理: staff accounts, roles, sessions, lockout and the audit trail.

* Passwords are hashed with scrypt (salt and cost stored with the hash,
  constant-time comparison); hashing runs in a worker thread.
* Sessions are random opaque bearer tokens stored as SHA-256 digests; a
  session ends after ``idle_timeout`` without use, after ``session_lifetime``,
  at logout, or at once when its account is revoked or expires.
* Repeated failed logins lock the account for ``lockout``.
* Every staff operation, login, logout and refusal lands in ``audit_trail``
  (append-only: the database refuses UPDATE and DELETE).

Other modules protect their handlers with :func:`require_staff`::

    session = await require_staff(request, ROLE_APPROVER)
    ...
    await audit_staff(request, "review.approve", target=query_id)
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    ConflictError,
    ForbiddenError,
    GatewayError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from chukan.gateway.core.settings import StaffConfig
from chukan.gateway.core.state import GATEWAY_STATE, utcnow
from chukan.gateway.core.web import CALLER, read_json, require_str

log = structlog.get_logger("chukan.staff")

ROLE_OPERATOR: Final = "operator"
ROLE_APPROVER: Final = "approver"
ROLE_AUDITOR: Final = "auditor"
ROLE_ADMIN: Final = "admin"
ROLES: Final = (ROLE_OPERATOR, ROLE_APPROVER, ROLE_AUDITOR, ROLE_ADMIN)

USERNAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
MAX_PASSWORD_LENGTH: Final = 1024
TOKEN_BYTES: Final = 32
SCRYPT_DKLEN: Final = 32
SCRYPT_SALT_BYTES: Final = 16


# -- errors ----------------------------------------------------------------------------------


class LoginFailedError(UnauthenticatedError):
    """Unknown user, wrong password, expired or revoked account: one answer for all."""

    code = "login_failed"


class AccountLockedError(ForbiddenError):
    code = "account_locked"


class SessionInvalidError(UnauthenticatedError):
    """No session, an unknown token, or one that ended (idle, lifetime, revoked, logout)."""

    code = "session_invalid"


class RoleRequiredError(ForbiddenError):
    code = "role_required"


class AccountExistsError(ConflictError):
    code = "account_exists"


class AccountUnknownError(NotFoundError):
    code = "account_unknown"


class WeakPasswordError(ValidationError):
    code = "password_too_weak"


# -- password hashing (pure) -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=SCRYPT_DKLEN,
        maxmem=256 * n * r * p + 1024 * 1024,
    )


def hash_password(password: str, *, n: int, r: int, p: int) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64): the parameters travel with the hash."""
    if n < 2 or n & (n - 1):
        raise ValueError("scrypt n must be a power of two")
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never verifies."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(actual, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_password_strength(password: str, config: StaffConfig, username: str) -> None:
    if len(password) < config.min_password_length:
        raise WeakPasswordError(
            f"password must be at least {config.min_password_length} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if (username and username.lower() in password.lower()) or len(set(password)) < 5:
        raise WeakPasswordError("password is too easy to guess")


# -- audit trail -----------------------------------------------------------------------------


async def audit(
    conn: db.Executor,
    *,
    actor_kind: str,
    actor: str | None,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    remote: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event to the audit trail (never a password, token or 個人番号)."""
    await conn.execute(
        "INSERT INTO audit_trail (actor_kind, actor, action, target, outcome, remote, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        actor_kind,
        actor,
        action,
        target,
        outcome,
        remote,
        json.dumps(detail or {}, ensure_ascii=False),
    )


@dataclass(frozen=True, slots=True)
class StaffSession:
    username: str
    roles: frozenset[str]
    display_name: str
    token_sha256: bytes

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


STAFF_SESSION: Final = web.RequestKey("staff_session", StaffSession)


async def audit_staff(
    request: web.Request,
    action: str,
    *,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    conn: db.Executor | None = None,
) -> None:
    """Record an operation by the logged-in staff member of ``request``."""
    session = request[STAFF_SESSION]
    await audit(
        conn if conn is not None else request.config_dict[GATEWAY_STATE].pool,
        actor_kind="staff",
        actor=session.username,
        action=action,
        target=target,
        remote=request.remote,
        detail=detail,
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme == "Bearer" and token.strip() else None


async def require_staff(request: web.Request, *roles: str) -> StaffSession:
    """The live staff session of ``request``, holding at least one of ``roles`` (any
    role when none is named).  401 ``session_invalid`` / 403 ``role_required`` otherwise,
    each recorded in the audit trail.  Touches the session (idle clock) in one statement."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    state = request.config_dict[GATEWAY_STATE]
    config = state.config.staff
    token = _bearer(request)
    operation = (
        f"{request.method} {request.match_info.route.resource.canonical}"
        if (request.match_info.route.resource is not None)
        else request.path
    )
    if token is None:
        await _refuse(request, None, operation, "no_session")
        raise SessionInvalidError("log in first: a staff session token is required")
    digest = token_sha256(token)
    row = await state.pool.fetchrow(
        """UPDATE staff_sessions s SET last_seen_at = now()
           FROM staff_accounts a
           WHERE s.token_sha256 = $1 AND s.ended_at IS NULL
             AND s.last_seen_at > now() - $2::interval
             AND s.created_at > now() - $3::interval
             AND a.tenant = s.tenant AND a.username = s.username AND a.revoked_at IS NULL
             AND (a.expires_at IS NULL OR a.expires_at > now())
           RETURNING s.username, a.roles, a.display_name""",
        digest,
        config.idle_timeout,
        config.session_lifetime,
    )
    if row is None:
        reason = await state.pool.fetchval(
            """UPDATE staff_sessions s SET ended_at = now(), end_reason = CASE
                   WHEN a.revoked_at IS NOT NULL THEN 'revoked'
                   WHEN a.expires_at IS NOT NULL AND a.expires_at <= now() THEN 'expired'
                   WHEN s.created_at <= now() - $2::interval THEN 'lifetime'
                   ELSE 'idle' END
               FROM staff_accounts a
               WHERE s.token_sha256 = $1 AND s.ended_at IS NULL
                 AND a.tenant = s.tenant AND a.username = s.username
               RETURNING s.username || ':' || s.end_reason""",
            digest,
            config.session_lifetime,
        )
        username, _, why = (reason or ":unknown_or_ended").partition(":")
        await _refuse(request, username or None, operation, f"session_{why}")
        raise SessionInvalidError("the session is unknown or has ended: log in again")
    session = StaffSession(row["username"], frozenset(row["roles"]), row["display_name"], digest)
    request[STAFF_SESSION] = session
    request[CALLER] = f"staff:{session.username}"
    if roles and not session.has(*roles):
        await _refuse(request, session.username, operation, "role_required", roles=list(roles))
        raise RoleRequiredError(f"this needs one of the roles {', '.join(roles)}")
    return session


async def _refuse(
    request: web.Request, actor: str | None, operation: str, reason: str, **detail: Any
) -> None:
    await audit(
        request.config_dict[GATEWAY_STATE].pool,
        actor_kind="staff",
        actor=actor,
        action="staff.refused",
        target=operation,
        outcome="refused",
        remote=request.remote,
        detail={"reason": reason, **detail},
    )
    log.warning("staff_refused", actor=actor, operation=operation, reason=reason)


# -- accounts (shared by the API and the CLI) ------------------------------------------------

ACCOUNT_COLUMNS: Final = (
    "username, display_name, roles, created_at, created_by, expires_at, revoked_at, "
    "revoked_by, failed_logins, locked_until, last_login_at, password_changed_at"
)


def account_json(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ACCOUNT_COLUMNS.split(", "):
        value = row[key]
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    out["roles"] = sorted(row["roles"])
    return out


def _roles(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(r, str) and r in ROLES for r in value)
    ):
        raise ValidationError(f"roles must be a non-empty list of {', '.join(ROLES)}")
    return sorted(set(value))


def _username(value: str) -> str:
    if not USERNAME_PATTERN.match(value):
        raise ValidationError("username must be 2-64 of a-z 0-9 . _ - starting with a letter")
    return value


def parse_expiry(value: Any) -> dt.datetime | None:
    """An ISO date (end of that day, UTC) or date-time with offset; None for no expiry."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("expires_at must be an ISO date or date-time")
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("expires_at must be an ISO date or date-time") from None
    if parsed.tzinfo is None:
        raise ValidationError("expires_at needs a UTC offset")
    return parsed


async def create_account(
    conn: db.Executor,
    *,
    username: str,
    roles: list[str],
    password_hash: str,
    created_by: str | None,
    display_name: str = "",
    expires_at: dt.datetime | None = None,
) -> asyncpg.Record:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO staff_accounts (username, display_name, roles, password_hash,
                    created_by, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ACCOUNT_COLUMNS}""",  # noqa: S608
            username,
            display_name,
            roles,
            password_hash,
            created_by,
            expires_at,
        )
    except asyncpg.UniqueViolationError:
        raise AccountExistsError(f"account {username} already exists") from None
    assert row is not None
    return row


async def review_accounts(conn: db.Executor, unused_days: int) -> dict[str, Any]:
    """Accounts nobody used for ``unused_days`` and accounts past expiry (not revoked)."""
    unused = await conn.fetch(
        f"""SELECT {ACCOUNT_COLUMNS} FROM staff_accounts
            WHERE revoked_at IS NULL
              AND COALESCE(last_login_at, created_at) < now() - make_interval(days => $1)
            ORDER BY username""",  # noqa: S608 -- fixed column list
        unused_days,
    )
    expired = await conn.fetch(
        f"""SELECT {ACCOUNT_COLUMNS} FROM staff_accounts
            WHERE revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
            ORDER BY username""",  # noqa: S608 -- fixed column list
    )
    return {
        "unused_days": unused_days,
        "generated_at": utcnow().isoformat(),
        "unused": [account_json(r) for r in unused],
        "expired": [account_json(r) for r in expired],
    }


async def revoke_account(conn: db.Conn, username: str, by: str | None) -> int:
    """Revoke at once: the account and every live session of it; returns sessions ended."""
    async with conn.transaction():
        found = await conn.fetchval(
            "UPDATE staff_accounts SET revoked_at = COALESCE(revoked_at, now()), "
            "revoked_by = COALESCE(revoked_by, $2) WHERE username = $1 RETURNING 1",
            username,
            by,
        )
        if not found:
            raise AccountUnknownError(f"no account {username}")
        ended = await conn.fetchval(
            """WITH ended AS (UPDATE staff_sessions SET ended_at = now(), end_reason = 'revoked'
                              WHERE username = $1 AND ended_at IS NULL RETURNING 1)
               SELECT count(*) FROM ended""",
            username,
        )
    return int(ended)


# -- handlers --------------------------------------------------------------------------------


async def _hash(config: StaffConfig, password: str) -> str:
    return await asyncio.to_thread(
        hash_password, password, n=config.scrypt_n, r=config.scrypt_r, p=config.scrypt_p
    )


async def login(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    config = state.config.staff
    data = await read_json(request)
    username = require_str(data, "username", max_length=64)
    password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
    row = await state.pool.fetchrow(
        "SELECT username, password_hash, revoked_at, expires_at, locked_until "
        "FROM staff_accounts WHERE username = $1",
        username,
    )
    remote = request.remote

    async def refuse(reason: str, exc: GatewayError) -> web.Response:
        await audit(
            state.pool,
            actor_kind="staff",
            actor=username if row is not None else None,
            action="staff.login",
            target=None if row is not None else "unknown_account",
            outcome="refused",
            remote=remote,
            detail={"reason": reason},
        )
        log.warning("staff_login_refused", reason=reason)
        raise exc

    failed = LoginFailedError("user name or password is wrong, or the account is not usable")
    if row is None:
        # Same cost as a real check, so timing does not tell which accounts exist.
        await asyncio.to_thread(verify_password, password, _dummy_hash(config))
        return await refuse("unknown_account", failed)
    now = utcnow()
    if row["locked_until"] is not None and row["locked_until"] > now:
        return await refuse("locked", AccountLockedError("too many failed logins: try later"))
    if not await asyncio.to_thread(verify_password, password, row["password_hash"]):
        locked = await state.pool.fetchval(
            """UPDATE staff_accounts SET
                   failed_logins = CASE WHEN failed_logins + 1 >= $2 THEN 0
                                        ELSE failed_logins + 1 END,
                   locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + $3::interval
                                       ELSE locked_until END
               WHERE username = $1 RETURNING locked_until > now()""",
            username,
            config.max_failed_logins,
            config.lockout,
        )
        return await refuse("locked_now" if locked else "wrong_password", failed)
    if row["revoked_at"] is not None:
        return await refuse("revoked", failed)
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return await refuse("expired", failed)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE staff_accounts SET failed_logins = 0, locked_until = NULL, "
            "last_login_at = now() WHERE username = $1",
            username,
        )
        await conn.execute(
            "INSERT INTO staff_sessions (token_sha256, username, remote) VALUES ($1, $2, $3)",
            token_sha256(token),
            username,
            remote,
        )
        await audit(conn, actor_kind="staff", actor=username, action="staff.login", remote=remote)
        roles = await conn.fetchval(
            "SELECT roles FROM staff_accounts WHERE username = $1", username
        )
    log.info("staff_logged_in", actor=username)
    return web.json_response(
        {
            "token": token,
            "username": username,
            "roles": sorted(roles),
            "idle_timeout_seconds": config.idle_timeout.total_seconds(),
            "expires_at": (now + config.session_lifetime).isoformat(),
        }
    )


_DUMMY: dict[tuple[int, int, int], str] = {}


def _dummy_hash(config: StaffConfig) -> str:
    key = (config.scrypt_n, config.scrypt_r, config.scrypt_p)
    if key not in _DUMMY:
        _DUMMY[key] = hash_password(
            secrets.token_urlsafe(16), n=config.scrypt_n, r=config.scrypt_r, p=config.scrypt_p
        )
    return _DUMMY[key]


async def logout(request: web.Request) -> web.Response:
    session = await require_staff(request)
    state = request.config_dict[GATEWAY_STATE]
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE staff_sessions SET ended_at = now(), end_reason = 'logout' "
            "WHERE token_sha256 = $1 AND ended_at IS NULL",
            session.token_sha256,
        )
        await audit_staff(request, "staff.logout", conn=conn)
    log.info("staff_logged_out", actor=session.username)
    return web.json_response({"logged_out": True})


async def me(request: web.Request) -> web.Response:
    session = await require_staff(request)
    state = request.config_dict[GATEWAY_STATE]
    row = await state.pool.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS} FROM staff_accounts WHERE username = $1",  # noqa: S608
        session.username,
    )
    assert row is not None
    return web.json_response(account_json(row))


async def change_own_password(request: web.Request) -> web.Response:
    session = await require_staff(request)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    current = require_str(data, "current_password", max_length=MAX_PASSWORD_LENGTH)
    new = require_str(data, "new_password", max_length=MAX_PASSWORD_LENGTH)
    stored = await state.pool.fetchval(
        "SELECT password_hash FROM staff_accounts WHERE username = $1", session.username
    )
    if not await asyncio.to_thread(verify_password, current, stored):
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
    hashed = await _hash(state.config.staff, new)
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE staff_accounts SET password_hash = $2, password_changed_at = now() "
            "WHERE username = $1",
            session.username,
            hashed,
        )
        await audit_staff(request, "staff.password.change", conn=conn)
    return web.json_response({"changed": True})


async def list_accounts(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    rows = await state.pool.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM staff_accounts ORDER BY username"  # noqa: S608
    )
    await audit_staff(request, "staff.account.list")
    return web.json_response({"accounts": [account_json(r) for r in rows]})


async def post_account(request: web.Request) -> web.Response:
    session = await require_staff(request, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    username = _username(require_str(data, "username", max_length=64))
    roles = _roles(data.get("roles"))
    display_name = data.get("display_name") or ""
    if not isinstance(display_name, str) or len(display_name) > 200:
        raise ValidationError("display_name must be a string of at most 200 characters")
    expires_at = parse_expiry(data.get("expires_at"))
    password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
    check_password_strength(password, state.config.staff, username)
    hashed = await _hash(state.config.staff, password)
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
    return web.json_response(account_json(row), status=201)


async def get_account(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    username = request.match_info["username"]
    row = await state.pool.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS} FROM staff_accounts WHERE username = $1",  # noqa: S608
        username,
    )
    if row is None:
        raise AccountUnknownError(f"no account {username}")
    return web.json_response(account_json(row))


async def patch_account(request: web.Request) -> web.Response:
    """Change roles, display name, expiry, password (reset) or clear a lockout."""
    session = await require_staff(request, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    username = request.match_info["username"]
    data = await read_json(request)
    allowed = {"roles", "display_name", "expires_at", "password", "unlock"}
    unknown = set(data) - allowed
    if unknown or not data:
        raise ValidationError(f"fields that can change: {', '.join(sorted(allowed))}")
    sets: list[str] = []
    args: list[Any] = [username]

    def put(column: str, value: Any) -> None:
        args.append(value)
        sets.append(f"{column} = ${len(args)}")

    if "roles" in data:
        put("roles", _roles(data["roles"]))
    if "display_name" in data:
        if not isinstance(data["display_name"], str) or len(data["display_name"]) > 200:
            raise ValidationError("display_name must be a string of at most 200 characters")
        put("display_name", data["display_name"])
    if "expires_at" in data:
        put("expires_at", parse_expiry(data["expires_at"]))
    if data.get("unlock") is True:
        sets.append("failed_logins = 0, locked_until = NULL")
    elif "unlock" in data and data["unlock"] is not False:
        raise ValidationError("unlock must be true or false")
    if "password" in data:
        password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
        check_password_strength(password, state.config.staff, username)
        put("password_hash", await _hash(state.config.staff, password))
        sets.append("password_changed_at = now()")
    if not sets:
        raise ValidationError("nothing to change")
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE staff_accounts SET {', '.join(sets)} WHERE username = $1 "  # noqa: S608
            f"RETURNING {ACCOUNT_COLUMNS}",
            *args,
        )
        if row is None:
            raise AccountUnknownError(f"no account {username}")
        await audit_staff(
            request,
            "staff.account.update",
            target=username,
            detail={"fields": sorted(data)},
            conn=conn,
        )
    log.info("staff_account_updated", actor=session.username, fields=sorted(data))
    return web.json_response(account_json(row))


async def revoke(request: web.Request) -> web.Response:
    session = await require_staff(request, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    username = request.match_info["username"]
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
    return web.json_response({"username": username, "revoked": True, "sessions_ended": ended})


async def account_review(request: web.Request) -> web.Response:
    await require_staff(request, ROLE_ADMIN, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    try:
        days = int(request.query.get("unused_days", state.config.staff.unused_days))
    except ValueError:
        raise ValidationError("unused_days must be a whole number") from None
    if not 0 <= days <= 3650:
        raise ValidationError("unused_days must be between 0 and 3650")
    report = await review_accounts(state.pool, days)
    await audit_staff(request, "staff.account.review", detail={"unused_days": days})
    return web.json_response(report)


async def audit_events(request: web.Request) -> web.Response:
    """The audit trail, newest first; ``?actor=``, ``?action=``, ``?limit=``."""
    await require_staff(request, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        raise ValidationError("limit must be a whole number") from None
    rows = await state.pool.fetch(
        """SELECT id, at, actor_kind, actor, action, target, outcome, remote, detail
           FROM audit_trail WHERE ($1::text IS NULL OR actor = $1)
             AND ($2::text IS NULL OR action = $2)
           ORDER BY id DESC LIMIT $3""",
        request.query.get("actor"),
        request.query.get("action"),
        limit,
    )
    await audit_staff(request, "staff.audit.read")
    return web.json_response(
        {
            "events": [
                {
                    **{k: r[k] for k in ("id", "actor_kind", "actor", "action", "target")},
                    "outcome": r["outcome"],
                    "remote": r["remote"],
                    "at": r["at"].isoformat(),
                    "detail": json.loads(r["detail"]),
                }
                for r in rows
            ]
        }
    )


# -- bootstrap -------------------------------------------------------------------------------


async def ensure_initial_admin(conn: db.Executor, config: StaffConfig) -> bool:
    """Create the configured initial administrator when the tenant has no live admin."""
    admin = config.initial_admin
    if admin is None:
        return False
    _username(admin.username)
    created = await conn.fetchval(
        """INSERT INTO staff_accounts (username, display_name, roles, password_hash, created_by)
           SELECT $1, 'initial administrator', ARRAY['admin'], $2, 'configuration'
           WHERE NOT EXISTS (SELECT 1 FROM staff_accounts
                             WHERE 'admin' = ANY (roles) AND revoked_at IS NULL)
           ON CONFLICT DO NOTHING RETURNING 1""",
        admin.username,
        admin.password_hash,
    )
    if created:
        await audit(
            conn,
            actor_kind="gateway",
            actor="configuration",
            action="staff.account.bootstrap",
            target=admin.username,
        )
        log.info("staff_initial_admin_created", username=admin.username)
    return bool(created)


async def staff_context(app: web.Application) -> AsyncIterator[None]:
    state = app[GATEWAY_STATE]
    await ensure_initial_admin(state.pool, state.config.staff)
    yield


def setup_staff(app: web.Application) -> None:
    app.cleanup_ctx.append(staff_context)
    app.router.add_post("/staff/v1/login", login)
    app.router.add_post("/staff/v1/logout", logout)
    app.router.add_get("/staff/v1/me", me)
    app.router.add_post("/staff/v1/me/password", change_own_password)
    app.router.add_get("/staff/v1/accounts", list_accounts)
    app.router.add_post("/staff/v1/accounts", post_account)
    app.router.add_get("/staff/v1/accounts/{username}", get_account)
    app.router.add_patch("/staff/v1/accounts/{username}", patch_account)
    app.router.add_delete("/staff/v1/accounts/{username}", revoke)
    app.router.add_post("/staff/v1/accounts/{username}/revoke", revoke)
    app.router.add_get("/staff/v1/reviews/accounts", account_review)
    app.router.add_get("/staff/v1/audit", audit_events)
