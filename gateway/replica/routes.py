"""HTTP endpoints of the replica (副本): single items, the review flag, export, registrations.

Handlers check the request and the caller's grant, then call the store
(:mod:`~chukan.gateway.replica.items`) or the registration pipeline
(:mod:`~chukan.gateway.replica.registration`); the SQL lives there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.codecs.catalog import ITEM_CODE_PATTERN
from chukan.codecs.registration import REGISTRATION_LIMITS
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_READ_REPLICA, OP_WRITE_REPLICA
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.validation import ATENA_PATTERN, MAX_ITEM_BYTES
from chukan.gateway.core.web import read_json, read_xml
from chukan.gateway.replica.items import (
    DEFAULT_RECORD_KEY,
    EXPORT_COLUMNS,
    csv_text,
    export_batches,
    item_history,
    set_flag,
    store_single_item,
    today_jst,
)
from chukan.gateway.replica.registration import (
    RegistrationSource,
    apply_registration,
    received_message,
)

log = structlog.get_logger("chukan.gateway")

#: Set (``true``) on the answer to a MSGID received before: its first answer, repeated.
MESSAGE_ID_HEADER: Final = "Chukan-Replayed"
#: Bodies larger than this are hashed off the event loop.
INLINE_HASH_BYTES: Final = 1024 * 1024


def check_atena(value: str) -> str:
    if not ATENA_PATTERN.match(value):
        raise ValidationError("団体内統合宛名番号 must be 1 to 15 digits")
    return value


def check_item_code(value: str) -> str:
    if not ITEM_CODE_PATTERN.match(value):
        raise ValidationError("特定個人情報名コード must be TM followed by 14 digits")
    return value


def _date_param(query: Any, name: str) -> dt.date | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{name} must be YYYY-MM-DD") from None


def _bool_param(query: Any, name: str) -> bool | None:
    text: str | None = query.get(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise ValidationError(f"{name} must be true or false")
    return text == "true"


# -- single items --------------------------------------------------------------------------


async def store_item_request(request: web.Request) -> web.Response:
    """``PUT /internal/v1/persons/{atena_id}/items/{item_code}``: one new version.

    Query parameters (all optional): ``record_key`` (default ``1``), ``valid_from``
    and ``valid_to`` (YYYY-MM-DD; default today, open ended), ``manual_review``
    (``true``/``false``: sets the person's flag for this item; absent: unchanged).
    """
    system = await authorize(request, OP_WRITE_REPLICA)
    atena_id = check_atena(request.match_info["atena_id"])
    item_code = check_item_code(request.match_info["item_code"])
    manual_review = _bool_param(request.query, "manual_review")
    valid_from = _date_param(request.query, "valid_from")
    valid_to = _date_param(request.query, "valid_to")
    record_key = request.query.get("record_key", DEFAULT_RECORD_KEY)
    content = await read_xml(request, limit=MAX_ITEM_BYTES)
    answer = await store_single_item(
        request.config_dict[GATEWAY_STATE],
        system.system_id,
        atena_id,
        item_code,
        content,
        record_key=record_key,
        valid_from=valid_from,
        valid_to=valid_to,
        manual_review=manual_review,
    )
    return web.json_response(answer, status=201)


async def set_flag_request(request: web.Request) -> web.Response:
    """``PUT …/items/{item_code}/manual-review`` with ``{"manual_review": true|false}``."""
    system = await authorize(request, OP_WRITE_REPLICA)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = check_atena(request.match_info["atena_id"])
    item_code = check_item_code(request.match_info["item_code"])
    data = await read_json(request)
    flag = data.get("manual_review")
    if not isinstance(flag, bool):
        raise ValidationError("field 'manual_review' is required and must be true or false")
    await set_flag(state.pool, atena_id, item_code, flag, system.system_id)
    log.info("manual_review_flag_set", item_code=item_code, flag=flag, caller=system.system_id)
    return web.json_response({"atena_id": atena_id, "item_code": item_code, "manual_review": flag})


async def item_history_request(request: web.Request) -> web.Response:
    """``GET /internal/v1/persons/{atena_id}/items/{item_code}[?on=YYYY-MM-DD]``.

    Every version (history) and the flag; ``in_force`` lists the versions a provision
    with reference date ``on`` (default today in Japan) would combine and answer with.
    """
    await authorize(request, OP_READ_REPLICA)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = check_atena(request.match_info["atena_id"])
    item_code = check_item_code(request.match_info["item_code"])
    on = _date_param(request.query, "on") or today_jst()
    async with state.pool.acquire() as conn:
        answer = await item_history(conn, atena_id, item_code, on)
    return web.json_response(answer)


# -- export (reconciliation) ---------------------------------------------------------------


async def export_request(request: web.Request) -> web.StreamResponse:
    """``GET /internal/v1/replica/export?item_code=TM…[&history=true]`` → CSV.

    Columns: item_code, atena_id, record_key, version, valid_from, valid_to, digest
    (header row; UTF-8; CRLF). Without ``history`` one row per (宛名番号, record key):
    its latest version, records whose latest version is a deletion left out. With
    ``history=true`` every version; deletions have an empty digest.
    """
    system = await authorize(request, OP_READ_REPLICA)
    state = request.config_dict[GATEWAY_STATE]
    item_code = check_item_code(request.query.get("item_code", ""))
    history = bool(_bool_param(request.query, "history"))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="replica-{item_code}.csv"',
        }
    )
    rows = 0
    async with state.pool.acquire() as conn, conn.transaction(readonly=True):
        await response.prepare(request)
        await response.write(csv_text([list(EXPORT_COLUMNS)]).encode("utf-8"))
        async for batch in export_batches(conn, item_code, history=history):
            rows += len(batch)
            await response.write(csv_text(batch).encode("utf-8"))
    await response.write_eof()
    log.info("replica_exported", item_code=item_code, rows=rows, caller=system.system_id)
    return response


# -- registration messages -----------------------------------------------------------------


async def _sha256(data: bytes) -> str:
    if len(data) > INLINE_HASH_BYTES:
        return (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()
    return hashlib.sha256(data).hexdigest()


async def post_registration(request: web.Request) -> web.Response:
    """``POST /internal/v1/replica/registrations``: one IF_DBM_20113_R01 message (XML).

    201 accepted, 200 checked only (test mode), 422 ``registration_rejected`` with
    every rejected entry; a re-sent MSGID gets its first answer again (header
    ``Chukan-Replayed: true``); 409 ``message_id_reused``; 4xx codec errors for
    broken or hostile XML (nothing stored).
    """
    system = await authorize(request, OP_WRITE_REPLICA)
    state = request.config_dict[GATEWAY_STATE]
    body = await read_xml(request, limit=REGISTRATION_LIMITS.max_bytes)
    digest = await _sha256(body)
    # Split by byte ranges, as the bulk import: entries written plainly are read by one
    # pattern each; anything unusual falls back to the streaming parser (same answers).
    async with (
        state.pool.acquire() as conn,
        RegistrationSource(io.BytesIO(body), split=True) as source,
    ):
        outcome = await apply_registration(
            conn, source, body_sha256=digest, stored_by=system.system_id
        )
    headers = {MESSAGE_ID_HEADER: "true"} if outcome.replayed else None
    return web.json_response(outcome.body, status=outcome.status, headers=headers)


async def get_registration(request: web.Request) -> web.Response:
    """``GET /internal/v1/replica/registrations/{message_id}``: the stored answer."""
    await authorize(request, OP_READ_REPLICA)
    state = request.config_dict[GATEWAY_STATE]
    message_id = request.match_info["message_id"]
    if not 1 <= len(message_id) <= 64:
        raise ValidationError("malformed MSGID")
    return web.json_response(await received_message(state.pool, message_id))


# -- registration with the application -----------------------------------------------------


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face: items, export, registration messages."""
    base = "/v1/persons/{atena_id}/items/{item_code}"
    internal.router.add_put(base, store_item_request)
    internal.router.add_get(base, item_history_request)
    internal.router.add_put(base + "/manual-review", set_flag_request)
    internal.router.add_get("/v1/replica/export", export_request)
    internal.router.add_post("/v1/replica/registrations", post_registration)
    internal.router.add_get("/v1/replica/registrations/{message_id}", get_registration)
