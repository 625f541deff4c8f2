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
from typing import Any, Final

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
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    ForbiddenError,
    IndividualNumberInvalidError,
    PersonNotAtProviderError,
    PersonUnknownError,
)
from chukan.gateway.core.web import signed_xml_response
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")

#: 符号 conversion in one statement (one round trip, two primary-key/unique index probes):
#: the requester's 符号 ($1 agency, $2 符号) → the person → the provider's ($3) 符号.  A row
#: with a NULL code: the person is not registered with the provider; no row: the requester's
#: 符号 is unknown.
CONVERT_SQL: Final = """
    SELECT theirs.person_code
    FROM person_codes AS mine
    LEFT JOIN person_codes AS theirs
           ON theirs.agency_code = $3 AND theirs.person_id = mine.person_id
    WHERE mine.person_code = $2 AND mine.agency_code = $1"""


async def provider_person_code(
    executor: db.Executor, requester: str, requester_code: str, provider: str
) -> str:
    """The provider's 符号 for the person the requester knows by ``requester_code``:
    :class:`PersonUnknownError` when the hub does not know that 符号 for the requester,
    :class:`PersonNotAtProviderError` when the person is not registered with the provider."""
    found = await executor.fetch(CONVERT_SQL, requester, requester_code, provider)
    if not found:
        raise PersonUnknownError("the requester's 符号 is not known to the hub")
    code: str | None = found[0]["person_code"]
    if code is None:
        raise PersonNotAtProviderError("the person is not registered with the provider")
    return code


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
