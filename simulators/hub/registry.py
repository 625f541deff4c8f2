"""The hub's registry of agencies: enrolment, endpoints and public keys, read by all.

An agency enrols itself (or the operator enrols it) with its endpoint and keys,
presenting the agency's own enrolment token
(:mod:`chukan.simulators.hub.enrolment`); key rotation rules live in
:mod:`chukan.simulators.hub.keys`.  Everyone on the network reads the registry
(``/network/v1/agencies``) and the hub's own key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import AgencyUnknownError, GatewayError, ValidationError
from chukan.gateway.core.identities import agency_host
from chukan.gateway.core.web import read_json, require_str
from chukan.keys import PublicSigningKey, b64e
from chukan.simulators.hub import auth, enrolment, keys
from chukan.simulators.hub.state import HUB_STATE, HubState

log = structlog.get_logger("chukan.hub")


@dataclass(slots=True)
class Agency:
    code: str
    name: str
    endpoint: str
    signing_keys: dict[str, PublicSigningKey]
    encryption_key_id: str
    encryption_key: bytes


_AGENCIES_SQL: Final = """
    SELECT a.code, a.name, a.endpoint, a.encryption_key_id, a.encryption_key, k.ids, k.keys
    FROM agencies a
    LEFT JOIN LATERAL (
        SELECT array_agg(key_id) AS ids, array_agg(public_key) AS keys
        FROM agency_keys
        WHERE agency_code = a.code AND purpose = 'sig'
          AND (valid_until IS NULL OR valid_until > now())) k ON true
    WHERE a.code = ANY($1::text[])"""


def _agency(row: asyncpg.Record) -> Agency:
    ids, raws = row["ids"] or [], row["keys"] or []
    return Agency(
        code=row["code"],
        name=row["name"],
        endpoint=row["endpoint"],
        signing_keys={
            key_id: PublicSigningKey(key_id, raw) for key_id, raw in zip(ids, raws, strict=True)
        },
        encryption_key_id=row["encryption_key_id"],
        encryption_key=row["encryption_key"],
    )


async def load_agencies(conn: db.Executor, codes: Sequence[str]) -> dict[str, Agency]:
    """The registered ones of these agencies, each with its signing keys still valid, in
    one round trip (a message's sender and the agency it names, read once)."""
    rows = await conn.fetch(_AGENCIES_SQL, list(codes))
    return {row["code"]: _agency(row) for row in rows}


async def load_agency(conn: db.Executor, code: str) -> Agency:
    """An agency with its signing keys still valid, in one round trip."""
    return require_agency(await load_agencies(conn, [code]), code)


def require_agency(agencies: dict[str, Agency], code: str) -> Agency:
    """The agency ``code`` among those read; 404-like ``agency_unknown`` if not registered."""
    agency = agencies.get(code)
    if agency is None:
        raise AgencyUnknownError(f"agency {code} is not registered with the hub")
    return agency


def tls_server_name(state: HubState, code: str, endpoint: str) -> str | None:
    """Over TLS, the identity name the agency's server certificate must carry."""
    if state.config.tls is None or not endpoint.startswith("https://"):
        return None
    return agency_host(code)


async def register_agency(request: web.Request) -> web.Response:
    """Enrol an agency (or update its endpoint and keys) with that agency's enrolment token.

    The admin token does not enrol: an agency's operator holds its own token and
    nothing of the hub's.  Refusals are recorded (``enrolment_events``).
    """
    state = request.config_dict[HUB_STATE]
    data = await read_json(request)
    code = enrolment.check_agency_code(require_str(data, "code", max_length=16))
    digest = await enrolment.require_enrolment_token(request, state, code)
    name = require_str(data, "name", max_length=200)
    endpoint = require_str(data, "endpoint", max_length=500)
    if not endpoint.startswith(("http://", "https://")):
        raise ValidationError("endpoint must be an http(s) URL")
    try:
        auth.require_enrolling(request, code, endpoint)
    except GatewayError as exc:
        raise await enrolment.refuse(state, request, code, exc, endpoint) from None
    sig = data.get("signing_key")
    enc = data.get("encryption_key")
    if not isinstance(sig, dict) or not isinstance(enc, dict):
        raise ValidationError("signing_key and encryption_key are required objects")
    signing = keys.parse_key(code, sig, "sig")
    encryption = keys.parse_key(code, enc, "enc")
    published = keys.parse_published(code, data)
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
        await keys.store_keys(conn, code, (signing, encryption), published)
        await enrolment.mark_enrolled(conn, request, code, digest, endpoint)
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
    valid = await state.pool.fetch(
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
        for k in valid
    ]
    return web.json_response(result)


async def hub_key(request: web.Request) -> web.Response:
    """The hub's own signing key: what agencies trust permits and signed lists under."""
    state = request.config_dict[HUB_STATE]
    public = state.keys.signing.public
    return web.json_response({"key_id": public.key_id, "public": b64e(public.raw)})
