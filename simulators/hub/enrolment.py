"""Agencies' enrolment tokens: each agency enrols with its own, never with the admin token.

The hub operator onboards an agency by issuing it a token
(``POST /admin/v1/agencies/{code}/enrolment-token``) and handing it over out of
band; the agency's gateway presents it (``Authorization: Bearer …``) each time
it enrols or publishes new keys (``POST /admin/v1/agencies``).  The hub keeps
only the token's SHA-256 (a token is 32 random bytes, so no salt or slow hash is
needed), compares in constant time, and accepts a token only for the agency it
was issued to, so one agency's operator cannot rewrite another's registry entry,
and nobody holding an agency's token can administer the hub.

Issuing again rotates (the old token stops working at once); ``DELETE`` revokes.
Rotated and revoked tokens are kept (digest only) so that presenting one is
answered ``enrolment_token_revoked`` rather than ``enrolment_token_invalid``.
Every issue, rotation, revocation, enrolment and refusal is a row of
``enrolment_events`` (append-only) and a structlog event; no token is ever logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError, ValidationError
from chukan.gateway.core.web import read_json
from chukan.simulators.errors import (
    EnrolmentTokenInvalidError,
    EnrolmentTokenOtherAgencyError,
    EnrolmentTokenRequiredError,
    EnrolmentTokenRevokedError,
    EnrolmentTokenUnknownError,
    EnrolmentTokenWeakError,
)
from chukan.simulators.hub import auth
from chukan.simulators.hub.state import HUB_STATE, HubState

log = structlog.get_logger("chukan.hub")

#: Generated tokens carry 32 random bytes; an operator's own must be at least this long.
MIN_TOKEN_CHARS: Final = 32
MAX_TOKEN_CHARS: Final = 256
#: RFC 6750 ``b64token``: what an ``Authorization: Bearer`` header carries unchanged.
TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: How many recent events the status answer shows.
STATUS_EVENTS: Final = 50


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_agency_code(code: str) -> str:
    if not code.isdigit() or len(code) not in (6, 16):
        raise ValidationError("agency code must be 6 or 16 digits")
    return code


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def record_event(
    conn: db.Executor,
    code: str,
    kind: str,
    *,
    caller: str | None,
    reason: str | None = None,
    endpoint: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO enrolment_events (agency_code, kind, reason_code, caller, endpoint) "
        "VALUES ($1, $2, $3, $4, $5)",
        code,
        kind,
        reason,
        caller,
        endpoint,
    )


async def refuse(
    state: HubState,
    request: web.Request,
    code: str,
    exc: GatewayError,
    endpoint: str | None = None,
) -> GatewayError:
    """Record a refused enrolment (event row and log line), then hand back ``exc`` to raise."""
    caller = auth.caller_label(request)
    await record_event(
        state.pool, code, "refused", caller=caller, reason=exc.code, endpoint=endpoint
    )
    log.warning("hub_enrolment_refused", agency=code, code=exc.code, caller=caller)
    return exc


async def _explain(state: HubState, supplied: str, digest: bytes, code: str) -> GatewayError:
    """Why ``supplied`` does not enrol ``code``: the clearest true answer, without the token."""
    if hmac.compare_digest(supplied.encode(), state.config.admin_token.encode()):
        return EnrolmentTokenInvalidError(
            "the administrator token does not enrol agencies: enrol with the agency's own "
            f"enrolment token (the operator issues it: POST /admin/v1/agencies/{code}"
            "/enrolment-token)"
        )
    row = await state.pool.fetchrow(
        "SELECT agency_code, revoked_reason FROM enrolment_tokens WHERE token_digest = $1",
        digest,
    )
    if row is None:
        return EnrolmentTokenInvalidError(
            f"this is not an enrolment token the hub issued for agency {code}"
        )
    if row["agency_code"] != code:
        return EnrolmentTokenOtherAgencyError(
            f"this enrolment token was issued for another agency; it cannot enrol {code}"
        )
    return EnrolmentTokenRevokedError(
        f"the enrolment token of agency {code} was {row['revoked_reason']}; "
        "ask the hub operator for the current one"
    )


async def require_enrolment_token(request: web.Request, state: HubState, code: str) -> bytes:
    """The caller holds agency ``code``'s live enrolment token; returns its digest.

    The digest of the token issued for ``code`` is compared in constant time.
    Only a refusal looks further (admin token? another agency's? revoked?) to
    say which, and is recorded.
    """
    supplied = bearer_token(request)
    if supplied is None:
        raise await refuse(
            state,
            request,
            code,
            EnrolmentTokenRequiredError(
                "enrolment needs the agency's enrolment token (Authorization: Bearer …), "
                "issued by the hub operator"
            ),
        )
    digest = token_digest(supplied)
    live = await state.pool.fetchval(
        "SELECT token_digest FROM enrolment_tokens WHERE agency_code = $1 AND revoked_at IS NULL",
        code,
    )
    if live is not None and hmac.compare_digest(bytes(live), digest):
        return digest
    raise await refuse(state, request, code, await _explain(state, supplied, digest, code))


async def mark_enrolled(
    conn: db.Executor, request: web.Request, code: str, digest: bytes, endpoint: str
) -> None:
    """In the enrolment's transaction: the token is still live (not revoked meanwhile)."""
    used = await conn.fetchval(
        "UPDATE enrolment_tokens SET last_used_at = now() "
        "WHERE token_digest = $1 AND agency_code = $2 AND revoked_at IS NULL RETURNING 1",
        digest,
        code,
    )
    if used is None:
        raise EnrolmentTokenRevokedError(
            f"the enrolment token of agency {code} was revoked while it enrolled"
        )
    caller = auth.caller_label(request)
    await record_event(conn, code, "enrolled", caller=caller, endpoint=endpoint)
    log.info("hub_agency_enrolled", agency=code, endpoint=endpoint, caller=caller)


async def _chosen_token(request: web.Request) -> str | None:
    """An operator may set the token (e.g. one already handed over) instead of getting one."""
    if not request.can_read_body:
        return None
    data = await read_json(request)
    token = data.get("token")
    if token is None:
        return None
    if (
        not isinstance(token, str)
        or not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS
        or TOKEN_PATTERN.fullmatch(token) is None
    ):
        raise EnrolmentTokenWeakError(
            f"an enrolment token must be {MIN_TOKEN_CHARS}–{MAX_TOKEN_CHARS} characters of "
            "A-Z a-z 0-9 - . _ ~ + / (a generated secret; omit it to have the hub generate one)"
        )
    return token


def _require_operator(request: web.Request) -> str:
    auth.require_admin(request)
    auth.require_operator(request)
    return check_agency_code(request.match_info["code"])


async def issue_token(request: web.Request) -> web.Response:
    """``POST /admin/v1/agencies/{code}/enrolment-token``: a new token, shown this once.

    A live token of the agency is replaced (rotation).  The agency need not be
    registered yet: this is how it is onboarded.
    """
    code = _require_operator(request)
    state = request.config_dict[HUB_STATE]
    token = await _chosen_token(request) or secrets.token_urlsafe(32)
    if hmac.compare_digest(token.encode(), state.config.admin_token.encode()):
        raise EnrolmentTokenWeakError("the administrator token cannot be an enrolment token")
    caller = auth.caller_label(request)
    async with state.pool.acquire() as conn, conn.transaction():
        replaced = await conn.fetchval(
            "UPDATE enrolment_tokens SET revoked_at = now(), revoked_reason = 'rotated' "
            "WHERE agency_code = $1 AND revoked_at IS NULL RETURNING 1",
            code,
        )
        issued_at = await conn.fetchval(
            "INSERT INTO enrolment_tokens (token_digest, agency_code, issued_by) "
            "VALUES ($1, $2, $3) ON CONFLICT (token_digest) DO NOTHING RETURNING issued_at",
            token_digest(token),
            code,
            caller,
        )
        if issued_at is None:  # an operator re-using a token the hub has seen
            raise EnrolmentTokenWeakError("this token was issued before; choose a new one")
        kind = "token_issued" if replaced is None else "token_rotated"
        await record_event(conn, code, kind, caller=caller)
    log.info("hub_enrolment_token_issued", agency=code, rotated=replaced is not None, caller=caller)
    response = web.json_response(
        {
            "agency": code,
            "token": token,
            "issued_at": issued_at.isoformat(),
            "replaced": replaced is not None,
        },
        status=201,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def revoke_token(request: web.Request) -> web.Response:
    """``DELETE /admin/v1/agencies/{code}/enrolment-token``: the agency can no longer enrol.

    Its registry entry stays (its messages still verify); it cannot change its
    endpoint or keys until the operator issues a new token.
    """
    code = _require_operator(request)
    state = request.config_dict[HUB_STATE]
    caller = auth.caller_label(request)
    async with state.pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            "UPDATE enrolment_tokens SET revoked_at = now(), revoked_reason = 'revoked' "
            "WHERE agency_code = $1 AND revoked_at IS NULL RETURNING 1",
            code,
        )
        if revoked is None:
            raise EnrolmentTokenUnknownError(f"agency {code} holds no live enrolment token")
        await record_event(conn, code, "token_revoked", caller=caller)
    log.info("hub_enrolment_token_revoked", agency=code, caller=caller)
    return web.json_response({"agency": code, "revoked": True})


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def token_status(request: web.Request) -> web.Response:
    """``GET /admin/v1/agencies/{code}/enrolment-token``: dates and recent events, no secret."""
    code = _require_operator(request)
    state = request.config_dict[HUB_STATE]
    live = await state.pool.fetchrow(
        "SELECT issued_at, issued_by, last_used_at FROM enrolment_tokens "
        "WHERE agency_code = $1 AND revoked_at IS NULL",
        code,
    )
    events = await state.pool.fetch(
        "SELECT kind, reason_code, caller, endpoint, recorded_at FROM enrolment_events "
        "WHERE agency_code = $1 ORDER BY id DESC LIMIT $2",
        code,
        STATUS_EVENTS,
    )
    token: dict[str, Any] | None = None
    if live is not None:
        token = {
            "issued_at": _iso(live["issued_at"]),
            "issued_by": live["issued_by"],
            "last_used_at": _iso(live["last_used_at"]),
        }
    return web.json_response(
        {
            "agency": code,
            "token": token,
            "events": [
                {
                    "kind": e["kind"],
                    "reason_code": e["reason_code"],
                    "caller": e["caller"],
                    "endpoint": e["endpoint"],
                    "recorded_at": _iso(e["recorded_at"]),
                }
                for e in reversed(events)
            ],
        }
    )
