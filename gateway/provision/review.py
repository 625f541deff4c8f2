"""Provisions held for manual review (自動応答不可): queue, decisions, deferred answers.

When a provision request names a person and item whose manual-review flag is set,
the provider gateway consumes the permit, records the provision as ``held``, puts
the request in ``review_queue`` (with the requester's key and the replica versions
in force on the reference date) — all in ``replica.PROVISION_SQL``'s one statement —
and answers the hub HTTP 202; the hub marks the query held. Nothing is sent to the
requester until someone decides:

* **approve** — the versions are combined, sealed for the requester's key and sent
  as a ``ProvisionAnswer`` (sender = this agency, receiver = the requester), signed
  with this gateway's key, to the hub's ``/network/v1/messages``, which routes it
  (a deferred answer). Nothing to provide any more → the answer is a refusal with
  ``item_not_found`` (or ``replica_inconsistent``); the person unregistered meanwhile
  (the 宛名システム reported it after the query was held) → ``person_unregistered``;
* **refuse** — a ``ProvisionAnswer`` refusal with a reason code (default
  ``manual_review_refused``).

Both outcomes are recorded as provision records (a second record after ``held``)
in the same transaction as the decision, before anything is sent. Sending is
retried with backoff, and resumed when the gateway starts.

Who decides: :func:`decide_review` takes the decider's identity (:class:`Decider`).
The internal API calls it for core-system credentials holding ``review.decide``
(and lists the queue with ``review.read``); the staff console calls it for sessions
with the approver role (``/staff/v1/review/...``) as ``Decider("staff", username)``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import ProvisionAnswer, answer_aad
from chukan.gateway.core import db
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_DECIDE_REVIEW, OP_READ_REVIEW
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.hubclient import HubReply
from chukan.gateway.core.retry import jittered_backoff
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.validation import QUERY_ID_PATTERN
from chukan.gateway.core.web import SIGNATURE_HEADER, read_json, signature_header
from chukan.gateway.provision.errors import ReviewDecidedError, ReviewUnknownError
from chukan.gateway.records.store import RecordEntry, write_record
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.items import provision_document
from chukan.gateway.staff.roles import ROLE_APPROVER, ROLE_AUDITOR
from chukan.gateway.staff.sessions import StaffSession, audit_staff, require_staff
from chukan.keys import public_encryption_key, seal

log = structlog.get_logger("chukan.gateway")

#: Reason code of a provision refused by staff (unless the decider gives another).
REVIEW_REFUSED: Final = "manual_review_refused"
#: Reason code of an approved provision whose person was unregistered while it was held.
PERSON_UNREGISTERED: Final = "person_unregistered"
#: Reason recorded with the ``held`` provision record.
REASON_CODE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
REVIEW_STATUSES: Final = ("pending", "approved", "refused")
REJECTED_PREFIX: Final = "rejected:"


@dataclass(frozen=True, slots=True)
class Decider:
    """Who decides: ``system`` (internal-API credential) or ``staff`` (a staff account)."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


# -- deciding ----------------------------------------------------------------------------


async def _contents(conn: db.Executor, ids: list[int]) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT content FROM replica_items WHERE id = ANY($1::bigint[]) AND NOT deleted "
        "ORDER BY record_key",
        ids,
    )
    return [r["content"] for r in rows]


async def _unregistered_meanwhile(conn: db.Executor, atena_id: str) -> bool:
    """Whether the person was unregistered since the provision was held: an approval then
    refuses as an immediate provision would (docs/persons.md).  The row is share-locked
    so that an unregistration reported at the same time comes wholly before or after."""
    state = await conn.fetchval("SELECT state FROM persons WHERE atena_id = $1 FOR SHARE", atena_id)
    return state in ("unregistered", "purged")


def _outcome_of(item_code: str, contents: list[bytes]) -> tuple[str, str | None]:
    if not contents:
        return "refused", "item_not_found"
    try:
        provision_document(item_code, contents)
    except ReplicaInconsistentError as exc:
        return "refused", exc.code
    return "provided", None


async def decide_review(
    state: GatewayState,
    query_id: str,
    *,
    approve: bool,
    decider: Decider,
    reason_code: str | None = None,
) -> dict[str, Any]:
    """Approve or refuse a held provision, record it, then send the answer via the hub.

    The decision and its provision record are committed before anything is sent;
    the answer is sent at once and, if the hub cannot be reached, retried in the
    background. Returns the review as JSON with ``delivered``.
    """
    if reason_code is not None and not REASON_CODE_PATTERN.match(reason_code):
        raise ValidationError("reason_code must be lower-case letters, digits and '_'")
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM review_queue WHERE query_id = $1 FOR UPDATE", query_id
        )
        if row is None:
            raise ReviewUnknownError("no held provision with this query id")
        if row["status"] != "pending":
            raise ReviewDecidedError(f"the provision was already {row['status']}")
        reason: str | None
        if approve:
            status = "approved"
            if await _unregistered_meanwhile(conn, row["atena_id"]):
                outcome, reason = "refused", PERSON_UNREGISTERED
            else:
                outcome, reason = _outcome_of(
                    row["item_code"], await _contents(conn, list(row["replica_ids"]))
                )
        else:
            status, outcome, reason = "refused", "refused", reason_code or REVIEW_REFUSED
        await conn.execute(
            """UPDATE review_queue SET status = $2, outcome = $3, reason_code = $4,
                   decided_by = $5, decided_at = now()
               WHERE query_id = $1""",
            query_id,
            status,
            outcome,
            reason,
            str(decider),
        )
        await write_record(
            conn,
            state.config.agency_code,
            RecordEntry(
                role="provider",
                query_id=query_id,
                permit_id=row["permit_id"],
                requester=row["requester"],
                provider=state.config.agency_code,
                business_code=row["business_code"],
                procedure_code=row["procedure_code"],
                item_code=row["item_code"],
                legal_basis=row["legal_basis"],
                atena_id=row["atena_id"],
                requested_at=row["requested_at"],
                provided_at=utcnow() if outcome == "provided" else None,
                outcome=outcome,
                reason_code=reason,
                non_disclosure=row["non_disclosure"],
            ),
        )
    log.info(
        "review_decided",
        query_id=query_id,
        status=status,
        outcome=outcome,
        reason=reason,
        decider=str(decider),
    )
    sent = await deliver_decision(state, query_id)  # if not now, the sweep sends it later
    answer = await review_json(state.pool, query_id)
    answer["delivered"] = sent == "sent"
    return answer


# -- sending the deferred answer ---------------------------------------------------------


async def _answer_for(state: GatewayState, row: asyncpg.Record) -> ProvisionAnswer:
    payload = None
    if row["outcome"] == "provided":
        document = provision_document(
            row["item_code"], await _contents(state.pool, list(row["replica_ids"]))
        )
        aad = answer_aad(
            row["query_id"], row["permit_id"], state.config.agency_code, row["requester"]
        )
        recipient = public_encryption_key(row["requester_key_id"], row["requester_key"])
        payload = seal(recipient, document, aad)
    return ProvisionAnswer(
        query_id=row["query_id"],
        permit_id=row["permit_id"],
        outcome="provided" if row["outcome"] == "provided" else "refused",
        reason_code=row["reason_code"],
        payload=payload,
    )


async def deliver_decision(state: GatewayState, query_id: str) -> str:
    """One attempt to send a decided review's answer: ``sent``, ``rejected`` or ``retry``.

    The envelope is built afresh for every attempt (new message id and timestamp,
    sealed again from the immutable replica versions), so a late retry is not stale.
    """
    row = await state.pool.fetchrow(
        "UPDATE review_queue SET send_attempts = send_attempts + 1 "
        "WHERE query_id = $1 AND status <> 'pending' AND sent_at IS NULL RETURNING *",
        query_id,
    )
    if row is None:
        return "sent"
    message = state.hub.envelope(await _answer_for(state, row), receiver=row["requester"])
    error: str | None
    try:
        async with state.hub.session.post(
            state.hub.base_url.rstrip("/") + "/network/v1/messages",
            data=message,
            headers={
                "Content-Type": "application/xml",
                SIGNATURE_HEADER: signature_header(state.keys.signing, message),
            },
            timeout=aiohttp.ClientTimeout(total=state.config.timing.http_timeout),
        ) as response:
            reply = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        error, status, reply = type(exc).__name__, 0, b""
    if 200 <= status < 300:
        await state.pool.execute(
            "UPDATE review_queue SET sent_at = now(), send_error = NULL WHERE query_id = $1",
            query_id,
        )
        log.info("review_answer_sent", query_id=query_id, outcome=row["outcome"])
        return "sent"
    rejected = 400 <= status < 500
    if rejected:
        error = REJECTED_PREFIX + HubReply(status, reply, None).error()[0]
    elif status:
        error = f"HTTP {status}"
    timing = state.config.timing
    await state.pool.execute(
        "UPDATE review_queue SET send_error = $2, next_attempt_at = now() + $3 WHERE query_id = $1",
        query_id,
        error,
        jittered_backoff(row["send_attempts"], timing.send_backoff, timing.max_backoff),
    )
    log.warning("review_answer_not_sent", query_id=query_id, error=error)
    return "rejected" if rejected else "retry"


async def due_decisions(state: GatewayState, limit: int) -> list[str]:
    """Decided answers not yet sent whose next attempt is due (claimed for a while)."""
    timing = state.config.timing
    rows = await state.pool.fetch(
        """UPDATE review_queue r SET next_attempt_at = now() + $2
           FROM (SELECT tenant, query_id FROM review_queue
                 WHERE status <> 'pending' AND sent_at IS NULL
                   AND (send_error IS NULL OR send_error NOT LIKE 'rejected:%')
                   AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
           WHERE r.tenant = due.tenant AND r.query_id = due.query_id
           RETURNING r.query_id, r.send_attempts""",
        limit,
        dt.timedelta(seconds=timing.http_timeout * 2),
    )
    return [row["query_id"] for row in rows]


# -- reading -----------------------------------------------------------------------------


def _iso(value: dt.date | dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _records(conn: db.Executor, ids: list[int]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT record_key, version, valid_from, valid_to, digest FROM replica_items "
        "WHERE id = ANY($1::bigint[]) ORDER BY record_key",
        ids,
    )
    return [
        {
            "record_key": r["record_key"],
            "version": r["version"],
            "valid_from": _iso(r["valid_from"]),
            "valid_to": _iso(r["valid_to"]),
            "digest": r["digest"],
        }
        for r in rows
    ]


def _row_json(row: asyncpg.Record, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "query_id": row["query_id"],
        "permit_id": row["permit_id"],
        "requester": row["requester"],
        "business_code": row["business_code"],
        "procedure_code": row["procedure_code"],
        "item_code": row["item_code"],
        "legal_basis": row["legal_basis"],
        "atena_id": row["atena_id"],
        "reference_date": _iso(row["reference_date"]),
        "requested_at": _iso(row["requested_at"]),
        "status": row["status"],
        "outcome": row["outcome"],
        "reason_code": row["reason_code"],
        "decided_by": row["decided_by"],
        "decided_at": _iso(row["decided_at"]),
        "records": records,
        "delivery": {
            "sent_at": _iso(row["sent_at"]),
            "attempts": row["send_attempts"],
            "error": row["send_error"],
        },
    }


async def review_json(conn: db.Executor, query_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM review_queue WHERE query_id = $1", query_id)
    if row is None:
        raise ReviewUnknownError("no held provision with this query id")
    return _row_json(row, await _records(conn, list(row["replica_ids"])))


def _query_id(request: web.Request) -> str:
    query_id = request.match_info["query_id"]
    if not QUERY_ID_PATTERN.match(query_id):
        raise ValidationError("malformed query id")
    return query_id


async def list_reviews(request: web.Request) -> web.Response:
    """``GET /internal/v1/review[?status=pending|approved|refused|all]`` (oldest first)."""
    await authorize(request, OP_READ_REVIEW)
    return await _list_reviews(request)


async def _list_reviews(request: web.Request, session: StaffSession | None = None) -> web.Response:
    """The queue; for staff, only the items their office's item classes reach."""
    state = request.config_dict[GATEWAY_STATE]
    wanted = request.query.get("status", "pending")
    if wanted not in (*REVIEW_STATUSES, "all"):
        raise ValidationError("status must be pending, approved, refused or all")
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM review_queue WHERE ($1 = 'all' OR status = $1) "
            "ORDER BY requested_at LIMIT 1000",
            wanted,
        )
        reviews = [
            _row_json(r, await _records(conn, list(r["replica_ids"])))
            for r in rows
            if session is None or session.sees(r["item_code"])
        ]
    return web.json_response({"reviews": reviews})


async def get_review(request: web.Request) -> web.Response:
    """``GET /internal/v1/review/{query_id}``: the review and the document it would answer."""
    await authorize(request, OP_READ_REVIEW)
    return await _get_review(request)


async def _get_review(request: web.Request) -> web.Response:
    state = request.config_dict[GATEWAY_STATE]
    query_id = _query_id(request)
    async with state.pool.acquire() as conn:
        answer = await review_json(conn, query_id)
        row = await conn.fetchrow(
            "SELECT item_code, replica_ids FROM review_queue WHERE query_id = $1", query_id
        )
        assert row is not None
        contents = await _contents(conn, list(row["replica_ids"]))
    try:
        document = provision_document(row["item_code"], contents) if contents else None
    except ReplicaInconsistentError:
        document = None
    answer["document"] = document.decode("utf-8") if document is not None else None
    return web.json_response(answer)


async def _decide_request(request: web.Request, approve: bool) -> web.Response:
    system = await authorize(request, OP_DECIDE_REVIEW)
    return web.json_response(await _decide(request, approve, Decider("system", system.system_id)))


async def _decide(request: web.Request, approve: bool, decider: Decider) -> dict[str, Any]:
    state = request.config_dict[GATEWAY_STATE]
    query_id = _query_id(request)
    reason: str | None = None
    if request.can_read_body:
        data = await read_json(request)
        value = data.get("reason_code")
        if value is not None and not isinstance(value, str):
            raise ValidationError("reason_code must be a string")
        reason = value
    if approve and reason is not None:
        raise ValidationError("an approval takes no reason_code")
    return await decide_review(
        state, query_id, approve=approve, decider=decider, reason_code=reason
    )


async def approve_review(request: web.Request) -> web.Response:
    """``POST /internal/v1/review/{query_id}/approve``."""
    return await _decide_request(request, approve=True)


async def refuse_review(request: web.Request) -> web.Response:
    """``POST /internal/v1/review/{query_id}/refuse`` with optional ``{"reason_code"}``."""
    return await _decide_request(request, approve=False)


# -- staff console: approvers decide (職員: 承認者) ------------------------------------------


async def staff_list_reviews(request: web.Request) -> web.Response:
    """``GET /staff/v1/review``: approvers and auditors see the queue."""
    session = await require_staff(request, ROLE_APPROVER, ROLE_AUDITOR)
    return await _list_reviews(request, session)


async def staff_get_review(request: web.Request) -> web.Response:
    """``GET /staff/v1/review/{query_id}``: one held provision and the document it would send."""
    session = await require_staff(request, ROLE_APPROVER, ROLE_AUDITOR)
    await _require_in_scope(request, session)
    await audit_staff(request, "review.read", target=_query_id(request))
    return await _get_review(request)


async def _require_in_scope(request: web.Request, session: StaffSession) -> None:
    """A held provision of an item outside the staff member's item classes is, for them,
    no held provision at all (404 ``review_unknown``, as for an unknown query id)."""
    item_code = await request.config_dict[GATEWAY_STATE].pool.fetchval(
        "SELECT item_code FROM review_queue WHERE query_id = $1", _query_id(request)
    )
    if item_code is None or not session.sees(item_code):
        raise ReviewUnknownError("no held provision with this query id")


async def staff_decider(request: web.Request) -> Decider:
    """The role check of a staff decision (JSON API and console alike): approvers only."""
    session = await require_staff(request, ROLE_APPROVER)
    await _require_in_scope(request, session)
    return Decider("staff", session.username)


async def audit_decision(request: web.Request, answer: dict[str, Any]) -> None:
    """Put a staff decision (the review's JSON after it) on the audit trail."""
    await audit_staff(
        request,
        "review.approve" if answer["status"] == "approved" else "review.refuse",
        target=answer["query_id"],
        detail={"outcome": answer["outcome"], "reason_code": answer["reason_code"]},
    )


async def _staff_decide(request: web.Request, approve: bool) -> web.Response:
    decider = await staff_decider(request)
    answer = await _decide(request, approve, decider)
    await audit_decision(request, answer)
    return web.json_response(answer)


async def staff_approve_review(request: web.Request) -> web.Response:
    """``POST /staff/v1/review/{query_id}/approve`` (role approver)."""
    return await _staff_decide(request, approve=True)


async def staff_refuse_review(request: web.Request) -> web.Response:
    """``POST /staff/v1/review/{query_id}/refuse`` (role approver), optional ``{"reason_code"}``."""
    return await _staff_decide(request, approve=False)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_get("/v1/review", list_reviews)
    internal.router.add_get("/v1/review/{query_id}", get_review)
    internal.router.add_post("/v1/review/{query_id}/approve", approve_review)
    internal.router.add_post("/v1/review/{query_id}/refuse", refuse_review)


def add_staff_routes(staff: web.Application) -> None:
    """Routes on the staff's ``/staff`` face (paths relative to its prefix)."""
    staff.router.add_get("/v1/review", staff_list_reviews)
    staff.router.add_get("/v1/review/{query_id}", staff_get_review)
    staff.router.add_post("/v1/review/{query_id}/approve", staff_approve_review)
    staff.router.add_post("/v1/review/{query_id}/refuse", staff_refuse_review)
