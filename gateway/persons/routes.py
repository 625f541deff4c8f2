"""符号取得 and the person lifecycle on the internal API (docs/persons.md).

A core system registers a person; only 符号 ↔ 団体内統合宛名番号 is kept.  The
個人番号 (or the 住民票コード) goes to the hub — J-LIS's 取得番号 (or 処理通番),
then the 符号 — and no further: it is never stored, logged or echoed here.  The
団体内統合宛名システム reports the person's events (``persons.lifecycle``); an
operator erases what is no longer needed (``persons.purge``).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    AcquisitionRequest,
    AcquisitionResponse,
    CodeRequest,
    CodeResponse,
    ResidentCodeRequest,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import (
    OP_PERSON_LIFECYCLE,
    OP_PURGE_PERSONS,
    OP_REGISTER_PERSON,
)
from chukan.gateway.core.errors import (
    IndividualNumberInvalidError,
    PersonConflictError,
    RelayedRefusalError,
    UpstreamError,
    ValidationError,
)
from chukan.gateway.core.oplog import note_target
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.validation import atena_id_value
from chukan.gateway.core.web import current_request_id, optional_str, read_json, require_str
from chukan.gateway.persons.erasure import DEFAULT_SUPERSEDED_AGE, purge_persons
from chukan.gateway.persons.errors import ResidentCodeInvalidError
from chukan.gateway.persons.lifecycle import person_view, report_event

RESIDENT_CODE: Final = re.compile(r"^[0-9]{11}$")
#: At most this many 宛名番号 name one limited purge.
MAX_PURGE_SCOPE: Final = 1000

log = structlog.get_logger("chukan.gateway")


async def register_person(request: web.Request) -> web.Response:
    """符号取得: 宛名番号 + 個人番号 (or 住民票コード) → 符号 from the hub; only 符号 ↔
    宛名番号 is kept."""
    system = await authorize(request, OP_REGISTER_PERSON)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    atena_id = atena_id_value(require_str(data, "atena_id", max_length=15))
    number = data.get("individual_number")
    resident_code = data.get("resident_code")
    if number is not None and (
        not isinstance(number, str) or not is_valid_individual_number(number)
    ):
        raise IndividualNumberInvalidError("個人番号 must be 12 digits with a valid check digit")
    if resident_code is not None and (
        not isinstance(resident_code, str) or not RESIDENT_CODE.match(resident_code)
    ):
        raise ResidentCodeInvalidError("住民票コード must be 11 digits")
    if number is None and resident_code is None:
        raise IndividualNumberInvalidError("give the 個人番号 or the 住民票コード")
    del data  # the 個人番号 and 住民票コード go no further than the hub requests below
    first: AcquisitionRequest | ResidentCodeRequest = (
        ResidentCodeRequest(resident_code, number)
        if resident_code is not None
        else AcquisitionRequest(str(number))
    )
    del number, resident_code
    reply = await state.hub.send(first)
    del first
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
    # One atomic statement decides: the insert either binds the pair or conflicts on
    # either key of this tenant (宛名番号 or 符号) — after waiting for a concurrent
    # insert of the same key to commit or roll back, so identical concurrent requests
    # get one 201 and the others see the committed binding. The binding found then
    # says whether the request repeats it (200) or contradicts it (409). Each
    # statement reads what is committed when it starts (READ COMMITTED, no
    # transaction), and a binding is never removed, so the first look finds it.
    async with state.pool.acquire() as conn:
        for _ in range(3):
            inserted = await conn.fetchval(
                _REGISTER_SQL, atena_id, person_code, system.system_id, current_request_id()
            )
            if inserted:
                break
            if await conn.fetchval(
                _REREGISTER_SQL, atena_id, person_code, system.system_id, current_request_id()
            ):
                log.info("person_reregistered", caller=system.system_id)
                return web.json_response({"atena_id": atena_id, "status": "reregistered"})
            bound = await conn.fetch(
                "SELECT atena_id, person_code FROM persons WHERE atena_id = $1 OR person_code = $2",
                atena_id,
                person_code,
            )
            if len(bound) == 1 and (bound[0]["atena_id"], bound[0]["person_code"]) == (
                atena_id,
                person_code,
            ):
                return web.json_response({"atena_id": atena_id, "status": "already_registered"})
            if bound:
                raise PersonConflictError(
                    "this 宛名番号 or this person is already registered with another binding"
                )
        else:  # the conflicting binding vanished each time: never seen, but not a 500
            raise PersonConflictError("the registration raced with other changes; send it again")
    log.info("person_registered", caller=system.system_id)
    return web.json_response({"atena_id": atena_id, "status": "registered"}, status=201)


#: The binding and its ``registered`` event, one statement: nothing if either key is bound.
_REGISTER_SQL: Final = """
    WITH bound AS (
        INSERT INTO persons (atena_id, person_code) VALUES ($1, $2)
        ON CONFLICT DO NOTHING RETURNING atena_id)
    INSERT INTO person_events (atena_id, kind, actor, request_id)
    SELECT atena_id, 'registered', $3, $4 FROM bound RETURNING true"""

#: A person registered again under the same 宛名番号 after unregistration (same 符号:
#: the hub reactivated it) or after a purge (the mapping made anew), with its event.
_REREGISTER_SQL: Final = """
    WITH again AS (
        UPDATE persons SET person_code = $2, state = 'active', state_date = NULL,
               state_changed_at = now(), merged_into = NULL
        WHERE atena_id = $1 AND ((state = 'unregistered' AND person_code = $2)
                                 OR state = 'purged')
          AND NOT EXISTS (SELECT 1 FROM persons o WHERE o.person_code = $2
                          AND o.atena_id <> $1)
        RETURNING atena_id)
    INSERT INTO person_events (atena_id, kind, actor, request_id)
    SELECT atena_id, 'reregistered', $3, $4 FROM again RETURNING true"""


async def report_person_event(request: web.Request) -> web.Response:
    """団体内統合宛名システム: 転出 / 死亡 / merge / unregistration of one person."""
    system = await authorize(request, OP_PERSON_LIFECYCLE)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = atena_id_value(request.match_info["atena_id"])
    data = await read_json(request)
    kind = require_str(data, "event", max_length=32)
    into = optional_str(data, "into", max_length=15)
    if into is not None:
        into = atena_id_value(into)
    outcome = await report_event(
        state, system.system_id, atena_id, kind, _date(optional_str(data, "date")), into
    )
    return web.json_response(outcome.to_json(), status=200 if outcome.repeated else 201)


async def read_person(request: web.Request) -> web.Response:
    """A person's state and lifecycle history (never the 符号)."""
    await authorize(request, OP_PERSON_LIFECYCLE)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = atena_id_value(request.match_info["atena_id"])
    return web.json_response(await person_view(state.pool, atena_id))


async def purge(request: web.Request) -> web.Response:
    """Erasure by the agency's operation: superseded 副本 versions and unregistered
    persons' data (of the whole tenant, or of ``atena_ids``); the report is the job's
    (docs/persons.md)."""
    system = await authorize(request, OP_PURGE_PERSONS)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    days = data.get("superseded_age_days", DEFAULT_SUPERSEDED_AGE.days)
    if not isinstance(days, int) or isinstance(days, bool) or days < 0:
        raise ValidationError("superseded_age_days must be a whole number of days, 0 or more")
    atena_ids = _scope(data.get("atena_ids"))
    async with state.pool.acquire() as conn:
        report = await purge_persons(
            conn,
            actor=system.system_id,
            superseded_age=dt.timedelta(days=days),
            atena_ids=atena_ids,
        )
    note_target(request, f"job:{report.job_id}")
    return web.json_response(report.to_json())


def _scope(value: object) -> list[str] | None:
    """``atena_ids``: absent (the whole tenant) or 1..MAX_PURGE_SCOPE 宛名番号."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_PURGE_SCOPE
        or not all(isinstance(v, str) for v in value)
    ):
        raise ValidationError(
            f"atena_ids must be a list of 1 to {MAX_PURGE_SCOPE} 宛名番号 (or left out for all)"
        )
    return [atena_id_value(v) for v in value]


def _date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValidationError("date must be YYYY-MM-DD") from None


def _hub_refusal(error: tuple[str, str], status: int) -> RelayedRefusalError:
    code, message = error
    return RelayedRefusalError(code, f"hub refused: {message}", status)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_post("/v1/persons", register_person)
    internal.router.add_post("/v1/persons/purge", purge)
    internal.router.add_get("/v1/persons/{atena_id}", read_person)
    internal.router.add_post("/v1/persons/{atena_id}/events", report_person_event)
