"""Outgoing queries (情報照会): statuses, sending to the hub, concluding, requester records.

A query is concluded once (one UPDATE guarded by its open status, with its record
in the same statement); sending is one attempt at a time, and what is not yet
concluded is taken up again by the durable sweep (:mod:`chukan.gateway.query.sweep`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    Body,
    QueryRequest,
)
from chukan.gateway.authlist.sync import require_list
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    IdempotencyKeyReusedError,
    UpstreamError,
    ValidationError,
)
from chukan.gateway.core.hubclient import HubReply
from chukan.gateway.core.retry import jittered_backoff
from chukan.gateway.core.state import GatewayState
from chukan.gateway.core.web import request_id_bound
from chukan.gateway.records.store import count_record
from chukan.permits import (
    AuthorizationList,
    NotAuthorizedError,
)

log = structlog.get_logger("chukan.gateway")


class QueryStatus(StrEnum):
    """The state of an outgoing query at the requester."""

    #: accepted from the core system, not yet acknowledged by the hub
    QUEUED = "queued"
    #: the hub issued a permit; the conclusion has not arrived yet
    SENT = "sent"
    #: the provider's answer arrived and was opened
    ANSWERED = "answered"
    #: refused by the list, the hub or the provider (a signed, final refusal)
    REFUSED = "refused"
    #: expired with no conclusion (see ops.purge_results)
    FAILED = "failed"


OPEN_STATUSES: Final = (QueryStatus.QUEUED, QueryStatus.SENT)
#: Hub refusals worth trying again: they say nothing about the query itself.
RETRYABLE_HUB_CODES: Final = frozenset(
    {"message_replayed", "message_stale", "database_unavailable", "authorization_list_unavailable"}
)


def current_list(state: GatewayState) -> AuthorizationList:
    """The list in force; 503 ``authorization_list_unavailable`` (with the reason) without one."""
    return require_list(state)


IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,200}$")


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` a core system sent (printable ASCII, up to 200), if any."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise ValidationError("Idempotency-Key must be 1 to 200 printable ASCII characters")
    return key


def request_digest(
    atena_id: str,
    procedure_code: str,
    item_code: str,
    provider: str,
    non_disclosure: bool,
    reference_date: dt.date | None,
) -> bytes:
    """What makes two submissions "the same request" (no 個人番号 is ever part of it)."""
    canonical = json.dumps(
        [
            atena_id,
            procedure_code,
            item_code,
            provider,
            non_disclosure,
            reference_date.isoformat() if reference_date else None,
        ]
    )
    return hashlib.sha256(canonical.encode()).digest()


def submitted(query_id: str) -> web.Response:
    """The answer to an accepted submission (and to every retry of it)."""
    return web.json_response({"query_id": query_id, "status": QueryStatus.QUEUED}, status=202)


async def first_answer(
    conn: db.Executor, submitted_by: str, key: str, digest: bytes
) -> web.Response | None:
    """The first answer to a submission with this key; None if the key is new.

    A locally refused submission is refused again; another body under the same key
    is 409 ``idempotency_key_reused``.
    """
    row = await conn.fetchrow(
        "SELECT query_id, request_digest, status, attempts FROM queries "
        "WHERE submitted_by = $1 AND idempotency_key = $2",
        submitted_by,
        key,
    )
    if row is None:
        return None
    if row["request_digest"] != digest:
        raise IdempotencyKeyReusedError("this Idempotency-Key was used for another request")
    log.info("query_submission_repeated", query_id=row["query_id"])
    if row["status"] == QueryStatus.REFUSED and row["attempts"] == 0:
        raise NotAuthorizedError(
            "the authorization list has no row for this requester, provider, procedure and item"
        )
    return submitted(row["query_id"])


async def insert_requester_record(conn: db.Conn, state: GatewayState, query_id: str) -> None:
    """The requester's record of a query concluded at submission (refused by our list)."""
    outcome = await conn.fetchval(_RECORD_SUBMITTED, query_id)
    count_record(state.config.agency_code, "requester", outcome)


async def to_hub(state: GatewayState, body: Body) -> HubReply:
    """Send a query's message to the hub: its exchange (alone or with others) waits for
    a slot of ``state.hub_limit``, so a busy hub's backlog waits here (the query is
    durable) instead of timing out there and being sent again."""
    return await state.hub.send(body)


async def retry_later(state: GatewayState, query_id: str, attempts: int) -> None:
    """When the sweep may try this open query again."""
    timing = state.config.timing
    await state.pool.execute(
        "UPDATE queries SET next_attempt_at = now() + $2 WHERE query_id = $1",
        query_id,
        jittered_backoff(attempts, timing.send_backoff, timing.max_backoff),
    )


async def send_query(state: GatewayState, query_id: str) -> None:
    """One attempt to hand a queued query to the hub (which deduplicates by query id).

    202 → ``sent`` with the permit id; a refusal of the query itself → ``refused``
    (recorded); anything else (unreachable, 5xx, a transient refusal) leaves it
    queued for the sweep, with backoff.
    """
    row = await state.pool.fetchrow(
        "UPDATE queries q SET attempts = attempts + 1 FROM persons p "
        "WHERE q.query_id = $1 AND p.tenant = q.tenant AND p.atena_id = q.atena_id "
        "AND q.status = 'queued' RETURNING q.*, p.person_code",
        query_id,
    )
    if row is None:
        return
    # The submission's request id, also when the sweep resends after a restart.
    with request_id_bound(row["request_id"]):
        await _send_row(state, query_id, row)


async def send_first(state: GatewayState, query_id: str, row: Mapping[str, Any]) -> None:
    """The first attempt, made at once by the process that inserted the query (which
    counted it): the row is what the submission wrote, so nothing is read back."""
    await _send_row(state, query_id, row)


async def _send_row(
    state: GatewayState, query_id: str, row: Mapping[str, Any] | asyncpg.Record
) -> None:
    """The attempt itself, as part of the submission's request (its id goes to the hub)."""
    body = QueryRequest(
        query_id=query_id,
        requester_person_code=row["person_code"],
        provider=row["provider"],
        business_code=row["business_code"],
        procedure_code=row["procedure_code"],
        item_code=row["item_code"],
        reference_date=row["reference_date"],
        non_disclosure=row["non_disclosure"],
    )
    try:
        reply = await to_hub(state, body)
    except UpstreamError:
        log.info("query_send_retry", query_id=query_id, attempt=row["attempts"])
        await retry_later(state, query_id, row["attempts"])
        return
    if reply.status == 202:
        permit_id = json.loads(reply.body).get("permit_id")
        timing = state.config.timing
        # The conclusion normally arrives by delivery; the sweep asks the hub after a while.
        await state.pool.execute(
            "UPDATE queries SET status = 'sent', sent_at = now(), "
            "permit_id = COALESCE(permit_id, $2), next_attempt_at = now() + $3 "
            "WHERE query_id = $1 AND status = 'queued'",
            query_id,
            permit_id,
            dt.timedelta(seconds=timing.max_backoff),
        )
        log.info("query_sent", query_id=query_id, permit_id=permit_id)
        return
    code, message = reply.error()
    if 400 <= reply.status < 500 and code not in RETRYABLE_HUB_CODES:
        await conclude_refused(state, query_id, code, message)
        return
    log.info("query_send_retry", query_id=query_id, attempt=row["attempts"], status=reply.status)
    await retry_later(state, query_id, row["attempts"])


#: The requester's record of a concluded query row (its status says the outcome), as a
#: ``recorded`` CTE over ``source`` (the table, or the rows a conclusion just updated):
#: one statement, so the record chain's lock is not held across a client round trip.
#: The requester is this agency: the row's tenant.  The record's request id is the
#: submission's (metadata beside the chained content; migration 0070).
RECORD_CONCLUDED: Final = """
    recorded AS (
        INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
            business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
            provided_at, outcome, reason_code, non_disclosure, request_id)
        SELECT 'requester', q.query_id, q.permit_id, q.tenant, q.provider, q.business_code,
               q.procedure_code, q.item_code, q.legal_basis, q.atena_id, q.created_at,
               CASE WHEN q.status = 'answered' THEN q.answered_at END,
               CASE WHEN q.status = 'answered' THEN 'provided' ELSE 'refused' END,
               q.reason_code, q.non_disclosure, q.request_id
        FROM {source} q"""


_RECORD_SUBMITTED: Final = (
    f"WITH {RECORD_CONCLUDED.format(source='queries')} WHERE q.query_id = $1 "  # noqa: S608 -- constant fragments, values are parameters
    "RETURNING outcome) SELECT outcome FROM recorded"
)


#: Told when a query concludes (payload ``<tenant> <query id>``), in the concluding
#: statement: long polls in every process of the agency hear of it at commit.
QUERY_CHANNEL: Final = "chukan_query_concluded"


def _conclude(update: str) -> str:
    """A conclusion (an UPDATE of one query; constant SQL), its record and its notice,
    as one statement."""
    recorded = RECORD_CONCLUDED.format(source="concluded")
    return (
        f"WITH concluded AS ({update} RETURNING *),{recorded} RETURNING 1) "  # noqa: S608 -- constant fragments, values are parameters
        "SELECT n, CASE WHEN n > 0 THEN "
        f"pg_notify('{QUERY_CHANNEL}', chukan_tenant() || ' ' || $1) END "
        "FROM (SELECT count(*) AS n FROM recorded) AS c"
    )


CONCLUDE_REFUSED_SQL: Final = _conclude(
    """UPDATE queries SET status = $2, reason_code = $3, reason_message = $4,
           answered_at = now(), permit_id = COALESCE(permit_id, $5)
       WHERE query_id = $1 AND status IN ('queued', 'sent')"""
)
CONCLUDE_ANSWERED_SQL: Final = _conclude(
    """UPDATE queries SET status = 'answered', result = $2, answered_at = now(),
           permit_id = $3, sent_at = COALESCE(sent_at, now())
       WHERE query_id = $1 AND status IN ('queued', 'sent')"""
)


async def conclude_refused(
    state: GatewayState,
    query_id: str,
    code: str,
    message: str,
    *,
    status: QueryStatus = QueryStatus.REFUSED,
    permit_id: str | None = None,
) -> bool:
    """Conclude an open query as refused (recorded in the same statement); False if not open."""
    recorded = await state.pool.fetchval(
        CONCLUDE_REFUSED_SQL,
        query_id,
        str(status),
        code,
        message[:500],
        permit_id,
    )
    if not recorded:
        return False
    count_record(state.config.agency_code, "requester", "refused")
    state.notify(query_id)
    log.info("query_refused", query_id=query_id, code=code)
    return True
