"""Onboarding: a 保険者 registers its token digest and keys; the simulator publishes its own."""

from __future__ import annotations

import re

import structlog
from aiohttp import web

from chukan.gateway.core.errors import ConflictError, ForbiddenError, ValidationError
from chukan.gateway.core.web import read_json, require_str
from chukan.keys import b64d, b64e, public_encryption_key, public_signing_key
from chukan.simulators.kokuhoren.auth import require_admin
from chukan.simulators.kokuhoren.params import insurer_number
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE

log = structlog.get_logger("chukan.kokuhoren")


async def register_insurer(request: web.Request) -> web.Response:
    """Onboard a 保険者 (or rotate its token and keys; old keys stay valid)."""
    require_admin(request)
    state = request.config_dict[KOKUHOREN_STATE]
    number = insurer_number(request.match_info["insurer_number"])
    data = await read_json(request)
    name = require_str(data, "name", max_length=200)
    token_sha256 = require_str(data, "token_sha256", max_length=64)
    if not re.fullmatch(r"[0-9a-f]{64}", token_sha256):
        raise ValidationError("token_sha256 must be a hex SHA-256 digest")
    agency_code = data.get("agency_code")
    if agency_code is not None and (
        not isinstance(agency_code, str) or not re.fullmatch(r"[0-9]{6}([0-9]{10})?", agency_code)
    ):
        raise ValidationError("agency_code must be 6 or 16 digits")
    sig, enc = data.get("signing_key"), data.get("encryption_key")
    if not isinstance(sig, dict) or not isinstance(enc, dict):
        raise ValidationError("signing_key and encryption_key are required objects")
    signing = public_signing_key(require_str(sig, "key_id"), b64d(require_str(sig, "public")))
    encryption = public_encryption_key(require_str(enc, "key_id"), b64d(require_str(enc, "public")))
    async with state.pool.acquire() as conn, conn.transaction():
        other = await conn.fetchval(
            "SELECT insurer_number FROM insurers WHERE token_sha256 = $1", token_sha256
        )
        if other is not None and other != number:
            raise ConflictError("this token is registered to another 保険者")
        created = await conn.fetchval(
            """INSERT INTO insurers (insurer_number, name, token_sha256, encryption_key_id,
                                     encryption_key, agency_code)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (insurer_number) DO UPDATE SET
                   name = EXCLUDED.name, token_sha256 = EXCLUDED.token_sha256,
                   encryption_key_id = EXCLUDED.encryption_key_id,
                   encryption_key = EXCLUDED.encryption_key,
                   agency_code = EXCLUDED.agency_code, updated_at = now()
               RETURNING (xmax = 0)""",
            number,
            name,
            token_sha256,
            encryption.key_id,
            encryption.raw,
            agency_code,
        )
        for key_id, purpose, raw in (
            (signing.key_id, "sig", signing.raw),
            (encryption.key_id, "enc", encryption.raw),
        ):
            owner = await conn.fetchval(
                "SELECT insurer_number FROM insurer_keys WHERE key_id = $1", key_id
            )
            if owner is not None and owner != number:
                raise ForbiddenError("that key id belongs to another 保険者")
            await conn.execute(
                "INSERT INTO insurer_keys (key_id, insurer_number, purpose, public_key) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
                key_id,
                number,
                purpose,
                raw,
            )
    log.info("kokuhoren_insurer_registered", insurer=number, signing_key=signing.key_id)
    return web.json_response(
        {"insurer_number": number, "registered": True}, status=201 if created else 200
    )


async def public_keys(request: web.Request) -> web.Response:
    """``GET /mailbox/v1/keys``: what 保険者 verify answers with and seal files for."""
    state = request.config_dict[KOKUHOREN_STATE]
    return web.json_response(
        {
            "signing_key": {
                "key_id": state.keys.signing.key_id,
                "public": b64e(state.keys.signing.public.raw),
            },
            "encryption_key": {
                "key_id": state.keys.encryption.key_id,
                "public": b64e(state.keys.encryption.public.raw),
            },
        }
    )
