"""Outgoing queries (情報照会): sending to the hub, concluding, requester-side records."""

from __future__ import annotations

import asyncio
import json
from typing import Final

import structlog

from chukan.codecs.envelope import (
    QueryRequest,
)
from chukan.permits import (
    AuthorizationList,
)

from . import db
from .errors import (
    UpstreamError,
)
from .listsync import require_list
from .records import count_record
from .state import GatewayState

log = structlog.get_logger("chukan.gateway")


def current_list(state: GatewayState) -> AuthorizationList:
    """The list in force; 503 ``authorization_list_unavailable`` (with the reason) without one."""
    return require_list(state)


async def insert_requester_record(
    conn: db.Conn,
    state: GatewayState,
    query_id: str,
    outcome: str,
    reason: str | None,
) -> None:
    """The requester's record of a concluded query (chained by the database; see records)."""
    await conn.execute(
        """INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
               business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
               provided_at, outcome, reason_code, non_disclosure)
           SELECT 'requester', q.query_id, q.permit_id, $2, q.provider, q.business_code,
                  q.procedure_code, q.item_code, q.legal_basis, q.atena_id, q.created_at,
                  CASE WHEN $3 = 'provided' THEN q.answered_at END, $3, $4, q.non_disclosure
           FROM queries q WHERE q.query_id = $1""",
        query_id,
        state.config.agency_code,
        outcome,
        reason,
    )
    count_record(state.config.agency_code, "requester", outcome)


async def send_query(state: GatewayState, query_id: str) -> None:
    """Send a queued query to the hub, retrying with backoff while the hub is unreachable."""
    timing = state.config.timing
    for attempt in range(1, timing.send_attempts + 1):
        row = await state.pool.fetchrow(
            "SELECT q.*, p.person_code FROM queries q JOIN persons p USING (tenant, atena_id) "
            "WHERE q.query_id = $1",
            query_id,
        )
        if row is None or row["status"] != "queued":
            return
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
        await state.pool.execute(
            "UPDATE queries SET attempts = attempts + 1 WHERE query_id = $1", query_id
        )
        try:
            reply = await state.hub.send(body)
        except UpstreamError:
            log.info("query_send_retry", query_id=query_id, attempt=attempt)
            await asyncio.sleep(timing.send_backoff * 2 ** (attempt - 1))
            continue
        if reply.status == 202:
            permit_id = json.loads(reply.body).get("permit_id")
            await state.pool.execute(
                "UPDATE queries SET status = 'sent', sent_at = now(), "
                "permit_id = COALESCE(permit_id, $2) WHERE query_id = $1 AND status = 'queued'",
                query_id,
                permit_id,
            )
            log.info("query_sent", query_id=query_id, permit_id=permit_id)
            return
        if 400 <= reply.status < 500:
            code, message = reply.error()
            await conclude_refused(state, query_id, code, message)
            return
        await asyncio.sleep(timing.send_backoff * 2 ** (attempt - 1))
    await conclude_refused(
        state, query_id, "hub_unreachable", "the hub could not be reached", status="failed"
    )


#: The requester's record, appended from the row a conclusion just updated: one
#: statement, so the record chain's lock is not held across a client round trip.
#: The requester is this agency: the row's tenant.
_RECORD_CONCLUDED = """
    recorded AS (
        INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
            business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
            provided_at, outcome, reason_code, non_disclosure)
        SELECT 'requester', q.query_id, q.permit_id, q.tenant, q.provider, q.business_code,
               q.procedure_code, q.item_code, q.legal_basis, q.atena_id, q.created_at,
               CASE WHEN q.status = 'answered' THEN q.answered_at END,
               CASE WHEN q.status = 'answered' THEN 'provided' ELSE 'refused' END,
               q.reason_code, q.non_disclosure
        FROM concluded q RETURNING 1)
    SELECT count(*) FROM recorded"""


def _conclude(update: str) -> str:
    """A conclusion (an UPDATE of one query; constant SQL) and its record, as one statement."""
    return f"WITH concluded AS ({update} RETURNING *),{_RECORD_CONCLUDED}"


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
    status: str = "refused",
    permit_id: str | None = None,
) -> None:
    recorded = await state.pool.fetchval(
        CONCLUDE_REFUSED_SQL,
        query_id,
        status,
        code,
        message[:500],
        permit_id,
    )
    if recorded:
        count_record(state.config.agency_code, "requester", "refused")
    state.notify(query_id)
    log.info("query_refused", query_id=query_id, code=code)
