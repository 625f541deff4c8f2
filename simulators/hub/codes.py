"""符号 issuance: J-LIS's 取得番号 for a 個人番号 (or 処理通番 for a 住民票コード), then the
hub's 符号 for each agency; and what agencies tell the hub of their people's lifecycle.

The hub keeps a 個人番号 or 住民票コード only as an HMAC under its secret (to find the
same person again) and gives every agency its own random 符号 for that person, so
agencies never share an identifier.  An agency's 符号 ended by unregistration is no
longer routable (``person_unregistered``); one merged into another 符号 of the same
agency converts to its successor (docs/persons.md).
"""

from __future__ import annotations

import datetime as dt
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
    PersonNotice,
    PersonNoticeReceipt,
    ResidentCodeRequest,
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
from chukan.gateway.core.web import current_request_id, signed_xml_response
from chukan.gateway.persons.errors import (
    PersonStateConflictError,
    PersonUnregisteredError,
    ResidentCodeUnknownError,
)
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")

#: 符号 conversion in one statement (one round trip, unique-index probes): the requester's
#: 符号 ($1 agency, $2 符号) → the person → the provider's ($3) 符号.  A 符号 merged into
#: another of its agency stands for the successor's person (requester side) or is replaced
#: by the successor (provider side); merges are flattened when told, so one hop suffices.
#: No row: the requester's 符号 is unknown; ``mine_state``/``theirs_state`` say whether
#: either side ended it (unregistered); a NULL code: the provider never acquired one.
CONVERT_SQL: Final = """
    SELECT COALESCE(mine_next.state, mine.state) AS mine_state,
           COALESCE(theirs_next.person_code, theirs.person_code) AS person_code,
           COALESCE(theirs_next.state, theirs.state) AS theirs_state
    FROM person_codes AS mine
    LEFT JOIN person_codes AS mine_next
           ON mine.state = 'merged' AND mine_next.person_code = mine.successor_code
    LEFT JOIN person_codes AS theirs
           ON theirs.agency_code = $3
          AND theirs.person_id = COALESCE(mine_next.person_id, mine.person_id)
    LEFT JOIN person_codes AS theirs_next
           ON theirs.state = 'merged' AND theirs_next.person_code = theirs.successor_code
    WHERE mine.person_code = $2 AND mine.agency_code = $1"""


async def provider_person_code(
    executor: db.Executor, requester: str, requester_code: str, provider: str
) -> str:
    """The provider's 符号 for the person the requester knows by ``requester_code``:
    :class:`PersonUnknownError` when the hub does not know that 符号 for the requester,
    :class:`PersonNotAtProviderError` when the person is not registered with the provider,
    :class:`PersonUnregisteredError` when either agency ended its 符号 (unregistration)."""
    found = await executor.fetch(CONVERT_SQL, requester, requester_code, provider)
    if not found:
        raise PersonUnknownError("the requester's 符号 is not known to the hub")
    row = found[0]
    if row["mine_state"] == "unregistered":
        raise PersonUnregisteredError("the requester unregistered this person: its 符号 is ended")
    code: str | None = row["person_code"]
    if code is None:
        raise PersonNotAtProviderError("the person is not registered with the provider")
    if row["theirs_state"] == "unregistered":
        raise PersonUnregisteredError("the provider unregistered this person: no routing to it")
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
        await _store_acquisition(conn, token, person_id, envelope.header.sender, expires)
    log.info("acquisition_number_issued", agency=envelope.header.sender)
    return _reply(state, envelope.header.sender, AcquisitionResponse(token, expires))


async def _store_acquisition(
    conn: db.Executor, token: str, person_id: uuid.UUID, agency: str, expires: dt.datetime
) -> None:
    """Keep a 取得番号 by its digest (the token itself is only in the reply)."""
    await conn.execute(
        "INSERT INTO acquisition_numbers (number_digest, person_id, agency_code, expires_at) "
        "VALUES ($1, $2, $3, $4)",
        hashlib.sha256(token.encode()).digest(),
        person_id,
        agency,
        expires,
    )


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
        # A 符号 the agency ended by unregistration is routable again once the agency
        # acquires it again (the person registered anew); a merged one stays merged.
        code = await conn.fetchval(
            """INSERT INTO person_codes (agency_code, person_id, person_code)
               VALUES ($1, $2, $3)
               ON CONFLICT (agency_code, person_id) DO UPDATE
               SET state = CASE WHEN person_codes.state = 'unregistered' THEN 'active'
                                ELSE person_codes.state END,
                   state_changed_at = CASE WHEN person_codes.state = 'unregistered'
                                           THEN now() ELSE person_codes.state_changed_at END
               RETURNING person_code""",
            agency,
            person_id,
            secrets.token_urlsafe(18),
        )
    log.info("person_code_issued", agency=agency)
    return _reply(state, agency, CodeResponse(code))


async def issue_serial_number(
    state: HubState, envelope: Envelope, body: ResidentCodeRequest
) -> web.Response:
    """J-LIS role: 住民票コード → single-use 処理通番, presented like a 取得番号 for the 符号.

    J-LIS holds each resident's 住民票コード and 個人番号 (機構保存本人確認情報); the
    simulator learns the pair when both come together, and then finds the person by
    either.  A 住民票コード it never saw alone: 404 ``resident_code_unknown``.
    """
    resident_digest = _digest(state.secret, body.resident_code)
    number = body.individual_number
    if number is not None and not is_valid_individual_number(number):
        raise IndividualNumberInvalidError("個人番号 has a wrong check digit")
    token = secrets.token_urlsafe(24)
    expires = utcnow() + state.config.acquisition_lifetime
    async with state.pool.acquire() as conn, conn.transaction():
        person_id = await conn.fetchval(
            "SELECT person_id FROM persons WHERE resident_digest = $1", resident_digest
        )
        if person_id is None and number is not None:
            person_id = await conn.fetchval(
                """INSERT INTO persons (person_id, number_digest, resident_digest)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (number_digest) DO UPDATE
                   SET resident_digest = COALESCE(persons.resident_digest,
                                                  EXCLUDED.resident_digest)
                   RETURNING person_id""",
                uuid.uuid4(),
                _digest(state.secret, number),
                resident_digest,
            )
        if person_id is None:
            raise ResidentCodeUnknownError("J-LIS holds no resident with this 住民票コード")
        await _store_acquisition(conn, token, person_id, envelope.header.sender, expires)
    log.info("processing_serial_issued", agency=envelope.header.sender)
    return _reply(state, envelope.header.sender, AcquisitionResponse(token, expires))


async def apply_person_notice(
    state: HubState, envelope: Envelope, body: PersonNotice
) -> web.Response:
    """An agency ends one of its 符号 (unregistered) or merges it into another of its own.

    Idempotent: the notice is kept once per (agency, notice id), and a repeated notice
    gets a receipt for the first.  Only the agency's own 符号 can be named (404
    otherwise); a merge into an ended or unknown 符号 is refused (409).  A merge is
    flattened: 符号 merged into the retired one now point at the survivor.
    """
    agency = envelope.header.sender
    async with state.pool.acquire() as conn, conn.transaction():
        seen = await conn.fetchrow(
            "SELECT kind, person_code, received_at FROM person_code_notices "
            "WHERE agency_code = $1 AND notice_id = $2",
            agency,
            body.notice_id,
        )
        if seen is not None:
            if (seen["kind"], seen["person_code"]) != (body.kind, body.person_code):
                raise PersonStateConflictError("this notice id was used for another notice")
            return _notice_receipt(state, agency, body, seen["received_at"])
        current = await conn.fetchrow(
            "SELECT state, successor_code FROM person_codes "
            "WHERE agency_code = $1 AND person_code = $2 FOR UPDATE",
            agency,
            body.person_code,
        )
        if current is None:
            raise PersonUnknownError("the hub knows no such 符号 of this agency")
        if body.kind == "merged":
            await _merge(conn, agency, body, current["state"])
        else:
            await conn.execute(
                "UPDATE person_codes SET state = 'unregistered', successor_code = NULL, "
                "state_changed_at = now() WHERE agency_code = $1 AND person_code = $2",
                agency,
                body.person_code,
            )
        received_at = await conn.fetchval(
            """INSERT INTO person_code_notices (agency_code, notice_id, kind, person_code,
                   successor_code, message_id, request_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING received_at""",
            agency,
            body.notice_id,
            body.kind,
            body.person_code,
            body.successor_code,
            envelope.header.message_id,
            current_request_id(),
        )
    log.info("person_notice_applied", agency=agency, kind=body.kind)
    return _notice_receipt(state, agency, body, received_at)


async def _merge(conn: db.Conn, agency: str, body: PersonNotice, state_now: str) -> None:
    """The retired 符号 (and those merged into it) now stand for the survivor."""
    if body.successor_code == body.person_code:
        raise PersonStateConflictError("a 符号 cannot be merged into itself")
    survivor = await conn.fetchval(
        "SELECT state FROM person_codes WHERE agency_code = $1 AND person_code = $2",
        agency,
        body.successor_code,
    )
    if survivor is None:
        raise PersonUnknownError("the hub knows no such successor 符号 of this agency")
    if survivor != "active":
        raise PersonStateConflictError(f"the successor 符号 is {survivor}: nothing merges into it")
    if state_now == "unregistered":
        raise PersonStateConflictError("an unregistered 符号 cannot be merged")
    await conn.execute(
        """UPDATE person_codes SET state = 'merged', successor_code = $3, state_changed_at = now()
           WHERE agency_code = $1 AND (person_code = $2 OR successor_code = $2)""",
        agency,
        body.person_code,
        body.successor_code,
    )


def _notice_receipt(
    state: HubState, agency: str, body: PersonNotice, received_at: dt.datetime
) -> web.Response:
    return _reply(
        state, agency, PersonNoticeReceipt(body.notice_id, body.kind, body.person_code, received_at)
    )
