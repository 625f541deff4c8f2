"""符号 issuance: J-LIS's 取得番号 for a 個人番号, then the hub's 符号 for each agency.

The hub keeps a 個人番号 only as an HMAC under its secret (to find the same
person again) and gives every agency its own random 符号 for that person, so
agencies never share an identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from typing import Any

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
    encode_message,
    new_message_id,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.gateway.core.errors import ForbiddenError, IndividualNumberInvalidError
from chukan.gateway.core.web import signed_xml_response
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")


def _digest(secret: bytes, value: str) -> bytes:
    return hmac.new(secret, value.encode("ascii"), hashlib.sha256).digest()


def _reply(state: HubState, receiver: str, body: Any) -> web.Response:
    header = Header(new_message_id(), type(body).__name__, HUB, receiver, utcnow())
    return signed_xml_response(state.keys.signing, encode_message(header, body))


async def issue_acquisition_number(
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


async def issue_person_code(state: HubState, envelope: Envelope, body: CodeRequest) -> web.Response:
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
