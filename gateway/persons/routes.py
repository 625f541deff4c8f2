"""符号取得: a core system registers a person; only 符号 ↔ 団体内統合宛名番号 is kept.

The 個人番号 goes to the hub (for a 取得番号, then the 符号) and no further: it is
never stored, logged or echoed here.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    AcquisitionRequest,
    AcquisitionResponse,
    CodeRequest,
    CodeResponse,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_REGISTER_PERSON
from chukan.gateway.core.errors import (
    IndividualNumberInvalidError,
    PersonConflictError,
    RelayedRefusalError,
    UpstreamError,
)
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.validation import atena_id_value
from chukan.gateway.core.web import read_json, require_str

log = structlog.get_logger("chukan.gateway")


async def register_person(request: web.Request) -> web.Response:
    """符号取得: 宛名番号 + 個人番号 → 符号 from the hub; only 符号 ↔ 宛名番号 is kept."""
    system = await authorize(request, OP_REGISTER_PERSON)
    state = request.config_dict[GATEWAY_STATE]
    data = await read_json(request)
    atena_id = atena_id_value(require_str(data, "atena_id", max_length=15))
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
                "INSERT INTO persons (atena_id, person_code) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                atena_id,
                person_code,
            )
            if inserted:
                break
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


def _hub_refusal(error: tuple[str, str], status: int) -> RelayedRefusalError:
    code, message = error
    return RelayedRefusalError(code, f"hub refused: {message}", status)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_post("/v1/persons", register_person)
