"""The gateway server: one agency's 中間サーバー.

Two faces on one aiohttp application:

* ``/internal/v1/...`` for the agency's core systems (token-authenticated,
  per-operation grants): register people, store the replica, submit queries,
  collect results, read provision records;
* ``/network/v1/messages`` for the hub: provision requests with permits,
  answers to our own queries, refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    AcquisitionRequest,
    AcquisitionResponse,
    CodeRequest,
    CodeResponse,
    Envelope,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    QueryRefusal,
    QueryRequest,
    decode_message,
    encode_message,
    new_message_id,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.codecs.xmlsafe import parse_xml
from chukan.keys import b64e, open_sealed, public_encryption_key, seal
from chukan.permits import (
    AuthorizationList,
    NotAuthorizedError,
    Permit,
    PermitReplayedError,
    PermitsError,
    verify_permit,
    verify_signed_list,
)
from chukan.permits.errors import PermitMalformedError

from . import db
from .config import (
    OP_READ_QUERY,
    OP_READ_RECORDS,
    OP_REGISTER_PERSON,
    OP_SUBMIT_QUERY,
    OP_WRITE_REPLICA,
    GatewayConfig,
    SystemCredential,
)
from .errors import (
    ForbiddenError,
    GatewayError,
    IndividualNumberInvalidError,
    MessageReplayError,
    MessageSignatureError,
    MisaddressedError,
    PersonConflictError,
    PersonUnknownError,
    QueryUnknownError,
    StaleMessageError,
    UnauthenticatedError,
    UpstreamError,
    ValidationError,
)
from .hubclient import HubClient
from .keystore import AgencyKeys, load_or_create_keys
from .web import (
    SIGNATURE_HEADER,
    error_middleware,
    optional_str,
    read_json,
    read_xml,
    require_str,
    signed_xml_response,
    verify_signature,
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
    request["caller"] = system.system_id
    if operation not in system.operations:
        exc = ForbiddenError(f"system {system.system_id} may not call {operation}")
        await _record_refusal(state, request, system.system_id, operation, exc)
        raise exc
    return system


# -- internal API --------------------------------------------------------------------------


def _atena(value: str) -> str:
    if not ATENA_PATTERN.match(value):
        raise ValidationError("団体内統合宛名番号 must be 1 to 15 digits")
    return value


async def register_person(request: web.Request) -> web.Response:
    """符号取得: 宛名番号 + 個人番号 → 符号 from the hub; only 符号 ↔ 宛名番号 is kept."""
    system = await authorize(request, OP_REGISTER_PERSON)
    state = request.app[GATEWAY_STATE]
    data = await read_json(request)
    atena_id = _atena(require_str(data, "atena_id", max_length=15))
    number = data.get("individual_number")
    if not isinstance(number, str) or not is_valid_individual_number(number):
        raise IndividualNumberInvalidError("個人番号 must be 12 digits with a valid check digit")
    del data  # the 個人番号 goes no further than the hub request below
    reply = await state.hub.send(AcquisitionRequest(number))
    del number
    if reply.status != 200:
        raise _hub_refusal(reply.error(), reply.status)
    acquisition = state.hub.open_reply(reply).body
    if not isinstance(acquisition, AcquisitionResponse):
        raise UpstreamError("hub answered with an unexpected message")
    reply = await state.hub.send(CodeRequest(acquisition.acquisition_number))
    if reply.status != 200:
        raise _hub_refusal(reply.error(), reply.status)
    code_body = state.hub.open_reply(reply).body
    if not isinstance(code_body, CodeResponse):
        raise UpstreamError("hub answered with an unexpected message")
    person_code = code_body.person_code
    async with state.pool.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(
            "SELECT atena_id, person_code FROM persons WHERE atena_id = $1 OR person_code = $2",
            atena_id,
            person_code,
        )
        if existing is not None:
            if existing["atena_id"] == atena_id and existing["person_code"] == person_code:
                return web.json_response({"atena_id": atena_id, "status": "already_registered"})
            raise PersonConflictError(
                "this 宛名番号 or this person is already registered with another binding"
            )
        await conn.execute(
            "INSERT INTO persons (atena_id, person_code) VALUES ($1, $2)", atena_id, person_code
        )
    log.info("person_registered", caller=system.system_id)
    return web.json_response({"atena_id": atena_id, "status": "registered"}, status=201)


def _hub_refusal(error: tuple[str, str], status: int) -> GatewayError:
    code, message = error
    exc = GatewayError(f"hub refused: {message}")
    exc.code = code  # type: ignore[misc]  # carry the hub's stable code through
    exc.status = status if 400 <= status < 500 else 502  # type: ignore[misc]
    return exc


async def store_item(request: web.Request) -> web.Response:
    """副本: a new version of one 特定個人情報名 for one person (safe XML only)."""
    system = await authorize(request, OP_WRITE_REPLICA)
    state = request.app[GATEWAY_STATE]
    atena_id = _atena(request.match_info["atena_id"])
    item_code = request.match_info["item_code"]
    if not ITEM_CODE_PATTERN.match(item_code):
        raise ValidationError("特定個人情報名コード must be TM followed by 14 digits")
    manual_review = request.query.get("manual_review", "false")
    if manual_review not in ("true", "false"):
        raise ValidationError("manual_review must be true or false")
    content = await read_xml(request, limit=MAX_ITEM_BYTES)
    parse_xml(content)  # refuses DTDs, entities, oversize and deep documents before storing
    digest = hashlib.sha256(content).hexdigest()
    async with state.pool.acquire() as conn, conn.transaction():
        person = await conn.fetchval(
            "SELECT atena_id FROM persons WHERE atena_id = $1 FOR UPDATE", atena_id
        )
        if person is None:
            raise PersonUnknownError("no person with this 宛名番号 is registered")
        previous = await conn.fetchval(
            "UPDATE replica_items SET valid_to = now() "
            "WHERE atena_id = $1 AND item_code = $2 AND valid_to IS NULL RETURNING version",
            atena_id,
            item_code,
        )
        version = (previous or 0) + 1
        await conn.execute(
            "INSERT INTO replica_items (atena_id, item_code, version, content, digest, "
            "manual_review, stored_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            atena_id,
            item_code,
            version,
            content,
            digest,
            manual_review == "true",
            system.system_id,
        )
    log.info("replica_item_stored", item_code=item_code, version=version, caller=system.system_id)
    return web.json_response(
        {"atena_id": atena_id, "item_code": item_code, "version": version, "digest": digest},
        status=201,
    )


async def submit_query(request: web.Request) -> web.Response:
    """情報照会: accepted at once with a query id; sent to the hub in the background."""
    system = await authorize(request, OP_SUBMIT_QUERY)
    state = request.app[GATEWAY_STATE]
    data = await read_json(request)
    atena_id = _atena(require_str(data, "atena_id", max_length=15))
    procedure = require_str(data, "procedure_code", max_length=16)
    item_code = require_str(data, "item_code", max_length=16)
    provider = require_str(data, "provider", max_length=16)
    if not PROCEDURE_CODE_PATTERN.match(procedure):
        raise ValidationError("事務手続きコード must be JT followed by 14 digits")
    if not ITEM_CODE_PATTERN.match(item_code):
        raise ValidationError("特定個人情報名コード must be TM followed by 14 digits")
    if not AGENCY_PATTERN.match(provider):
        raise ValidationError("provider must be an agency code of 6 or 16 digits")
    reference = optional_str(data, "reference_date", max_length=10)
    try:
        reference_date = dt.date.fromisoformat(reference) if reference else None
    except ValueError:
        raise ValidationError("reference_date must be YYYY-MM-DD") from None
    person_code = await state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", atena_id
    )
    if person_code is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    now = utcnow()
    authorization = _current_list(state)
    row = authorization.find(state.config.agency_code, provider, procedure, item_code, now.date())
    query_id = new_message_id()
    status, reason = ("queued", None) if row is not None else ("refused", "not_authorized")
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO queries (query_id, atena_id, provider, business_code, procedure_code,
                   item_code, legal_basis, reference_date, status, reason_code, submitted_by,
                   expires_at, answered_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                       CASE WHEN $9 = 'refused' THEN now() END)""",
            query_id,
            atena_id,
            provider,
            row.business_code if row else "JM00000000000000",
            procedure,
            item_code,
            row.legal_basis if row else None,
            reference_date,
            status,
            reason,
            system.system_id,
            now + state.config.timing.result_ttl,
        )
        if row is None:
            await _insert_requester_record(conn, state, query_id, "refused", reason)
    if row is None:
        log.info("query_refused_locally", provider=provider, item_code=item_code)
        exc = NotAuthorizedError(
            "the authorization list has no row for this requester, provider, procedure and item"
        )
        raise exc
    state.spawn(_send_query(state, query_id), name=f"send-{query_id}")
    log.info("query_submitted", query_id=query_id, provider=provider, caller=system.system_id)
    return web.json_response({"query_id": query_id, "status": "queued"}, status=202)


def _current_list(state: GatewayState) -> AuthorizationList:
    if state.authorization_list is None:
        raise UpstreamError(f"no valid authorization list: {state.list_error}")
    return state.authorization_list


async def _insert_requester_record(
    conn: db.Conn,
    state: GatewayState,
    query_id: str,
    outcome: str,
    reason: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
               business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
               provided_at, outcome, reason_code)
           SELECT 'requester', q.query_id, q.permit_id, $2, q.provider, q.business_code,
                  q.procedure_code, q.item_code, q.legal_basis, q.atena_id, q.created_at,
                  q.answered_at, $3, $4
           FROM queries q WHERE q.query_id = $1
           ON CONFLICT (role, query_id) DO NOTHING""",
        query_id,
        state.config.agency_code,
        outcome,
        reason,
    )


async def _send_query(state: GatewayState, query_id: str) -> None:
    """Send a queued query to the hub, retrying with backoff while the hub is unreachable."""
    timing = state.config.timing
    for attempt in range(1, timing.send_attempts + 1):
        row = await state.pool.fetchrow(
            "SELECT q.*, p.person_code FROM queries q JOIN persons p USING (atena_id) "
            "WHERE q.query_id = $1",
            query_id,
        )
        if row is None or row["status"] != "queued":
            return
        body = QueryRequest(
            query_id=query_id,
            requester_person_code=row["person_code"],
            provider=row["provider"],
            business_code=row["business_code"],
            procedure_code=row["procedure_code"],
            item_code=row["item_code"],
            reference_date=row["reference_date"],
        )
        await state.pool.execute(
            "UPDATE queries SET attempts = attempts + 1 WHERE query_id = $1", query_id
        )
        try:
            reply = await state.hub.send(body)
        except UpstreamError:
            log.info("query_send_retry", query_id=query_id, attempt=attempt)
            await asyncio.sleep(timing.send_backoff * 2 ** (attempt - 1))
            continue
        if reply.status == 202:
            permit_id = json.loads(reply.body).get("permit_id")
            await state.pool.execute(
                "UPDATE queries SET status = 'sent', sent_at = now(), "
                "permit_id = COALESCE(permit_id, $2) WHERE query_id = $1 AND status = 'queued'",
                query_id,
                permit_id,
            )
            log.info("query_sent", query_id=query_id, permit_id=permit_id)
            return
        if 400 <= reply.status < 500:
            code, message = reply.error()
            await _conclude_refused(state, query_id, code, message)
            return
        await asyncio.sleep(timing.send_backoff * 2 ** (attempt - 1))
    await _conclude_refused(
        state, query_id, "hub_unreachable", "the hub could not be reached", status="failed"
    )


async def _conclude_refused(
    state: GatewayState,
    query_id: str,
    code: str,
    message: str,
    *,
    status: str = "refused",
    permit_id: str | None = None,
) -> None:
    async with state.pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            """UPDATE queries SET status = $2, reason_code = $3, reason_message = $4,
                   answered_at = now(), permit_id = COALESCE(permit_id, $5)
               WHERE query_id = $1 AND status IN ('queued', 'sent') RETURNING 1""",
            query_id,
            status,
            code,
            message[:500],
            permit_id,
        )
        if updated:
            await _insert_requester_record(conn, state, query_id, "refused", code)
    state.notify(query_id)
    log.info("query_refused", query_id=query_id, code=code)


def _query_json(row: asyncpg.Record) -> dict[str, Any]:
    result = row["result"]
    return {
        "query_id": row["query_id"],
        "status": {"queued": "pending", "sent": "pending"}.get(row["status"], row["status"]),
        "state": row["status"],
        "provider": row["provider"],
        "procedure_code": row["procedure_code"],
        "item_code": row["item_code"],
        "permit_id": row["permit_id"],
        "reason_code": row["reason_code"],
        "reason_message": row["reason_message"],
        "submitted_at": row["created_at"].isoformat(),
        "answered_at": row["answered_at"].isoformat() if row["answered_at"] else None,
        "result": result.decode("utf-8") if result is not None else None,
    }


async def get_query(request: web.Request) -> web.Response:
    """Result of a query; ``?wait=N`` long-polls up to N seconds for a final state."""
    system = await authorize(request, OP_READ_QUERY)
    state = request.app[GATEWAY_STATE]
    query_id = request.match_info["query_id"]
    if not QUERY_ID_PATTERN.match(query_id):
        raise ValidationError("malformed query id")
    try:
        wait = min(float(request.query.get("wait", "0")), state.config.timing.max_wait)
    except ValueError:
        raise ValidationError("wait must be a number of seconds") from None
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        row = await state.pool.fetchrow(
            "SELECT * FROM queries WHERE query_id = $1 AND submitted_by = $2",
            query_id,
            system.system_id,
        )
        if row is None:
            raise QueryUnknownError("no query with this id was submitted by this system")
        remaining = deadline - time.monotonic()
        if row["status"] not in ("queued", "sent") or remaining <= 0:
            return web.json_response(_query_json(row))
        event = state.waiters.setdefault(query_id, asyncio.Event())
        try:
            # Also poll: another gateway process may have received the answer.
            await asyncio.wait_for(event.wait(), timeout=min(remaining, 0.25))
        except TimeoutError:
            pass
        finally:
            state.waiters.pop(query_id, None)


async def list_records(request: web.Request) -> web.Response:
    """情報提供等記録 of this agency, optionally for one person or one query."""
    await authorize(request, OP_READ_RECORDS)
    state = request.app[GATEWAY_STATE]
    atena_id = request.query.get("atena_id")
    query_id = request.query.get("query_id")
    conditions: list[str] = []
    args: list[Any] = []
    if atena_id is not None:
        args.append(_atena(atena_id))
        conditions.append(f"atena_id = ${len(args)}")
    if query_id is not None:
        args.append(query_id)
        conditions.append(f"query_id = ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await state.pool.fetch(
        f"SELECT * FROM provision_records {where} ORDER BY id LIMIT 1000",  # noqa: S608 -- fixed fragments, values are parameters
        *args,
    )
    return web.json_response(
        {
            "records": [
                {
                    k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v)
                    for k, v in dict(r).items()
                }
                for r in rows
            ]
        }
    )


async def health(request: web.Request) -> web.Response:
    state = request.app[GATEWAY_STATE]
    return web.json_response(
        {
            "status": "ok",
            "agency": state.config.agency_code,
            "authorization_list": (
                {"version": state.authorization_list.version, "error": None}
                if state.authorization_list is not None
                else {"version": None, "error": state.list_error}
            ),
        }
    )


# -- network API ---------------------------------------------------------------------------


async def receive_message(request: web.Request) -> web.Response:
    state = request.app[GATEWAY_STATE]
    raw = await read_xml(request)
    envelope = decode_message(raw)
    header = envelope.header
    if header.receiver != state.config.agency_code:
        raise MisaddressedError("message is not addressed to this agency")
    signature = request.headers.get(SIGNATURE_HEADER)
    if header.sender == HUB:
        verify_signature(signature, raw, state.hub.trusted_hub)
    else:
        keys = await state.hub.peer_signing_keys(header.sender)
        try:
            verify_signature(signature, raw, keys)
        except MessageSignatureError:
            keys = await state.hub.peer_signing_keys(header.sender, refresh=True)
            verify_signature(signature, raw, keys)
    if abs(utcnow() - header.created) > state.config.timing.message_skew:
        raise StaleMessageError("message timestamp is outside the accepted window")
    fresh = await state.pool.fetchval(
        "INSERT INTO seen_messages (message_id, sender) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        header.message_id,
        header.sender,
    )
    if fresh is None:
        raise MessageReplayError("message id already seen")
    body = envelope.body
    if isinstance(body, ProvisionRequest) and header.sender == HUB:
        return await _provide(state, envelope, body)
    if isinstance(body, ProvisionAnswer) and header.sender != HUB:
        return await _take_answer(state, envelope, body)
    if isinstance(body, QueryRefusal) and header.sender == HUB:
        await _conclude_refused(
            state, body.query_id, body.reason_code, body.message, permit_id=body.permit_id
        )
        return web.json_response({"query_id": body.query_id, "accepted": True})
    raise MisaddressedError(f"{header.message_type} from {header.sender} is not accepted here")


async def _record_provision(
    conn: db.Executor,
    state: GatewayState,
    body: ProvisionRequest,
    *,
    permit_id: str | None,
    atena_id: str | None,
    requested_at: dt.datetime,
    outcome: str,
    reason: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
               business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
               provided_at, outcome, reason_code)
           VALUES ('provider', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                   CASE WHEN $11 = 'provided' THEN now() END, $11, $12)
           ON CONFLICT (role, query_id) DO NOTHING""",
        body.query_id,
        permit_id,
        body.requester,
        state.config.agency_code,
        body.business_code,
        body.procedure_code,
        body.item_code,
        body.legal_basis,
        atena_id,
        requested_at,
        outcome,
        reason,
    )


def _check_permit(state: GatewayState, envelope: Envelope, body: ProvisionRequest) -> Permit:
    if envelope.header.permit is None:
        raise PermitMalformedError("provision request carries no permit")
    permit = verify_permit(
        envelope.header.permit,
        state.hub.trusted_hub,
        audience=state.config.agency_code,
        now=utcnow(),
        body=envelope.body_c14n,
        skew=state.config.timing.permit_skew,
    )
    if (
        permit.query_id != body.query_id
        or permit.requester != body.requester
        or permit.provider_person_code != body.provider_person_code
        or permit.procedure_code != body.procedure_code
        or permit.item_code != body.item_code
        or permit.business_code != body.business_code
    ):
        raise PermitMalformedError("permit does not match the request it travels with")
    return permit


async def _provide(state: GatewayState, envelope: Envelope, body: ProvisionRequest) -> web.Response:
    """情報提供: verify the permit, find the person and item, seal for the requester."""
    requested_at = utcnow()
    try:
        permit = _check_permit(state, envelope, body)
    except PermitsError as exc:
        await _record_provision(
            state.pool,
            state,
            body,
            permit_id=None,
            atena_id=None,
            requested_at=requested_at,
            outcome="refused",
            reason=exc.code,
        )
        log.warning("permit_refused", query_id=body.query_id, code=exc.code)
        raise
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """WITH used AS (
                   INSERT INTO used_permits (permit_id, query_id, expires_at)
                   VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1)
               SELECT (SELECT count(*) FROM used) AS fresh, p.atena_id, r.content,
                      r.manual_review, r.version
               FROM (SELECT 1) AS one
               LEFT JOIN persons p ON p.person_code = $4
               LEFT JOIN LATERAL (
                   SELECT content, manual_review, version FROM replica_items
                   WHERE atena_id = p.atena_id AND item_code = $5 AND valid_to IS NULL
                   ORDER BY version DESC LIMIT 1) r ON true""",
            permit.permit_id,
            permit.query_id,
            permit.expires_at,
            body.provider_person_code,
            body.item_code,
        )
        assert row is not None
        if not row["fresh"]:
            raise PermitReplayedError("permit was already used")
        atena_id = row["atena_id"]
        if atena_id is None:
            outcome, reason, payload = "refused", "person_unknown", None
        elif row["content"] is None:
            outcome, reason, payload = "refused", "item_not_found", None
        else:
            aad = answer_aad(
                body.query_id, permit.permit_id, state.config.agency_code, body.requester
            )
            recipient = public_encryption_key(body.requester_key_id, body.requester_key)
            outcome, reason, payload = "provided", None, seal(recipient, row["content"], aad)
        await _record_provision(
            conn,
            state,
            body,
            permit_id=permit.permit_id,
            atena_id=atena_id,
            requested_at=requested_at,
            outcome=outcome,
            reason=reason,
        )
    answer = ProvisionAnswer(
        query_id=body.query_id,
        permit_id=permit.permit_id,
        outcome="provided" if outcome == "provided" else "refused",
        reason_code=reason,
        payload=payload,
    )
    header = Header(
        new_message_id(), "ProvisionAnswer", state.config.agency_code, body.requester, utcnow()
    )
    log.info("provision_answered", query_id=body.query_id, outcome=outcome, reason=reason)
    return signed_xml_response(state.keys.signing, encode_message(header, answer))


async def _take_answer(
    state: GatewayState, envelope: Envelope, body: ProvisionAnswer
) -> web.Response:
    """An answer to one of our queries: decrypt, keep until collected, record."""
    provider = envelope.header.sender
    row = await state.pool.fetchrow(
        "SELECT provider, status, permit_id FROM queries WHERE query_id = $1", body.query_id
    )
    if row is None or row["provider"] != provider:
        raise QueryUnknownError("no query of ours matches this answer")
    if row["status"] not in ("queued", "sent"):
        raise MessageReplayError("the query was already concluded")
    if row["permit_id"] is not None and row["permit_id"] != body.permit_id:
        raise ForbiddenError("answer names another permit than the query's")
    if body.outcome == "refused" or body.payload is None:
        await _conclude_refused(
            state,
            body.query_id,
            body.reason_code or "refused",
            "the provider refused",
            permit_id=body.permit_id,
        )
        return web.json_response({"query_id": body.query_id, "accepted": True})
    aad = answer_aad(body.query_id, body.permit_id, provider, state.config.agency_code)
    plaintext = open_sealed(
        {state.keys.encryption.key_id: state.keys.encryption}, body.payload, aad
    )
    parse_xml(plaintext)  # what we hand to core systems must be safe XML too
    async with state.pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            """UPDATE queries SET status = 'answered', result = $2, answered_at = now(),
                   permit_id = $3, sent_at = COALESCE(sent_at, now())
               WHERE query_id = $1 AND status IN ('queued', 'sent') RETURNING 1""",
            body.query_id,
            plaintext,
            body.permit_id,
        )
        if not updated:
            raise MessageReplayError("the query was already concluded")
        await _insert_requester_record(conn, state, body.query_id, "provided", None)
    state.notify(body.query_id)
    log.info("query_answered", query_id=body.query_id)
    return web.json_response({"query_id": body.query_id, "accepted": True})


# -- lifecycle -----------------------------------------------------------------------------


async def refresh_authorization_list(state: GatewayState) -> None:
    """Fetch and verify the hub-signed list; keep the last good one only while it is valid."""
    try:
        signed = await state.hub.get("/network/v1/authorization-list")
        state.authorization_list = verify_signed_list(signed, state.hub.trusted_hub, now=utcnow())
        state.list_error = None
    except (GatewayError, PermitsError) as exc:
        state.list_error = getattr(exc, "code", type(exc).__name__)
        current = state.authorization_list
        if current is not None and current.expires_at <= utcnow():
            state.authorization_list = None
        log.warning("authorization_list_unavailable", code=state.list_error)


async def _list_refresher(state: GatewayState) -> None:
    while True:
        await asyncio.sleep(state.config.timing.list_refresh)
        await refresh_authorization_list(state)


async def _resume_queued(state: GatewayState) -> None:
    """After a restart, queries accepted but not yet sent are sent now."""
    rows = await state.pool.fetch("SELECT query_id FROM queries WHERE status = 'queued'")
    for row in rows:
        state.spawn(_send_query(state, row["query_id"]), name=f"resend-{row['query_id']}")


def create_gateway_app(config: GatewayConfig, endpoint: str) -> web.Application:
    """The application; ``endpoint`` is the URL the hub uses to reach this gateway."""
    app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(config.database_url)
        async with pool.acquire() as conn:
            await db.migrate(conn, db.load_migrations("chukan.gateway"))
        keys = await asyncio.to_thread(
            load_or_create_keys, config.key_dir, config.agency_code, config.key_passphrase
        )
        session = aiohttp.ClientSession()
        hub = HubClient(
            config.hub_url,
            config.agency_code,
            keys.signing,
            config.hub_key,
            session,
            config.timing.http_timeout,
        )
        state = GatewayState(config=config, endpoint=endpoint, pool=pool, keys=keys, hub=hub)
        app[GATEWAY_STATE] = state
        await hub.enrol(
            config.enrolment_token,
            {
                "code": config.agency_code,
                "name": config.agency_name,
                "endpoint": endpoint,
                "signing_key": {
                    "key_id": keys.signing.key_id,
                    "public": b64e(keys.signing.public.raw),
                },
                "encryption_key": {
                    "key_id": keys.encryption.key_id,
                    "public": b64e(keys.encryption.public.raw),
                },
            },
        )
        await refresh_authorization_list(state)
        refresher = asyncio.create_task(_list_refresher(state), name="list-refresher")
        await _resume_queued(state)
        log.info("gateway_started", agency=config.agency_code, endpoint=endpoint)
        yield
        refresher.cancel()
        for task in list(state.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(refresher, *state.tasks, return_exceptions=True)
        await session.close()
        await pool.close()
        log.info("gateway_stopped", agency=config.agency_code)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", health)
    app.router.add_post("/internal/v1/persons", register_person)
    app.router.add_put("/internal/v1/persons/{atena_id}/items/{item_code}", store_item)
    app.router.add_post("/internal/v1/queries", submit_query)
    app.router.add_get("/internal/v1/queries/{query_id}", get_query)
    app.router.add_get("/internal/v1/records", list_records)
    app.router.add_post("/network/v1/messages", receive_message)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before building the app so the endpoint (with an ephemeral port) is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
