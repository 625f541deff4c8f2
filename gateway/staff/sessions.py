"""Staff sessions: login (with lockout), logout, and the session check of every staff route.

* Sessions are random opaque bearer tokens stored as SHA-256 digests; a
  session ends after ``idle_timeout`` without use, after ``session_lifetime``,
  at logout, or at once when its account is revoked or expires.
* Repeated failed logins lock the account for ``lockout``; failed logins and refusals
  of nobody known are counted per source and minute and answered 429 past a limit
  (:mod:`chukan.gateway.core.refusals`).
* A session carries its account's office and item-class scope (:mod:`.offices`).

Every flow protects its staff handlers with :func:`require_staff`::

    session = await require_staff(request, ROLE_APPROVER)
    ...
    await audit_staff(request, "review.approve", target=query_id)
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.oplog import OFFICE
from chukan.gateway.core.refusals import REFUSAL_COUNTED, check_peer, record_refusal
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.web import CALLER
from chukan.gateway.staff.audit import audit
from chukan.gateway.staff.errors import (
    LoginFailedError,
    RoleRequiredError,
    SessionInvalidError,
)
from chukan.gateway.staff.offices import CENTRAL_OFFICE, effective_classes, visible
from chukan.gateway.staff.passwords import dummy_hash, verify_in_thread
from chukan.gateway.staff.roles import ROLES

log = structlog.get_logger("chukan.staff")

TOKEN_BYTES: Final = 32
#: The operation failed logins are counted under in ``access_refusals`` (per source).
LOGIN_OPERATION: Final = "staff.login"


def token_sha256(token: str) -> bytes:
    """What the database keeps of a session token: never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class StaffSession:
    username: str
    roles: frozenset[str]
    display_name: str
    token_sha256: bytes
    #: The account's office (所属) and whether it is the central one (介護保険管理課).
    office: str = CENTRAL_OFFICE
    central: bool = True
    #: The item classes the account reaches (its office's, narrowed by its own); None = all.
    scope: frozenset[str] | None = None

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    def sees(self, item_code: str) -> bool:
        """Whether this staff member's item classes include ``item_code``'s."""
        return visible(self.scope, item_code)


STAFF_SESSION: Final = web.RequestKey("staff_session", StaffSession)
#: A session token the console took from its cookie (the JSON API takes only the
#: ``Authorization`` header, so a cookie alone never opens it to a cross-site form).
COOKIE_TOKEN: Final = web.RequestKey("staff_cookie_token", str)


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
        detail={"office": session.office, **(detail or {})},
    )


def _session_token(request: web.Request) -> str | None:
    """The bearer token of an API call, or the console's cookie token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Bearer" and token.strip():
        return token.strip()
    return request.get(COOKIE_TOKEN) or None


async def require_staff(request: web.Request, *roles: str) -> StaffSession:
    """The live staff session of ``request``, holding at least one of ``roles`` (any
    role when none is named).  401 ``session_invalid`` / 403 ``role_required`` otherwise,
    each recorded in the audit trail.  Touches the session (idle clock) in one statement."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    state = request.config_dict[GATEWAY_STATE]
    config = state.config.staff
    token = _session_token(request)
    operation = (
        f"{request.method} {request.match_info.route.resource.canonical}"
        if (request.match_info.route.resource is not None)
        else request.path
    )
    if token is None:
        # Nothing presented at all (e.g. the console opened before logging in): nothing
        # was attempted, so nothing is written (a flood of these costs no row) or limited.
        await _refuse(request, None, operation, "no_session")
        request[REFUSAL_COUNTED] = True
        raise SessionInvalidError("log in first: a staff session token is required")
    digest = token_sha256(token)
    row = await state.pool.fetchrow(
        """UPDATE staff_sessions s SET last_seen_at = now()
           FROM staff_accounts a JOIN offices o ON o.tenant = a.tenant AND o.code = a.office
           WHERE s.token_sha256 = $1 AND s.ended_at IS NULL
             AND s.last_seen_at > now() - $2::interval
             AND s.created_at > now() - $3::interval
             AND a.tenant = s.tenant AND a.username = s.username AND a.revoked_at IS NULL
             AND (a.expires_at IS NULL OR a.expires_at > now())
           RETURNING s.username, a.roles, a.display_name, a.office, o.central,
                     o.item_classes AS office_classes, a.item_classes""",
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
        ended = SessionInvalidError("the session is unknown or has ended: log in again")
        if not username:  # an unknown or already ended token: counted, not a row each
            await _refuse(request, None, operation, f"session_{why}")
            raise await _count_refusal(request, operation, ended)
        await _refuse(request, username, operation, f"session_{why}")
        raise ended
    session = StaffSession(
        row["username"],
        frozenset(row["roles"]),
        row["display_name"],
        digest,
        office=row["office"],
        central=row["central"],
        scope=effective_classes(row["office_classes"], row["item_classes"]),
    )
    request[STAFF_SESSION] = session
    request[CALLER] = f"staff:{session.username}"
    request[OFFICE] = session.office
    if roles and not session.has(*roles):
        await _refuse(request, session.username, operation, "role_required", roles=list(roles))
        raise RoleRequiredError(f"this needs one of the roles {', '.join(roles)}")
    return session


async def _count_refusal(request: web.Request, operation: str, exc: GatewayError) -> GatewayError:
    """A refusal of nobody known (no or an unknown session): counted per peer and minute
    in ``access_refusals``; 429 ``rate_limited`` past the limit (:mod:`..core.refusals`)."""
    request[REFUSAL_COUNTED] = True
    state = request.config_dict[GATEWAY_STATE]
    return await record_refusal(
        state.pool,
        caller=None,
        operation=f"staff {operation}",
        remote=request.remote,
        exc=exc,
        limit=state.config.ops.refusals_per_minute,
    )


async def _refuse(
    request: web.Request, actor: str | None, operation: str, reason: str, **detail: Any
) -> None:
    if actor is None:
        log.warning("staff_refused", actor=None, operation=operation, reason=reason)
        return  # counted by _count_refusal (one row a minute per peer, not one each)
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


async def log_in(
    state: GatewayState, username: str, password: str, remote: str | None
) -> dict[str, Any]:
    """Check the password (locking the account after too many failures) and open a
    session.  Every refusal — unknown user, wrong password, locked, revoked or expired
    account — is answered alike (401 :class:`LoginFailedError`, after the same scrypt
    work), so the answer never tells whether a username exists; the audit trail keeps
    the real reason."""
    config = state.config.staff
    failed = LoginFailedError("user name or password is wrong, or the account is not usable")
    # Limited per source before any password work (per account: the lockout below).
    limit = state.config.ops.refusals_per_minute
    await check_peer(
        state.pool, caller=None, operation=LOGIN_OPERATION, remote=remote, exc=failed, limit=limit
    )
    row = await state.pool.fetchrow(
        "SELECT username, password_hash, revoked_at, expires_at, locked_until "
        "FROM staff_accounts WHERE username = $1",
        username,
    )

    async def refuse(reason: str, exc: GatewayError) -> NoReturn:
        answer = await record_refusal(
            state.pool,
            caller=None,
            operation=LOGIN_OPERATION,
            remote=remote,
            exc=exc,
            limit=limit,
        )
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
        raise answer

    if row is None:
        # Same cost as a real check, so timing does not tell which accounts exist.
        await verify_in_thread(password, dummy_hash(config))
        return await refuse("unknown_account", failed)
    now = utcnow()
    if row["locked_until"] is not None and row["locked_until"] > now:
        # Even the right password is refused while locked; the check runs all the same
        # so that a locked account costs what any other attempt costs.
        await verify_in_thread(password, row["password_hash"])
        return await refuse("locked", failed)
    if not await verify_in_thread(password, row["password_hash"]):
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
    return {
        "token": token,
        "username": username,
        "roles": sorted(roles),
        "idle_timeout_seconds": config.idle_timeout.total_seconds(),
        "expires_at": (now + config.session_lifetime).isoformat(),
    }


async def log_out(request: web.Request, session: StaffSession) -> None:
    """End the session of ``request`` now (audited in the same transaction)."""
    state = request.config_dict[GATEWAY_STATE]
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE staff_sessions SET ended_at = now(), end_reason = 'logout' "
            "WHERE token_sha256 = $1 AND ended_at IS NULL",
            session.token_sha256,
        )
        await audit_staff(request, "staff.logout", conn=conn)
    log.info("staff_logged_out", actor=session.username)
