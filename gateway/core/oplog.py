"""操作内容の記録: one row per operation of a core system (``/internal``) or a staff member
(``/staff``: JSON API and console), append-only in ``operation_log``.

Recorded once, centrally: :func:`operation_log_middleware` runs on the internal and the
staff faces and names each route's operation from :data:`OPERATIONS`; the caller is the
core system (``authorize``) or the staff session, with the staff member's office; the
target is the 宛名番号, query id, message id … from the path, the query string or the
answer's JSON, or what a handler named with :func:`note_target` — never a 個人番号 (no
source reads a request body).  The outcome is ``ok`` (2xx/3xx), ``refused`` (4xx, with
the error code) or ``failed`` (5xx), with the request id.

Calls refused before a caller is known (no certificate, token or session, a bad login)
are counted per minute in ``access_refusals`` (:mod:`.refusals`) and not written here,
so that a flood writes no row per request.  The provision path (the network face) is
not an operation of the agency's users and is not logged here: it has its records.

Cost: rows are written through a :class:`~.batching.Batcher` (one multi-row INSERT for
every request finishing meanwhile, a group commit); the answer waits for its row, so no
operation is answered unrecorded.  If the row cannot be written the request fails
(503): the operation itself may have been done, and a retry is idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.batching import Batcher
from chukan.gateway.core.errors import status_for
from chukan.gateway.core.refusals import REFUSAL_COUNTED
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.validation import ATENA_PATTERN
from chukan.gateway.core.web import CALLER, REQUEST_ID, Handler, route_template

log = structlog.get_logger("chukan.gateway")


@dataclass(frozen=True, slots=True)
class Operation:
    """A route's operation name and where its target is found, first match wins:
    ``path:NAME`` (a path parameter), ``query:NAME`` (a query parameter), ``json:NAME``
    (a top-level field of the JSON answer)."""

    name: str
    target: tuple[str, ...] = ()


def _op(name: str, *target: str) -> Operation:
    return Operation(name, target)


#: Every route of the internal and staff faces → its operation (None: not an operation,
#: e.g. the style sheet).  tests/unit/test_operation_names.py checks that every route
#: of the application is here and that nothing here is not a route.
OPERATIONS: Final[Mapping[tuple[str, str], Operation | None]] = {
    # -- core systems (/internal) --
    ("POST", "/internal/v1/persons"): _op("person.register", "json:atena_id"),
    ("GET", "/internal/v1/persons/{atena_id}"): _op("person.read", "path:atena_id"),
    ("POST", "/internal/v1/persons/{atena_id}/events"): _op("person.event", "path:atena_id"),
    ("POST", "/internal/v1/persons/purge"): _op("person.purge", "json:job_id"),
    ("PUT", "/internal/v1/persons/{atena_id}/items/{item_code}"): _op(
        "replica.write", "path:atena_id"
    ),
    ("GET", "/internal/v1/persons/{atena_id}/items/{item_code}"): _op(
        "replica.read", "path:atena_id"
    ),
    ("PUT", "/internal/v1/persons/{atena_id}/items/{item_code}/manual-review"): _op(
        "replica.flag", "path:atena_id"
    ),
    ("GET", "/internal/v1/replica/export"): _op("replica.export", "query:item_code"),
    ("POST", "/internal/v1/replica/registrations"): _op(
        "replica.registration.submit", "json:message_id"
    ),
    ("GET", "/internal/v1/replica/registrations/{message_id}"): _op(
        "replica.registration.read", "path:message_id"
    ),
    ("POST", "/internal/v1/queries"): _op("query.submit", "json:query_id"),
    ("GET", "/internal/v1/queries/{query_id}"): _op("query.read", "path:query_id"),
    ("GET", "/internal/v1/review"): _op("review.list"),
    ("GET", "/internal/v1/review/{query_id}"): _op("review.read", "path:query_id"),
    ("POST", "/internal/v1/review/{query_id}/approve"): _op("review.approve", "path:query_id"),
    ("POST", "/internal/v1/review/{query_id}/refuse"): _op("review.refuse", "path:query_id"),
    ("GET", "/internal/v1/records"): _op("records.list", "query:atena_id"),
    ("POST", "/internal/v1/kokuhoren/recipient-changes"): _op("kokuhoren.changes"),
    ("POST", "/internal/v1/kokuhoren/transmissions"): _op(
        "kokuhoren.transmit", "json:transmission_id"
    ),
    ("GET", "/internal/v1/kokuhoren/transmissions/{transmission_id}"): _op(
        "kokuhoren.transmission.read", "path:transmission_id"
    ),
    ("POST", "/internal/v1/kokuhoren/transmissions/{transmission_id}/resend"): _op(
        "kokuhoren.resend", "path:transmission_id"
    ),
    ("POST", "/internal/v1/kokuhoren/flows/{flow}/records"): _op(
        "kokuhoren.flow.records", "path:flow"
    ),
    ("GET", "/internal/v1/kokuhoren/flows/{flow}/records"): _op("kokuhoren.flow.read", "path:flow"),
    ("POST", "/internal/v1/kokuhoren/returns"): _op("kokuhoren.returns", "json:job_id"),
    ("GET", "/internal/v1/kokuhoren/returns/{job_id}"): _op(
        "kokuhoren.returns.read", "path:job_id"
    ),
    ("GET", "/internal/v1/status"): _op("status.read"),
    ("POST", "/internal/v1/keys/reload"): _op("keys.reload"),
    ("POST", "/internal/v1/authorization-list/refresh"): _op("list.refresh"),
    # -- staff JSON API (/staff/v1) --
    ("POST", "/staff/v1/login"): _op("staff.login"),
    ("POST", "/staff/v1/logout"): _op("staff.logout"),
    ("GET", "/staff/v1/me"): _op("staff.me"),
    ("POST", "/staff/v1/me/password"): _op("staff.password.change"),
    ("GET", "/staff/v1/accounts"): _op("staff.account.list"),
    ("POST", "/staff/v1/accounts"): _op("staff.account.create", "json:username"),
    ("GET", "/staff/v1/accounts/{username}"): _op("staff.account.read", "path:username"),
    ("PATCH", "/staff/v1/accounts/{username}"): _op("staff.account.update", "path:username"),
    ("DELETE", "/staff/v1/accounts/{username}"): _op("staff.account.revoke", "path:username"),
    ("POST", "/staff/v1/accounts/{username}/revoke"): _op("staff.account.revoke", "path:username"),
    ("GET", "/staff/v1/reviews/accounts"): _op("staff.account.review"),
    ("GET", "/staff/v1/audit"): _op("staff.audit.read"),
    ("GET", "/staff/v1/offices"): _op("staff.office.list"),
    ("POST", "/staff/v1/offices"): _op("staff.office.create", "json:code"),
    ("PATCH", "/staff/v1/offices/{code}"): _op("staff.office.update", "path:code"),
    ("GET", "/staff/v1/operations"): _op("operations.read", "query:target"),
    ("GET", "/staff/v1/review"): _op("review.list"),
    ("GET", "/staff/v1/review/{query_id}"): _op("review.read", "path:query_id"),
    ("POST", "/staff/v1/review/{query_id}/approve"): _op("review.approve", "path:query_id"),
    ("POST", "/staff/v1/review/{query_id}/refuse"): _op("review.refuse", "path:query_id"),
    ("GET", "/staff/v1/disclosures/{atena_id}"): _op("records.disclose", "path:atena_id"),
    ("GET", "/staff/v1/records/verify"): _op("records.verify"),
    ("POST", "/staff/v1/records/checkpoints"): _op("records.checkpoint"),
    ("GET", "/staff/v1/statistics"): _op("statistics.read"),
    ("GET", "/staff/v1/jobs"): _op("jobs.list"),
    ("GET", "/staff/v1/jobs/{job_id}"): _op("jobs.read", "path:job_id"),
    ("POST", "/staff/v1/jobs/purge"): _op("jobs.purge"),
    # -- the console (/staff/…) --
    ("GET", "/staff/static/console.css"): None,
    ("GET", "/staff/login"): None,
    ("GET", "/staff/"): _op("console.home"),
    ("POST", "/staff/login"): _op("staff.login"),
    ("POST", "/staff/logout"): _op("staff.logout"),
    ("GET", "/staff/review"): _op("review.list"),
    ("GET", "/staff/review/{query_id}"): _op("review.read", "path:query_id"),
    ("POST", "/staff/review/{query_id}/decide"): _op("review.decide", "path:query_id"),
    ("GET", "/staff/records"): _op("records.search", "query:atena_id"),
    ("GET", "/staff/disclosure"): _op("console.disclosure.form"),
    ("GET", "/staff/disclosure/{atena_id}"): _op("records.disclose", "path:atena_id"),
    ("GET", "/staff/statistics"): _op("statistics.read"),
    ("GET", "/staff/jobs"): _op("jobs.list"),
    ("GET", "/staff/replica"): _op("replica.read", "query:atena_id"),
    ("GET", "/staff/accounts"): _op("staff.account.list"),
    ("POST", "/staff/accounts"): _op("staff.account.create"),
    ("POST", "/staff/accounts/{username}/revoke"): _op("staff.account.revoke", "path:username"),
    ("POST", "/staff/accounts/{username}/office"): _op("staff.account.update", "path:username"),
    ("GET", "/staff/accounts/review"): _op("staff.account.review"),
    ("GET", "/staff/sessions"): _op("staff.sessions.long"),
    ("GET", "/staff/offices"): _op("staff.office.list"),
    ("POST", "/staff/offices"): _op("staff.office.create"),
    ("POST", "/staff/offices/{code}"): _op("staff.office.update", "path:code"),
    ("GET", "/staff/operations"): _op("operations.read", "query:target"),
}

#: What a handler names as the target when the route's sources cannot (e.g. a form).
TARGET: Final = web.RequestKey("operation_target", str)
#: The office of the staff member of the request (set with the session).
OFFICE: Final = web.RequestKey("operation_office", str)
#: The error code of an answer rendered as a page (the console's errors are pages).
ANSWER_CODE: Final = web.RequestKey("operation_answer_code", str)
#: Another operation the request performed besides its route's (``detail.also``): a
#: submission answered with the query's result under ``Prefer: wait`` also reads it.
ALSO: Final = web.RequestKey("operation_also", str)
MAX_TARGET: Final = 128
#: Largest JSON answer whose fields are read for the target.
_MAX_PEEK: Final = 64 * 1024


def note_target(request: web.Request, target: str) -> None:
    """Name the target of this request's operation (a 宛名番号, query id, username …)."""
    request[TARGET] = target[:MAX_TARGET]


def note_also(request: web.Request, operation: str) -> None:
    """Record that this request also performed ``operation`` (an operation name of the log)."""
    request[ALSO] = operation


def operation_of(method: str, route: str) -> Operation | None:
    """The operation of a route; a route missing from the table gets a derived name."""
    key = (method, route)
    if key in OPERATIONS:
        return OPERATIONS[key]
    words = [w for w in route.replace("{", "").replace("}", "").split("/") if w][:4]
    name = ".".join(["unnamed", method.lower(), *[w.replace("-", "_") for w in words]])
    return Operation(name.lower()[:63])


@dataclass(frozen=True, slots=True)
class Entry:
    caller_kind: str
    caller: str | None
    office: str | None
    operation: str
    target: str | None
    outcome: str
    status: int
    code: str | None
    request_id: str | None
    method: str
    route: str
    detail: dict[str, Any]


_INSERT: Final = """
INSERT INTO operation_log (caller_kind, caller, office, operation, target, outcome, status,
                           code, request_id, method, route, detail)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::int[], $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[])
"""


async def write_entries(conn: db.Executor, entries: Sequence[Entry]) -> list[None]:
    """Append ``entries`` in one statement."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for e in entries:
        for i, value in enumerate(
            (
                e.caller_kind,
                e.caller,
                e.office,
                e.operation,
                e.target,
                e.outcome,
                e.status,
                e.code,
                e.request_id,
                e.method,
                e.route,
                json.dumps(e.detail, ensure_ascii=False),
            )
        ):
            columns[i].append(value)
    await conn.execute(_INSERT, *columns)
    return [None] * len(entries)


class OperationLog:
    """The operation log of one process: rows of concurrent requests in one INSERT."""

    def __init__(self, pool: db.Executor) -> None:
        self._pool = pool
        self._batcher: Batcher[Entry, None] = Batcher(
            lambda batch: write_entries(self._pool, batch), max_batch=500, name="operation-log"
        )

    async def write(self, entry: Entry) -> None:
        await self._batcher.submit(entry)

    async def close(self) -> None:
        await self._batcher.close()


OPLOG: Final = web.AppKey("operation_log", OperationLog)


async def oplog_context(app: web.Application) -> AsyncIterator[None]:
    """The process's :class:`OperationLog` (after the state it writes through is open)."""
    oplog = OperationLog(app[GATEWAY_STATE].pool)
    app[OPLOG] = oplog
    yield
    await oplog.close()


def _caller(request: web.Request) -> tuple[str, str | None]:
    caller = request.get(CALLER)
    if caller is None:
        return "anonymous", None
    if caller.startswith("staff:"):
        return "staff", caller.removeprefix("staff:")
    return "system", caller


def _target(request: web.Request, op: Operation, answer: web.StreamResponse | None) -> str | None:
    noted = request.get(TARGET)
    if noted is not None:
        return str(noted)
    for source in op.target:
        kind, _, name = source.partition(":")
        value: Any = None
        if kind == "path":
            value = request.match_info.get(name)
        elif kind == "query":
            value = request.query.get(name)
            if name == "atena_id" and value is not None and not ATENA_PATTERN.match(value):
                value = None
        elif kind == "json" and isinstance(answer, web.Response):
            value = _json_field(answer, name)
        if isinstance(value, str) and value:
            return value[:MAX_TARGET]
    return None


def _json_field(answer: web.Response, name: str) -> Any:
    body = answer.body
    if answer.content_type != "application/json" or not isinstance(body, bytes):
        return None
    if len(body) > _MAX_PEEK:
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(body)
        if isinstance(value, dict):
            return value.get(name)
    return None


def _outcome(status: int) -> str:
    if status >= 500:
        return "failed"
    if status >= 400:
        return "refused"
    return "ok"


@web.middleware
async def operation_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request's operation once it is answered (or refused), before answering."""
    route = route_template(request)
    op = operation_of(request.method, route) if route != "unmatched" else None
    if op is None:
        return await handler(request)
    answer: web.StreamResponse | None = None
    try:
        answer = await handler(request)
    except web.HTTPException as exc:
        await _record(request, op, route, exc.status, None, None)
        raise
    except Exception as exc:
        status, code = status_for(exc)
        await _record(request, op, route, status, code, None)
        raise
    await _record(request, op, route, answer.status, request.get(ANSWER_CODE), answer)
    return answer


async def _record(
    request: web.Request,
    op: Operation,
    route: str,
    status: int,
    code: str | None,
    answer: web.StreamResponse | None,
) -> None:
    if request.get(REFUSAL_COUNTED):
        return  # counted in access_refusals, one row a minute (a flood writes no rows here)
    kind, caller = _caller(request)
    detail: dict[str, Any] = {}
    if answer is not None and (
        answer.content_type == "text/csv"
        or "attachment" in answer.headers.get("Content-Disposition", "")
        or op.name in ("replica.export", "records.disclose")
    ):
        detail["download"] = answer.content_type
    also = request.get(ALSO)
    if also is not None and answer is not None:
        detail["also"] = also
    entry = Entry(
        caller_kind=kind,
        caller=caller,
        office=request.get(OFFICE),
        operation=op.name,
        target=_target(request, op, answer),
        outcome=_outcome(status),
        status=status,
        code=code,
        request_id=request.get(REQUEST_ID),
        method=request.method,
        route=route,
        detail=detail,
    )
    oplog = request.config_dict.get(OPLOG)
    if oplog is not None:
        await oplog.write(entry)
    else:
        await write_entries(request.config_dict[GATEWAY_STATE].pool, [entry])


# -- reading (auditors) ----------------------------------------------------------------------

MAX_READ: Final = 1000


async def read_operations(
    conn: db.Executor,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    caller: str | None,
    operation: str | None,
    target: str | None,
    office: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Rows of the operation log, newest first, filtered by period (``start`` inclusive,
    ``end`` exclusive), caller, operation (exact, or a prefix ending in ``.``), target
    and office."""
    rows = await conn.fetch(
        """SELECT id, at, caller_kind, caller, office, operation, target, outcome, status,
                  code, request_id, method, route, detail
           FROM operation_log
           WHERE ($1::timestamptz IS NULL OR at >= $1)
             AND ($2::timestamptz IS NULL OR at < $2)
             AND ($3::text IS NULL OR caller = $3)
             AND ($4::text IS NULL OR operation = $4
                  OR (right($4, 1) = '.' AND starts_with(operation, $4)))
             AND ($5::text IS NULL OR target = $5)
             AND ($6::text IS NULL OR office = $6)
           ORDER BY at DESC, id DESC LIMIT $7""",
        start,
        end,
        caller,
        operation,
        target,
        office,
        min(limit, MAX_READ),
    )
    return [
        {
            **{k: r[k] for k in ("id", "caller_kind", "caller", "office", "operation", "target")},
            **{k: r[k] for k in ("outcome", "status", "code", "request_id", "method", "route")},
            "at": r["at"].isoformat(),
            "detail": json.loads(r["detail"]),
        }
        for r in rows
    ]
