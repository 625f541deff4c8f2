"""The hub simulator: 情報提供ネットワークシステム, with J-LIS's 取得番号 role.

A real aiohttp server.  It keeps the agency registry (endpoints and public
keys), issues 符号 (a different random one per agency and person), checks
every query against the authorization list, issues signed permits, routes
requests and answers through a durable outbox, and records everything it
routed.  It never holds a key that opens a payload: answers are sealed by the
provider for the requester and pass through as ciphertext.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
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
    ConclusionRequest,
    Envelope,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    QueryRefusal,
    QueryRequest,
    decode_message,
    encode_body_c14n,
    encode_message,
    new_message_id,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    AgencyUnknownError,
    ConclusionConflictError,
    ForbiddenError,
    GatewayError,
    IndividualNumberInvalidError,
    MessageReplayError,
    MisaddressedError,
    PersonNotAtProviderError,
    PersonUnknownError,
    QueryUnknownError,
    StaleMessageError,
    UnauthenticatedError,
    ValidationError,
)
from chukan.gateway.core.identities import agency_host
from chukan.gateway.core.keystore import AgencyKeys, load_or_create_keys
from chukan.gateway.core.retry import jittered_backoff
from chukan.gateway.core.tls import TlsSettings, client_session
from chukan.gateway.core.web import (
    SIGNATURE_HEADER,
    error_middleware,
    error_response,
    read_json,
    read_xml,
    require_str,
    signature_header,
    signed_xml_response,
    verify_signature,
)
from chukan.keys import (
    PublicSigningKey,
    b64e,
)
from chukan.permits import (
    AuthorizationList,
    NotAuthorizedError,
    Permit,
    body_digest,
    encode_permit,
    new_permit_id,
)
from chukan.simulators import hubauth, hubkeys, hublist

log = structlog.get_logger("chukan.hub")

DEFAULT_PERMIT_LIFETIME: Final = dt.timedelta(minutes=5)
DEFAULT_ACQUISITION_LIFETIME: Final = dt.timedelta(minutes=5)
DEFAULT_MESSAGE_SKEW: Final = dt.timedelta(minutes=5)
DEFAULT_LIST_LIFETIME: Final = dt.timedelta(days=1)
DEFAULT_DELIVERY_BACKOFF: Final = 0.5
DEFAULT_DELIVERY_MAX_BACKOFF: Final = 30.0
#: After a permit expires, its provision request is still retried this long, so that a
#: provider that answered just before (and was then cut off) is heard; the providers'
#: answer retention (``Timing.answer_retention``) must be longer.
DEFAULT_DELIVERY_GRACE: Final = dt.timedelta(hours=1)
#: How long a conclusion is offered to its requester (pushed, and kept to be asked for).
DEFAULT_ANSWER_RETENTION: Final = dt.timedelta(days=7)
DEFAULT_DELIVERY_TIMEOUT: Final = 10.0
DELIVERY_LEASE: Final = dt.timedelta(seconds=30)
DELIVERY_BATCH: Final = 64
HUB_OWNER: Final = "hub"
HUB_DATABASE: Final = "chukan_hub"


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything the hub needs; defaults are the constants above."""

    database_url: str
    key_dir: Path
    key_passphrase: bytes
    admin_token: str
    host: str = "127.0.0.1"
    port: int = 0
    permit_lifetime: dt.timedelta = DEFAULT_PERMIT_LIFETIME
    acquisition_lifetime: dt.timedelta = DEFAULT_ACQUISITION_LIFETIME
    message_skew: dt.timedelta = DEFAULT_MESSAGE_SKEW
    list_lifetime: dt.timedelta = DEFAULT_LIST_LIFETIME
    delivery_backoff: float = DEFAULT_DELIVERY_BACKOFF
    delivery_max_backoff: float = DEFAULT_DELIVERY_MAX_BACKOFF
    delivery_grace: dt.timedelta = DEFAULT_DELIVERY_GRACE
    answer_retention: dt.timedelta = DEFAULT_ANSWER_RETENTION
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    authorization_list: AuthorizationList | None = None
    #: Mutual TLS (server certificate, the hub's client certificate, CA); None = plain HTTP.
    tls: TlsSettings | None = None

    def __repr__(self) -> str:  # never print the passphrase or the admin token
        return f"HubConfig(database={self.database_url.rsplit('/', 1)[-1]!r}, port={self.port})"


@dataclass(slots=True)
class Agency:
    code: str
    name: str
    endpoint: str
    signing_keys: dict[str, PublicSigningKey]
    encryption_key_id: str
    encryption_key: bytes


@dataclass
class HubState:
    config: HubConfig
    pool: asyncpg.Pool
    keys: AgencyKeys
    secret: bytes
    authorization_list: AuthorizationList
    signed_list: bytes
    session: aiohttp.ClientSession
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


HUB_STATE: Final = web.AppKey("hub_state", HubState)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- persistence helpers --------------------------------------------------------------


def _load_secret(key_dir: Path) -> bytes:
    """The J-LIS digest secret: generated once, mode 0600, never leaves the hub."""
    path = key_dir / "hub.secret"
    if path.exists():
        return path.read_bytes()
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


async def load_agency(conn: db.Executor, code: str) -> Agency:
    """An agency with its signing keys still valid, in one round trip."""
    row = await conn.fetchrow(
        """SELECT a.code, a.name, a.endpoint, a.encryption_key_id, a.encryption_key,
                  k.ids, k.keys
           FROM agencies a
           LEFT JOIN LATERAL (
               SELECT array_agg(key_id) AS ids, array_agg(public_key) AS keys
               FROM agency_keys
               WHERE agency_code = a.code AND purpose = 'sig'
                 AND (valid_until IS NULL OR valid_until > now())) k ON true
           WHERE a.code = $1""",
        code,
    )
    if row is None:
        raise AgencyUnknownError(f"agency {code} is not registered with the hub")
    ids, keys = row["ids"] or [], row["keys"] or []
    return Agency(
        code=row["code"],
        name=row["name"],
        endpoint=row["endpoint"],
        signing_keys={
            key_id: PublicSigningKey(key_id, raw) for key_id, raw in zip(ids, keys, strict=True)
        },
        encryption_key_id=row["encryption_key_id"],
        encryption_key=row["encryption_key"],
    )


async def _route_log(
    conn: db.Conn,
    *,
    header: Header,
    direction: str,
    body: bytes,
    query_id: str | None,
    permit_id: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO routed_messages
               (message_id, message_type, sender, receiver, query_id, permit_id, direction, body)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        header.message_id,
        header.message_type,
        header.sender,
        header.receiver,
        query_id,
        permit_id,
        direction,
        body,
    )


# -- admin API ------------------------------------------------------------------------


def _require_admin(request: web.Request) -> None:
    state = request.config_dict[HUB_STATE]
    supplied = request.headers.get("Authorization", "")
    expected = f"Bearer {state.config.admin_token}"
    if not supplied:
        raise UnauthenticatedError("an administrator token is required")
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ForbiddenError("the administrator token is not valid")


async def register_agency(request: web.Request) -> web.Response:
    """Enrol an agency (or update its endpoint and keys): operator onboarding."""
    _require_admin(request)
    state = request.config_dict[HUB_STATE]
    data = await read_json(request)
    code = require_str(data, "code", max_length=16)
    if not code.isdigit() or len(code) not in (6, 16):
        raise ValidationError("agency code must be 6 or 16 digits")
    name = require_str(data, "name", max_length=200)
    endpoint = require_str(data, "endpoint", max_length=500)
    if not endpoint.startswith(("http://", "https://")):
        raise ValidationError("endpoint must be an http(s) URL")
    hubauth.require_enrolling(request, code, endpoint)
    sig = data.get("signing_key")
    enc = data.get("encryption_key")
    if not isinstance(sig, dict) or not isinstance(enc, dict):
        raise ValidationError("signing_key and encryption_key are required objects")
    signing = hubkeys.parse_key(code, sig, "sig")
    encryption = hubkeys.parse_key(code, enc, "enc")
    published = hubkeys.parse_published(code, data)
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO agencies (code, name, endpoint, signing_key_id, signing_key,
                                     encryption_key_id, encryption_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (code) DO UPDATE SET
                   name = EXCLUDED.name, endpoint = EXCLUDED.endpoint,
                   signing_key_id = EXCLUDED.signing_key_id, signing_key = EXCLUDED.signing_key,
                   encryption_key_id = EXCLUDED.encryption_key_id,
                   encryption_key = EXCLUDED.encryption_key, updated_at = now()""",
            code,
            name,
            endpoint,
            signing.key_id,
            signing.raw,
            encryption.key_id,
            encryption.raw,
        )
        await hubkeys.store_keys(conn, code, (signing, encryption), published)
    log.info("agency_registered", agency=code, endpoint=endpoint)
    return web.json_response({"code": code, "registered": True}, status=201)


def _agency_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "code": row["code"],
        "name": row["name"],
        "signing_key": {"key_id": row["signing_key_id"], "public": b64e(row["signing_key"])},
        "encryption_key": {
            "key_id": row["encryption_key_id"],
            "public": b64e(row["encryption_key"]),
        },
    }


async def list_agencies(request: web.Request) -> web.Response:
    state = request.config_dict[HUB_STATE]
    rows = await state.pool.fetch("SELECT * FROM agencies ORDER BY code")
    return web.json_response({"agencies": [_agency_json(r) for r in rows]})


async def get_agency(request: web.Request) -> web.Response:
    state = request.config_dict[HUB_STATE]
    row = await state.pool.fetchrow(
        "SELECT * FROM agencies WHERE code = $1", request.match_info["code"]
    )
    if row is None:
        raise AgencyUnknownError("no such agency")
    result = _agency_json(row)
    keys = await state.pool.fetch(
        "SELECT key_id, purpose, public_key, valid_from, valid_until FROM agency_keys "
        "WHERE agency_code = $1 AND (valid_until IS NULL OR valid_until > now()) "
        "ORDER BY published_at",
        row["code"],
    )
    result["keys"] = [
        {
            "key_id": k["key_id"],
            "purpose": k["purpose"],
            "public": b64e(k["public_key"]),
            "valid_from": k["valid_from"].isoformat() if k["valid_from"] else None,
            "valid_until": k["valid_until"].isoformat() if k["valid_until"] else None,
        }
        for k in keys
    ]
    return web.json_response(result)


async def hub_key(request: web.Request) -> web.Response:
    state = request.config_dict[HUB_STATE]
    public = state.keys.signing.public
    return web.json_response({"key_id": public.key_id, "public": b64e(public.raw)})


async def authorization_list(request: web.Request) -> web.Response:
    state = request.config_dict[HUB_STATE]
    return web.Response(body=state.signed_list, content_type="application/xml")


async def list_records(request: web.Request) -> web.Response:
    _require_admin(request)
    hubauth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    rows = await state.pool.fetch("SELECT * FROM hub_records ORDER BY requested_at")
    return web.json_response({"records": [_jsonable(dict(r)) for r in rows]})


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in row.items()
    }


# -- network API ----------------------------------------------------------------------


async def receive_message(request: web.Request) -> web.Response:
    """Every signed envelope from agencies arrives here and is dispatched by type."""
    state = request.config_dict[HUB_STATE]
    raw = await read_xml(request)
    envelope = decode_message(raw)
    header = envelope.header
    hubauth.require_sender(request, header.sender)
    sender = await load_agency(state.pool, header.sender)
    verify_signature(request.headers.get(SIGNATURE_HEADER), raw, sender.signing_keys)
    if abs(utcnow() - header.created) > state.config.message_skew:
        raise StaleMessageError("message timestamp is outside the accepted window")
    body = envelope.body
    if not isinstance(body, ProvisionAnswer) and header.receiver != HUB:
        raise MisaddressedError("message is not addressed to the hub")
    inserted = await state.pool.fetchval(
        "INSERT INTO seen_messages (message_id, sender) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        header.message_id,
        header.sender,
    )
    if inserted is None:
        raise MessageReplayError("message id already seen")
    structlog.contextvars.bind_contextvars(message_type=header.message_type)
    try:
        match body:
            case AcquisitionRequest():
                return await _acquisition(state, envelope, body)
            case CodeRequest():
                return await _code(state, envelope, body)
            case QueryRequest():
                return await _query(state, envelope, body, raw)
            case ProvisionAnswer():
                return await _deferred_answer(state, envelope, body, raw, request)
            case ConclusionRequest():
                return await _conclusion_request(state, envelope, body)
            case _:
                raise MisaddressedError(f"the hub does not accept {header.message_type}")
    finally:
        structlog.contextvars.unbind_contextvars("message_type")


def _digest(secret: bytes, value: str) -> bytes:
    return hmac.new(secret, value.encode("ascii"), hashlib.sha256).digest()


def _reply(state: HubState, receiver: str, body: Any) -> web.Response:
    header = Header(new_message_id(), type(body).__name__, HUB, receiver, utcnow())
    return signed_xml_response(state.keys.signing, encode_message(header, body))


async def _acquisition(
    state: HubState, envelope: Envelope, body: AcquisitionRequest
) -> web.Response:
    """J-LIS role: 個人番号 → single-use 取得番号.  Only an HMAC of the number is kept."""
    if not is_valid_individual_number(body.individual_number):
        raise IndividualNumberInvalidError("個人番号 has a wrong check digit")
    number_digest = _digest(state.secret, body.individual_number)
    token = secrets.token_urlsafe(24)
    expires = utcnow() + state.config.acquisition_lifetime
    async with state.pool.acquire() as conn, conn.transaction():
        person_id = await conn.fetchval(
            """INSERT INTO persons (person_id, number_digest) VALUES ($1, $2)
               ON CONFLICT (number_digest) DO UPDATE SET number_digest = EXCLUDED.number_digest
               RETURNING person_id""",
            uuid.uuid4(),
            number_digest,
        )
        await conn.execute(
            "INSERT INTO acquisition_numbers (number_digest, person_id, agency_code, expires_at) "
            "VALUES ($1, $2, $3, $4)",
            hashlib.sha256(token.encode()).digest(),
            person_id,
            envelope.header.sender,
            expires,
        )
    log.info("acquisition_number_issued", agency=envelope.header.sender)
    return _reply(state, envelope.header.sender, AcquisitionResponse(token, expires))


async def _code(state: HubState, envelope: Envelope, body: CodeRequest) -> web.Response:
    """取得番号 → the caller's 符号 (a new random one the first time)."""
    agency = envelope.header.sender
    async with state.pool.acquire() as conn, conn.transaction():
        person_id = await conn.fetchval(
            """UPDATE acquisition_numbers SET used_at = now()
               WHERE number_digest = $1 AND agency_code = $2 AND used_at IS NULL
                 AND expires_at > now()
               RETURNING person_id""",
            hashlib.sha256(body.acquisition_number.encode()).digest(),
            agency,
        )
        if person_id is None:
            raise ForbiddenError("取得番号 is unknown, used, expired or issued to another agency")
        code = await conn.fetchval(
            """INSERT INTO person_codes (agency_code, person_id, person_code)
               VALUES ($1, $2, $3)
               ON CONFLICT (agency_code, person_id) DO UPDATE SET person_id = EXCLUDED.person_id
               RETURNING person_code""",
            agency,
            person_id,
            secrets.token_urlsafe(18),
        )
    log.info("person_code_issued", agency=agency)
    return _reply(state, agency, CodeResponse(code))


async def _refuse_query(
    state: HubState,
    requester: str,
    body: QueryRequest,
    error: GatewayError | NotAuthorizedError,
) -> None:
    code = error.code
    await state.pool.execute(
        """INSERT INTO hub_record_events (query_id, kind, requester, provider, business_code,
                                          procedure_code, item_code, requester_person_code,
                                          requested_at, answered_at, outcome, reason_code,
                                          non_disclosure)
           VALUES ($1, 'opened', $2, $3, $4, $5, $6, $7, now(), now(), 'refused', $8, $9)
           ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING""",
        body.query_id,
        requester,
        body.provider,
        body.business_code,
        body.procedure_code,
        body.item_code,
        body.requester_person_code,
        code,
        body.non_disclosure,
    )
    log.info("query_refused", requester=requester, provider=body.provider, code=code)


def _query_again(existing: asyncpg.Record, requester: str, query_id: str) -> web.Response:
    """A query id seen before: its first answer again (the permit is never issued twice)."""
    if existing["requester"] != requester:
        raise ForbiddenError("query id belongs to another agency")
    if existing["permit_id"] is None:
        return _refused_again(query_id, existing["reason_code"])
    return web.json_response(
        {"query_id": query_id, "permit_id": existing["permit_id"], "duplicate": True},
        status=202,
    )


async def _query(
    state: HubState, envelope: Envelope, body: QueryRequest, raw: bytes
) -> web.Response:
    """情報照会: check the list, convert 符号, issue the permit, queue the provision request."""
    requester = envelope.header.sender
    now = utcnow()
    existing = await state.pool.fetchrow(
        "SELECT requester, permit_id, permit_expires_at, outcome, reason_code "
        "FROM hub_records WHERE query_id = $1",
        body.query_id,
    )
    if existing is not None:
        return _query_again(existing, requester, body.query_id)
    hublist.require_current(state.authorization_list, now)
    try:
        try:
            row = state.authorization_list.check(
                requester, body.provider, body.procedure_code, body.item_code, on=now.date()
            )
        except NotAuthorizedError:
            raise
        if row.business_code != body.business_code:
            raise NotAuthorizedError("事務コード does not match the authorization list")
        provider = await load_agency(state.pool, body.provider)
        requester_agency = await load_agency(state.pool, requester)
        person_id = await state.pool.fetchval(
            "SELECT person_id FROM person_codes WHERE agency_code = $1 AND person_code = $2",
            requester,
            body.requester_person_code,
        )
        if person_id is None:
            raise PersonUnknownError("the requester's 符号 is not known to the hub")
        provider_code = await state.pool.fetchval(
            "SELECT person_code FROM person_codes WHERE agency_code = $1 AND person_id = $2",
            provider.code,
            person_id,
        )
        if provider_code is None:
            raise PersonNotAtProviderError("the person is not registered with the provider")
    except (GatewayError, NotAuthorizedError) as exc:
        await _refuse_query(state, requester, body, exc)
        raise
    request_body = ProvisionRequest(
        query_id=body.query_id,
        requester=requester,
        provider_person_code=provider_code,
        business_code=body.business_code,
        procedure_code=body.procedure_code,
        item_code=body.item_code,
        legal_basis=row.legal_basis,
        requester_key_id=requester_agency.encryption_key_id,
        requester_key=requester_agency.encryption_key,
        reference_date=body.reference_date,
        non_disclosure=body.non_disclosure,
    )
    permit = Permit(
        permit_id=new_permit_id(),
        query_id=body.query_id,
        requester=requester,
        provider=provider.code,
        business_code=body.business_code,
        procedure_code=body.procedure_code,
        item_code=body.item_code,
        legal_basis=row.legal_basis,
        provider_person_code=provider_code,
        issued_at=now,
        expires_at=now + state.config.permit_lifetime,
        body_digest=body_digest(encode_body_c14n(request_body)),
    )
    token = encode_permit(permit, state.keys.signing)
    out_header = Header(new_message_id(), "ProvisionRequest", HUB, provider.code, now, token)
    message = encode_message(out_header, request_body)
    async with state.pool.acquire() as conn, conn.transaction():
        opened = await conn.fetchval(
            """INSERT INTO hub_record_events (query_id, kind, permit_id, requester, provider,
                   business_code, procedure_code, item_code, legal_basis, requester_person_code,
                   provider_person_code, requested_at, permit_expires_at, outcome,
                   non_disclosure)
               VALUES ($1, 'opened', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                       'permitted', $13)
               ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING RETURNING 1""",
            body.query_id,
            permit.permit_id,
            requester,
            provider.code,
            body.business_code,
            body.procedure_code,
            body.item_code,
            row.legal_basis,
            body.requester_person_code,
            provider_code,
            now,
            permit.expires_at,
            body.non_disclosure,
        )
        if opened is None:  # the same query, sent twice at once: the first one stands
            existing = await conn.fetchrow(
                "SELECT requester, permit_id, reason_code FROM hub_records WHERE query_id = $1",
                body.query_id,
            )
            assert existing is not None
            return _query_again(existing, requester, body.query_id)
        await _route_log(
            conn,
            header=envelope.header,
            direction="in",
            body=raw,
            query_id=body.query_id,
            permit_id=None,
        )
        await _route_log(
            conn,
            header=out_header,
            direction="out",
            body=message,
            query_id=body.query_id,
            permit_id=permit.permit_id,
        )
        await _enqueue_delivery(
            conn,
            "provision_request",
            provider.code,
            body.query_id,
            message,
            signature_header(state.keys.signing, message),
            give_up_at=permit.expires_at + state.config.delivery_grace,
        )
    state.wake.set()
    log.info(
        "permit_issued",
        requester=requester,
        provider=provider.code,
        permit_id=permit.permit_id,
        legal_basis=row.legal_basis,
    )
    return web.json_response(
        {
            "query_id": body.query_id,
            "permit_id": permit.permit_id,
            "expires_at": permit.expires_at.isoformat(),
        },
        status=202,
    )


async def _deferred_answer(
    state: HubState,
    envelope: Envelope,
    body: ProvisionAnswer,
    raw: bytes,
    request: web.Request,
) -> web.Response:
    """An answer a provider sends later (after manual review): route it to the requester."""
    provider = envelope.header.sender
    record = await state.pool.fetchrow(
        "SELECT requester, provider, permit_id, outcome FROM hub_records WHERE query_id = $1",
        body.query_id,
    )
    if record is None or record["provider"] != provider or record["permit_id"] != body.permit_id:
        raise ForbiddenError("no query with this permit is awaiting this provider's answer")
    if envelope.header.receiver != record["requester"]:
        raise MisaddressedError("answer is not addressed to the requester of the query")
    signature = request.headers[SIGNATURE_HEADER]
    won = await _conclude(
        state,
        body.query_id,
        body.outcome,
        body.reason_code,
        requester=record["requester"],
        sender=provider,
        message=raw,
        signature=signature,
        header=envelope.header,
        direction="in",
        permit_id=body.permit_id,
    )
    if won is Conclusion.CONTRADICTS:
        raise ConclusionConflictError("the query was already concluded otherwise")
    return web.json_response(
        {"query_id": body.query_id, "routed": True, "duplicate": won is Conclusion.REPEATED},
        status=202,
    )


async def _conclusion_request(
    state: HubState, envelope: Envelope, body: ConclusionRequest
) -> web.Response:
    """A requester recovers its query's conclusion: the message the hub holds for it.

    200 with the conclusion (the provider's signed answer or the hub's signed refusal,
    byte for byte, as delivered); 202 while the query is open; 404 if the hub never
    accepted the query; a query refused at the hub is refused again with its code.
    """
    record = await state.pool.fetchrow(
        "SELECT r.requester, r.permit_id, r.outcome, r.reason_code, d.body, d.signature "
        "FROM hub_records r LEFT JOIN deliveries d "
        "ON d.query_id = r.query_id AND d.kind = 'answer' WHERE r.query_id = $1",
        body.query_id,
    )
    if record is None or record["requester"] != envelope.header.sender:
        raise QueryUnknownError("the hub holds no query with this id for this agency")
    if record["body"] is not None:
        return web.Response(
            body=record["body"],
            content_type="application/xml",
            headers={SIGNATURE_HEADER: record["signature"]},
        )
    if record["permit_id"] is None:  # refused when it arrived
        return _refused_again(body.query_id, record["reason_code"])
    return web.json_response({"query_id": body.query_id, "status": "open"}, status=202)


def _refused_again(query_id: str, reason_code: str | None) -> web.Response:
    """The hub's first refusal of a query, repeated with its stable code."""
    code = reason_code or "refused"
    return error_response(403, code, f"query {query_id} was refused by the hub: {code}")


class Conclusion(enum.Enum):
    """What recording a conclusion did."""

    WON = "won"  # this is the query's one conclusion: recorded and forwarded
    REPEATED = "repeated"  # the same conclusion again (a retried delivery)
    CONTRADICTS = "contradicts"  # another conclusion stands: kept apart as evidence


async def _conclude(
    state: HubState,
    query_id: str,
    outcome: str,
    reason_code: str | None,
    *,
    requester: str,
    sender: str,
    message: bytes,
    signature: str,
    header: Header,
    direction: str,
    permit_id: str | None,
    delivery: asyncpg.Record | None = None,
    finish_status: str = "done",
) -> Conclusion:
    """Record the query's one conclusion and queue it for the requester, in one transaction.

    With ``delivery`` (the provision request that produced it), that delivery ends too,
    if this worker still holds its lease.
    """
    async with state.pool.acquire() as conn, conn.transaction():
        won = await conn.fetchval(
            "INSERT INTO hub_record_events (query_id, kind, outcome, reason_code, answered_at) "
            "VALUES ($1, 'concluded', $2, $3, now()) ON CONFLICT DO NOTHING RETURNING 1",
            query_id,
            outcome,
            reason_code,
        )
        if delivery is not None:
            await _finish(conn, delivery, finish_status, reason_code)
        if won is None:
            stored = await conn.fetchrow(
                "SELECT outcome, reason_code FROM hub_record_events "
                "WHERE query_id = $1 AND kind = 'concluded'",
                query_id,
            )
            assert stored is not None
            if stored["outcome"] == outcome:
                return Conclusion.REPEATED
            await conn.execute(
                "INSERT INTO hub_conclusion_conflicts (query_id, sender, outcome, reason_code, "
                "body) VALUES ($1, $2, $3, $4, $5)",
                query_id,
                sender,
                outcome,
                reason_code,
                message,
            )
            log.error(
                "conclusion_contradicted",
                query_id=query_id,
                stored=stored["outcome"],
                received=outcome,
                sender=sender,
            )
            return Conclusion.CONTRADICTS
        await _route_log(
            conn,
            header=header,
            direction=direction,
            body=message,
            query_id=query_id,
            permit_id=permit_id,
        )
        await _enqueue_delivery(
            conn,
            "answer",
            requester,
            query_id,
            message,
            signature,
            give_up_at=utcnow() + state.config.answer_retention,
        )
    state.wake.set()
    log.info("query_concluded", query_id=query_id, outcome=outcome, reason=reason_code)
    return Conclusion.WON


async def _enqueue_delivery(
    conn: db.Conn,
    kind: str,
    target: str,
    query_id: str,
    body: bytes,
    signature: str,
    *,
    give_up_at: dt.datetime,
) -> None:
    """Put a signed message in the outbox, in the caller's transaction (sent after commit)."""
    await conn.execute(
        "INSERT INTO deliveries (kind, target, query_id, body, signature, give_up_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (query_id, kind) DO NOTHING",
        kind,
        target,
        query_id,
        body,
        signature,
        give_up_at,
    )


# -- delivery worker ------------------------------------------------------------------


def _lease(config: HubConfig) -> dt.timedelta:
    """Long enough for one attempt to end (timeout included) before anyone else may try."""
    return max(DELIVERY_LEASE, dt.timedelta(seconds=config.delivery_timeout * 3))


async def _claim_due(state: HubState, limit: int = 16) -> list[asyncpg.Record]:
    """Lease due deliveries so that several hub workers never send one twice at once."""
    return await state.pool.fetch(
        """UPDATE deliveries SET attempts = attempts + 1, lease_token = gen_random_uuid(),
               leased_until = now() + $2
           WHERE id IN (SELECT id FROM deliveries
                        WHERE status = 'pending' AND next_attempt_at <= now()
                          AND (leased_until IS NULL OR leased_until <= now())
                        ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        limit,
        _lease(state.config),
    )


def agency_tls_name(state: HubState, agency: Agency) -> str | None:
    """Over TLS, the agency's identity name the server certificate must carry."""
    if state.config.tls is None or not agency.endpoint.startswith("https://"):
        return None
    return agency_host(agency.code)


async def _post(
    state: HubState, agency: Agency, body: bytes, signature: str
) -> aiohttp.ClientResponse:
    return await state.session.post(
        agency.endpoint.rstrip("/") + "/network/v1/messages",
        data=body,
        headers={"Content-Type": "application/xml", SIGNATURE_HEADER: signature},
        timeout=aiohttp.ClientTimeout(total=state.config.delivery_timeout),
        server_hostname=agency_tls_name(state, agency),
    )


async def _finish(
    conn: db.Executor, delivery: asyncpg.Record, status: str, error: str | None = None
) -> bool:
    """End a delivery, only if this worker still holds its lease; returns whether it did."""
    done = await conn.fetchval(
        "UPDATE deliveries SET status = $3, last_error = $4, done_at = now(), "
        "leased_until = NULL, lease_token = NULL "
        "WHERE id = $1 AND lease_token = $2 AND status = 'pending' RETURNING 1",
        delivery["id"],
        delivery["lease_token"],
        status,
        error,
    )
    return done is not None


async def _retry_later(state: HubState, delivery: asyncpg.Record, error: str) -> bool:
    """Back off (with jitter) and release the lease; True when the give-up time has passed."""
    give_up_at = delivery["give_up_at"]
    if give_up_at is not None and utcnow() >= give_up_at:
        return True
    config = state.config
    delay = jittered_backoff(
        delivery["attempts"], config.delivery_backoff, config.delivery_max_backoff
    )
    await state.pool.execute(
        "UPDATE deliveries SET next_attempt_at = now() + $3, last_error = $4, "
        "leased_until = NULL, lease_token = NULL "
        "WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
        delivery["id"],
        delivery["lease_token"],
        delay,
        error,
    )
    log.info("delivery_retry", delivery=delivery["id"], kind=delivery["kind"], error=error)
    return False


async def _expire(state: HubState, delivery: asyncpg.Record, error: str) -> None:
    """The provider never answered while the permit and its grace lived: conclude expired."""
    record = await state.pool.fetchrow(
        "SELECT requester, permit_id FROM hub_records WHERE query_id = $1", delivery["query_id"]
    )
    assert record is not None
    query_id = delivery["query_id"]
    refusal = QueryRefusal(
        query_id, "provider_unreachable", "the provider did not answer in time", record["permit_id"]
    )
    header = Header(new_message_id(), "QueryRefusal", HUB, record["requester"], utcnow())
    message = encode_message(header, refusal)
    await _conclude(
        state,
        query_id,
        "expired",
        "provider_unreachable",
        requester=record["requester"],
        sender=HUB,
        message=message,
        signature=signature_header(state.keys.signing, message),
        header=header,
        direction="out",
        permit_id=record["permit_id"],
        delivery=delivery,
        finish_status="failed",
    )
    log.warning("delivery_expired", delivery=delivery["id"], query_id=query_id, error=error)


async def _deliver_provision_request(state: HubState, delivery: asyncpg.Record) -> None:
    """Only a signed answer (or "held") ends a provision request; everything else is retried."""
    provider = await load_agency(state.pool, delivery["target"])
    error: str | None
    try:
        response = await _post(state, provider, delivery["body"], delivery["signature"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    else:
        async with response:
            payload = await response.read()
            if response.status == 200:
                error = await _accept_answer(state, delivery, provider, payload, response)
                if error is None:
                    return
            elif response.status == 202:
                await _held(state, delivery, provider)
                return
            else:
                error = f"HTTP {response.status} {_error_of(payload)[0]}"
    assert error is not None
    if await _retry_later(state, delivery, error):
        await _expire(state, delivery, error)


async def _held(state: HubState, delivery: asyncpg.Record, provider: Agency) -> None:
    async with state.pool.acquire() as conn, conn.transaction():
        if await _finish(conn, delivery, "done"):
            await conn.execute(
                "INSERT INTO hub_record_events (query_id, kind, outcome) "
                "SELECT $1, 'held', 'held' WHERE NOT EXISTS (SELECT 1 FROM hub_record_events "
                "WHERE query_id = $1 AND kind = 'concluded') ON CONFLICT DO NOTHING",
                delivery["query_id"],
            )
    log.info("provision_held", query_id=delivery["query_id"], provider=provider.code)


def _error_of(payload: bytes) -> tuple[str, str]:
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "provider_error", "the provider refused the request"
    if not code.replace("_", "").isalnum() or not code.islower():
        return "provider_error", "the provider refused the request"
    return code, message[:500]


async def _accept_answer(
    state: HubState,
    delivery: asyncpg.Record,
    provider: Agency,
    payload: bytes,
    response: aiohttp.ClientResponse,
) -> str | None:
    """Check the provider's signed answer and conclude with it; an error text to retry."""
    try:
        verify_signature(response.headers.get(SIGNATURE_HEADER), payload, provider.signing_keys)
        envelope = decode_message(payload)
    except Exception as exc:  # e.g. a key the registry does not list yet: ask again later
        log.warning("provider_answer_unverified", query_id=delivery["query_id"], error=str(exc))
        return getattr(exc, "code", "provider_answer_invalid")
    body = envelope.body
    record = await state.pool.fetchrow(
        "SELECT requester, permit_id FROM hub_records WHERE query_id = $1", delivery["query_id"]
    )
    assert record is not None
    if (
        not isinstance(body, ProvisionAnswer)
        or body.query_id != delivery["query_id"]
        or envelope.header.sender != provider.code
        or body.permit_id != record["permit_id"]
        or envelope.header.receiver != record["requester"]
    ):
        log.warning("provider_answer_mismatch", query_id=delivery["query_id"])
        return "provider_answer_mismatch"
    await _conclude(
        state,
        body.query_id,
        body.outcome,
        body.reason_code,
        requester=record["requester"],
        sender=provider.code,
        message=payload,
        signature=response.headers[SIGNATURE_HEADER],
        header=envelope.header,
        direction="in",
        permit_id=body.permit_id,
        delivery=delivery,
    )
    return None


async def _deliver_answer(state: HubState, delivery: asyncpg.Record) -> None:
    """A conclusion to its requester, until acknowledged (the requester can also ask)."""
    requester = await load_agency(state.pool, delivery["target"])
    try:
        response = await _post(state, requester, delivery["body"], delivery["signature"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    else:
        async with response:
            payload = await response.read()
            if response.status < 300:
                await _finish(state.pool, delivery, "done")
                log.info("answer_delivered", query_id=delivery["query_id"])
                return
            error = f"HTTP {response.status} {_error_of(payload)[0]}"
    if await _retry_later(state, delivery, error):
        await _finish(state.pool, delivery, "failed", error)
        log.warning("answer_undelivered", query_id=delivery["query_id"], error=error)


async def _deliver_one(state: HubState, delivery: asyncpg.Record) -> None:
    try:
        if delivery["kind"] == "provision_request":
            await _deliver_provision_request(state, delivery)
        else:
            await _deliver_answer(state, delivery)
    except Exception as exc:  # a bug or an outage in one delivery must not stop the others
        if db.is_database_error(exc):
            db.note_unavailable(exc)  # logged once per outage
        else:
            log.exception("delivery_crashed", delivery=delivery["id"])
        with contextlib.suppress(Exception):  # if even this fails, the lease runs out
            await _retry_later(state, delivery, "internal_error")


async def _delivery_loop(state: HubState) -> None:
    """Keep up to ``DELIVERY_BATCH`` deliveries in flight, claiming more as each ends.

    Waiting for a whole batch before claiming again would hold every new query
    behind the slowest delivery of the previous batch.
    """
    running: set[asyncio.Task[None]] = set()
    failing = False

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        state.wake.set()

    try:
        while True:
            state.wake.clear()
            free = DELIVERY_BATCH - len(running)
            due: list[asyncpg.Record] = []
            if free > 0:
                try:
                    due = await _claim_due(state, limit=free)
                except Exception as exc:  # the worker never ends on an error
                    if db.is_database_error(exc):
                        db.note_unavailable(exc)  # logged once per outage
                    elif not failing:
                        log.exception("delivery_pass_failed")
                    failing = True
                else:
                    if failing:
                        log.info("delivery_pass_recovered")
                    failing = False
            for delivery in due:
                task = asyncio.create_task(_deliver_one(state, delivery))
                running.add(task)
                task.add_done_callback(finished)
            if due and len(due) == free:
                continue  # more may be due at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=0.5)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _start_worker(state: HubState) -> None:
    """Run the delivery worker, supervised: should it ever end with an error, it restarts."""
    worker = asyncio.create_task(_delivery_loop(state), name="hub-deliveries")

    def ended(task: asyncio.Task[None]) -> None:
        if task.cancelled() or state.worker is not task:
            return  # stopped with the hub
        log.error("background_task_failed", task="hub-deliveries", exc_info=task.exception())
        _start_worker(state)

    worker.add_done_callback(ended)
    state.worker = worker


async def retry_deliveries(request: web.Request) -> web.Response:
    """Operator lever: every pending delivery is due now (after an outage was fixed)."""
    _require_admin(request)
    hubauth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    count = await state.pool.fetchval(
        "WITH due AS (UPDATE deliveries SET next_attempt_at = now() "
        "WHERE status = 'pending' AND (leased_until IS NULL OR leased_until <= now()) "
        "RETURNING 1) SELECT count(*) FROM due"
    )
    state.wake.set()
    log.info("deliveries_rescheduled", count=count)
    return web.json_response({"rescheduled": count})


# -- application ----------------------------------------------------------------------


def create_hub_app(config: HubConfig) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, hubauth.peer_middleware(config.tls is not None)],
        client_max_size=8 * 1024 * 1024,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(config.database_url)
        async with pool.acquire() as conn:
            await db.migrate(conn, db.load_migrations("chukan.simulators", "migrations/hub"))
        keys = await asyncio.to_thread(
            load_or_create_keys, config.key_dir, HUB_OWNER, config.key_passphrase
        )
        authorization, signed = await hublist.initial_list(pool, config, keys.signing)
        state = HubState(
            config=config,
            pool=pool,
            keys=keys,
            secret=_load_secret(config.key_dir),
            authorization_list=authorization,
            signed_list=signed,
            session=client_session(config.tls),
        )
        app[HUB_STATE] = state
        _start_worker(state)
        log.info("hub_started", signing_key=keys.signing.key_id)
        yield
        worker, state.worker = state.worker, None  # stopping: not to be restarted
        assert worker is not None
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await state.session.close()
        await pool.close()
        log.info("hub_stopped")

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/admin/v1/agencies", register_agency)
    app.router.add_get("/admin/v1/records", list_records)
    app.router.add_post("/admin/v1/deliveries/retry", retry_deliveries)
    app.router.add_post("/admin/v1/authorization-list", hublist.publish_list)
    app.router.add_get("/admin/v1/authorization-list/versions", hublist.list_versions)
    app.router.add_get("/network/v1/agencies", list_agencies)
    app.router.add_get("/network/v1/agencies/{code}", get_agency)
    app.router.add_get("/network/v1/hub-key", hub_key)
    app.router.add_get("/network/v1/authorization-list", authorization_list)
    app.router.add_post("/network/v1/messages", receive_message)
    return app
