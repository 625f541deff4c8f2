"""Internal API for the agency's core systems: people, replica, queries, records."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    AcquisitionRequest,
    AcquisitionResponse,
    CodeRequest,
    CodeResponse,
    new_message_id,
)
from chukan.codecs.individual_number import is_valid_individual_number
from chukan.gateway.core import db
from chukan.gateway.core.config import (
    OP_READ_QUERY,
    OP_READ_RECORDS,
    OP_REGISTER_PERSON,
    OP_SUBMIT_QUERY,
)
from chukan.gateway.core.errors import (
    IndividualNumberInvalidError,
    PersonConflictError,
    PersonUnknownError,
    QueryUnknownError,
    RelayedRefusalError,
    UpstreamError,
    ValidationError,
)
from chukan.gateway.core.state import (
    AGENCY_PATTERN,
    ATENA_PATTERN,
    GATEWAY_STATE,
    ITEM_CODE_PATTERN,
    PROCEDURE_CODE_PATTERN,
    QUERY_ID_PATTERN,
    authorize,
    utcnow,
)
from chukan.gateway.core.web import (
    optional_str,
    read_json,
    require_str,
)
from chukan.gateway.hublink.listsync import LIST_SYNC, list_status
from chukan.gateway.query.lifecycle import (
    current_list,
    first_answer,
    idempotency_key,
    insert_requester_record,
    request_digest,
    send_query,
    submitted,
)
from chukan.gateway.replica.routes import store_item_request
from chukan.permits import (
    NotAuthorizedError,
)

log = structlog.get_logger("chukan.gateway")

# -- internal API --------------------------------------------------------------------------


def _atena(value: str) -> str:
    if not ATENA_PATTERN.match(value):
        raise ValidationError("団体内統合宛名番号 must be 1 to 15 digits")
    return value


async def register_person(request: web.Request) -> web.Response:
    """符号取得: 宛名番号 + 個人番号 → 符号 from the hub; only 符号 ↔ 宛名番号 is kept."""
    system = await authorize(request, OP_REGISTER_PERSON)
    state = request.config_dict[GATEWAY_STATE]
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


async def store_item(request: web.Request) -> web.Response:
    """副本: a new version of one 特定個人情報名 for one person (see ``replica``)."""
    return await store_item_request(request)


async def submit_query(request: web.Request) -> web.Response:
    """情報照会: accepted at once with a query id; sent to the hub in the background."""
    system = await authorize(request, OP_SUBMIT_QUERY)
    state = request.config_dict[GATEWAY_STATE]
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
    non_disclosure = data.get("non_disclosure", False)
    if not isinstance(non_disclosure, bool):
        raise ValidationError("non_disclosure must be true or false")
    reference = optional_str(data, "reference_date", max_length=10)
    try:
        reference_date = dt.date.fromisoformat(reference) if reference else None
    except ValueError:
        raise ValidationError("reference_date must be YYYY-MM-DD") from None
    key = idempotency_key(request)
    digest = request_digest(
        atena_id, procedure, item_code, provider, non_disclosure, reference_date
    )
    if key is not None:
        first = await first_answer(state.pool, system.system_id, key, digest)
        if first is not None:
            return first
    person_code = await state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", atena_id
    )
    if person_code is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    now = utcnow()
    authorization = current_list(state)
    row = authorization.find(state.config.agency_code, provider, procedure, item_code, now.date())
    query_id = new_message_id()
    status, reason = ("queued", None) if row is not None else ("refused", "not_authorized")
    async with state.pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """INSERT INTO queries (query_id, atena_id, provider, business_code, procedure_code,
                   item_code, legal_basis, reference_date, status, reason_code, submitted_by,
                   expires_at, answered_at, non_disclosure, idempotency_key, request_digest,
                   next_attempt_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                       CASE WHEN $9 = 'refused' THEN now() END, $13, $14, $15,
                       now() + $16::interval)
               ON CONFLICT (tenant, submitted_by, idempotency_key)
                   WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING 1""",
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
            non_disclosure,
            key,
            digest,
            # The sweep takes the query up only if the send below does not conclude.
            dt.timedelta(seconds=state.config.timing.http_timeout * 2),
        )
        if inserted is None:  # the same key, submitted concurrently, won
            assert key is not None
            conn_first = await first_answer(conn, system.system_id, key, digest)
            assert conn_first is not None
            return conn_first
        if row is None:
            await insert_requester_record(conn, state, query_id, "refused", reason)
    if row is None:
        log.info("query_refused_locally", provider=provider, item_code=item_code)
        raise NotAuthorizedError(
            "the authorization list has no row for this requester, provider, procedure and item"
        )
    state.spawn(send_query(state, query_id), name=f"send-{query_id}")
    log.info("query_submitted", query_id=query_id, provider=provider, caller=system.system_id)
    return submitted(query_id)


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
        "result_deleted": row["result_deleted_at"] is not None,
    }


async def get_query(request: web.Request) -> web.Response:
    """Result of a query; ``?wait=N`` long-polls up to N seconds for a final state."""
    system = await authorize(request, OP_READ_QUERY)
    state = request.config_dict[GATEWAY_STATE]
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
        if row["status"] not in ("queued", "sent") and row["collected_at"] is None:
            # The retention clock of the deletion job (ops.purge_results) starts now.
            await state.pool.execute(
                "UPDATE queries SET collected_at = now() "
                "WHERE query_id = $1 AND collected_at IS NULL",
                query_id,
            )
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
    state = request.config_dict[GATEWAY_STATE]
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
                    k: (
                        v.isoformat()
                        if isinstance(v, dt.datetime | dt.date)
                        else v.hex()
                        if isinstance(v, bytes)
                        else v
                    )
                    for k, v in dict(r).items()
                }
                for r in rows
            ]
        }
    )


async def health(request: web.Request) -> web.Response:
    """Liveness and, for operators, whether the database answers and a valid authorization
    list is in force: ``degraded`` without either; 503 when the database does not answer
    ``SELECT 1`` within ``ops.ready_timeout`` (nothing can be served), 200 otherwise."""
    state = request.config_dict[GATEWAY_STATE]
    database = await db.probe(state.pool, state.config.ops.ready_timeout)
    authorization = list_status(state, request.config_dict[LIST_SYNC])
    return web.json_response(
        {
            "status": "ok" if database["ok"] and authorization["available"] else "degraded",
            "agency": state.config.agency_code,
            "database": database,
            "authorization_list": authorization,
        },
        status=200 if database["ok"] else 503,
    )
