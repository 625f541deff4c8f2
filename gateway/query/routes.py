"""情報照会 for core systems: submit a query, collect (or long-poll) its result."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.catalog import AGENCY_CODE_PATTERN, ITEM_CODE_PATTERN, PROCEDURE_CODE_PATTERN
from chukan.codecs.envelope import new_message_id
from chukan.gateway.core.access import also_permits, authorize
from chukan.gateway.core.aio import wait_event
from chukan.gateway.core.config import OP_READ_QUERY, OP_SUBMIT_QUERY
from chukan.gateway.core.errors import PersonUnknownError, QueryUnknownError, ValidationError
from chukan.gateway.core.notices import NOTICES
from chukan.gateway.core.oplog import note_also
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.validation import QUERY_ID_PATTERN, atena_id_value
from chukan.gateway.core.web import current_request_id, optional_str, read_json, require_str
from chukan.gateway.query.lifecycle import (
    OPEN_STATUSES,
    QUERY_CHANNEL,
    QueryStatus,
    current_list,
    first_answer,
    idempotency_key,
    insert_requester_record,
    request_digest,
    send_first,
    submitted,
)
from chukan.gateway.records.witnessing import require_recording
from chukan.permits import NotAuthorizedError

log = structlog.get_logger("chukan.gateway")

#: A long poll reads its query again at least this often (notices are hints).
LOOK_AGAIN: Final = 2.0
#: Longest ``wait`` preference read (delta-seconds, RFC 7240); the gateway's max_wait caps it.
_MAX_PREFER_DIGITS: Final = 6

#: A submission in one statement: the person's 符号 looked up and the query inserted
#: (queued ones already counting their first attempt, made at once by this process), or
#: nothing inserted when the person is unknown or the same key was submitted before.
_SUBMIT_SQL: Final = """
    WITH person AS (
        SELECT person_code FROM persons WHERE atena_id = $2 AND person_code IS NOT NULL),
    inserted AS (
        INSERT INTO queries (query_id, atena_id, provider, business_code, procedure_code,
            item_code, legal_basis, reference_date, status, reason_code, submitted_by,
            expires_at, answered_at, non_disclosure, idempotency_key, request_digest,
            next_attempt_at, request_id, attempts)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
               CASE WHEN $9 = 'refused' THEN now() END, $13, $14, $15,
               now() + $16::interval, $17, CASE WHEN $9 = 'queued' THEN 1 ELSE 0 END
        FROM person
        ON CONFLICT (tenant, submitted_by, idempotency_key)
            WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING 1)
    SELECT (SELECT person_code FROM person) AS person_code,
           EXISTS (SELECT 1 FROM inserted) AS inserted"""

#: A long poll's read; a concluded query's result counts as collected from the first
#: read that returns it (the retention clock of ops.purge_results starts), in the same
#: statement.  Whether it is concluded is decided on the row this statement read.
_READ_SQL: Final = """
    WITH q AS (SELECT * FROM queries WHERE query_id = $1 AND submitted_by = $2),
    collected AS (
        UPDATE queries SET collected_at = now()
        WHERE query_id = $1 AND collected_at IS NULL
          AND EXISTS (SELECT 1 FROM q WHERE status NOT IN ('queued', 'sent')
                                        AND collected_at IS NULL))
    SELECT * FROM q"""


async def submit_query(request: web.Request) -> web.Response:
    """情報照会: accepted at once with a query id; sent to the hub in the background.

    With ``Prefer: wait=N`` the answer is the result itself when it comes within N seconds.
    """
    system = await authorize(request, OP_SUBMIT_QUERY)
    state = request.config_dict[GATEWAY_STATE]
    await require_recording(state)  # 503 records_unwitnessed: see docs/records.md
    wait = preferred_wait(request)
    if wait is not None and not also_permits(request, system, OP_READ_QUERY):
        wait = None  # a caller that may not read results is answered as without it
    data = await read_json(request)
    atena_id = atena_id_value(require_str(data, "atena_id", max_length=15))
    procedure = require_str(data, "procedure_code", max_length=16)
    item_code = require_str(data, "item_code", max_length=16)
    provider = require_str(data, "provider", max_length=16)
    if not PROCEDURE_CODE_PATTERN.match(procedure):
        raise ValidationError("事務手続きコード must be JT followed by 14 digits")
    if not ITEM_CODE_PATTERN.match(item_code):
        raise ValidationError("特定個人情報名コード must be TM followed by 14 digits")
    if not AGENCY_CODE_PATTERN.match(provider):
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
    now = utcnow()
    authorization = current_list(state)
    row = authorization.find(state.config.agency_code, provider, procedure, item_code, now.date())
    query_id = new_message_id()
    status, reason = (
        (QueryStatus.QUEUED, None) if row is not None else (QueryStatus.REFUSED, "not_authorized")
    )
    values = (
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
        # Resends and the requester's record carry the submission's request id.
        current_request_id(),
    )
    if row is not None:  # one statement, its own commit: nothing else to write with it
        inserted = await state.pool.fetchrow(_SUBMIT_SQL, *values)
    else:  # refused by our list: the query and its record in one transaction
        async with state.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchrow(_SUBMIT_SQL, *values)
            assert inserted is not None
            if inserted["person_code"] is not None and inserted["inserted"]:
                await insert_requester_record(conn, state, query_id)
    assert inserted is not None
    if inserted["person_code"] is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    if not inserted["inserted"]:  # the same key, submitted concurrently, won
        assert key is not None
        first = await first_answer(state.pool, system.system_id, key, digest)
        assert first is not None
        return first
    if row is None:
        log.info("query_refused_locally", provider=provider, item_code=item_code)
        raise NotAuthorizedError(
            "the authorization list has no row for this requester, provider, procedure and item"
        )
    sending = {
        "person_code": inserted["person_code"],
        "provider": provider,
        "business_code": row.business_code,
        "procedure_code": procedure,
        "item_code": item_code,
        "reference_date": reference_date,
        "non_disclosure": non_disclosure,
        "attempts": 1,
    }
    state.spawn(send_first(state, query_id, sending), name=f"send-{query_id}")
    log.info("query_submitted", query_id=query_id, provider=provider, caller=system.system_id)
    if wait is None:
        return submitted(query_id)
    # Prefer: wait (RFC 7240): the result itself when it comes within the wait, as the long
    # poll gives it (and counted as collected); else the usual 202. One request instead of
    # two for a core system that waits anyway.
    wait = min(wait, state.config.timing.max_wait)
    # Just submitted: nothing to read before its conclusion is heard of (or LOOK_AGAIN).
    found = await read_concluded(state, query_id, system.system_id, wait, read_first=False)
    if found is None or found["status"] in OPEN_STATUSES:
        response = submitted(query_id)
    else:
        response = web.json_response(_query_json(found))
        note_also(request, "query.read")  # the operation log shows the result was read
    response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


def preferred_wait(request: web.Request) -> float | None:
    """The seconds of a ``Prefer: wait=N`` header (RFC 7240); None without a usable one (a
    preference the server cannot read is ignored, never refused)."""
    for header in request.headers.getall("Prefer", ()):
        for preference in header.split(","):
            name, _, value = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            value = value.strip().strip('"')
            if value.isascii() and value.isdigit() and len(value) <= _MAX_PREFER_DIGITS:
                return float(value)
    return None


def _query_json(row: asyncpg.Record) -> dict[str, Any]:
    result = row["result"]
    return {
        "query_id": row["query_id"],
        "status": "pending" if row["status"] in OPEN_STATUSES else row["status"],
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
    row = await read_concluded(state, query_id, system.system_id, wait)
    if row is None:
        raise QueryUnknownError("no query with this id was submitted by this system")
    return web.json_response(_query_json(row))


async def read_concluded(
    state: GatewayState, query_id: str, system_id: str, wait: float, *, read_first: bool = True
) -> asyncpg.Record | None:
    """The query's row as soon as it is concluded, or as it is after ``wait`` seconds (None:
    this system submitted no such query).  ``read_first=False``: the caller registers the
    wait before the query can conclude (its own submission), so the first read waits for a
    conclusion to be heard of (or LOOK_AGAIN) instead of finding it still open."""
    deadline = time.monotonic() + max(wait, 0.0)
    # Registered before each read: a conclusion committed meanwhile (here, or in another
    # process of this agency: its NOTIFY) sets the event, and the wait ends at once.
    with state.waiting(query_id) as concluded:
        if not read_first:
            await wait_event(concluded, min(max(wait, 0.0), LOOK_AGAIN))
        while True:
            concluded.clear()
            row: asyncpg.Record | None = await state.pool.fetchrow(_READ_SQL, query_id, system_id)
            if row is None:
                return None
            remaining = deadline - time.monotonic()
            if row["status"] not in OPEN_STATUSES or remaining <= 0 or state.stopping.is_set():
                return row
            # Notices are hints and can be lost (a reconnection): look again now and then.
            await wait_event(concluded, min(remaining, LOOK_AGAIN))


def setup_query(app: web.Application) -> None:
    """Long polls hear of conclusions committed by any process of this agency."""

    async def on_notice(payload: str | None) -> None:
        state = app.get(GATEWAY_STATE)
        if state is None:
            return
        if payload is None:  # (re)connected: notices may have been missed
            state.notify_all()
            return
        tenant, _, query_id = payload.partition(" ")
        if tenant == state.config.agency_code:
            state.notify(query_id)

    app[NOTICES].subscribe(QUERY_CHANNEL, on_notice)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_post("/v1/queries", submit_query)
    internal.router.add_get("/v1/queries/{query_id}", get_query)
