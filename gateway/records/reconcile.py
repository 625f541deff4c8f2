"""Three-party reconciliation: an agency's records against the hub's, query by query.

The law's promise is that requester, hub and provider record every query the same
way (DESIGN §9).  Each side can be rewritten by its own database superuser (and
re-chained, and re-signed); a rewrite of one side only shows against another.
Both the hub and each gateway answer ``GET /network/v1/records?from&to&after&limit``
with one digest per query and role (:class:`RecordDigest`): the hub to an agency
about its own queries only, a gateway to the hub only.  :func:`compare` (pure) names
every query whose parties, procedure, item, permit or outcome differ, and every
query one side holds and the other does not.

Outcomes (the hub's view of a query against the agency's last record of it):

==========  =====================================  ====================================
hub         requester record agrees with           provider record agrees with
==========  =====================================  ====================================
provided    provided                               provided
refused     refused                                refused
expired     refused (the hub's signed refusal),    none (never reached it), held (never
            failed (expired unanswered here)       decided)
permitted   in flight: none, failed                in flight: none, held, provided,
                                                   refused (its answer on its way)
held        in flight: none, failed                held; provided or refused in flight
==========  =====================================  ====================================

A query in flight (not concluded at the hub) is listed apart, not counted as a
difference; so is a requester's refusal by its own authorization list (no permit,
never sent: the hub cannot know it).  Anything else one side lacks is missing there.
A query counts in the period when either side's requested time falls in it (each
side is read with a margin around the period, so a query requested at the boundary
is not missing merely because two clocks differ).

I/O below the comparator: the gateway's route (the hub's client certificate only,
like every ``/network`` route) and the paginated client both commands use.  The
agency's command, ``chukan records reconcile``, is :mod:`chukan.gateway.cli.reconcile`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import UpstreamError, ValidationError
from chukan.gateway.core.settings import DEFAULT_STATISTICS_TIME_ZONE
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.records.chain import Row

log = structlog.get_logger("chukan.records")

RECORDS_PATH: Final = "/network/v1/records"
DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 5000
#: How far around the period each side is read (two clocks, a query queued a while).
DEFAULT_MARGIN: Final = dt.timedelta(hours=1)
#: The fields compared besides the outcome, in the order a difference lists them.
COMPARED: Final = ("requester", "provider", "procedure_code", "item_code", "permit_id")
ROLES: Final = ("requester", "provider")

# What the agency's outcome may be, by the hub's outcome and the agency's role: agreeing,
# or in flight.  None stands for "no record".
_AGREE: Final[Mapping[tuple[str, str], frozenset[str | None]]] = {
    ("provided", "requester"): frozenset({"provided"}),
    ("provided", "provider"): frozenset({"provided"}),
    ("refused", "requester"): frozenset({"refused"}),
    ("refused", "provider"): frozenset({"refused"}),
    ("expired", "requester"): frozenset({"refused", "failed"}),
    ("expired", "provider"): frozenset({None, "held"}),
    ("undeliverable", "requester"): frozenset({"refused", "failed"}),
    ("undeliverable", "provider"): frozenset({None, "held"}),
    ("held", "provider"): frozenset({"held"}),
}
_IN_FLIGHT: Final[Mapping[tuple[str, str], frozenset[str | None]]] = {
    ("permitted", "requester"): frozenset({None, "failed"}),
    ("permitted", "provider"): frozenset({None, "held", "provided", "refused"}),
    ("held", "requester"): frozenset({None, "failed"}),
    ("held", "provider"): frozenset({"provided", "refused"}),
}


# -- the record digests and the comparator (pure) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordDigest:
    """One query as one party recorded it, from the agency's point of view (``role``).
    ``requested_at`` (beyond the contract's fields) places it in the period."""

    query_id: str
    role: str
    requester: str
    provider: str
    procedure_code: str
    item_code: str
    permit_id: str | None
    outcome: str
    requested_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        when = self.requested_at
        document["requested_at"] = None if when is None else when.isoformat()
        return document

    @classmethod
    def from_json(cls, document: Any) -> RecordDigest:
        """Parse one record of a ``/network/v1/records`` answer (ValidationError if odd)."""
        if not isinstance(document, Mapping):
            raise ValidationError("a record is a JSON object")
        values: dict[str, Any] = {}
        for name in ("query_id", "role", "requester", "provider", "procedure_code", "item_code",
                     "outcome"):  # fmt: skip
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise ValidationError(f"record field {name} must be a non-empty string")
            values[name] = value
        permit = document.get("permit_id")
        if permit is not None and not isinstance(permit, str):
            raise ValidationError("record field permit_id must be a string or null")
        if values["role"] not in ROLES:
            raise ValidationError("record field role must be requester or provider")
        requested = document.get("requested_at")
        requested_at = None if requested is None else parse_instant(str(requested))
        return cls(permit_id=permit, requested_at=requested_at, **values)


def record_from_row(row: Row) -> RecordDigest:
    return RecordDigest(
        query_id=row["query_id"],
        role=row["role"],
        requester=row["requester"],
        provider=row["provider"],
        procedure_code=row["procedure_code"],
        item_code=row["item_code"],
        permit_id=row["permit_id"],
        outcome=row["outcome"],
        requested_at=row["requested_at"],
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """One query (and the agency's role in it) the two sides do not record alike.

    ``kind``: ``differs`` (``fields`` gives both values of each field that differs),
    ``missing_at_agency`` or ``missing_at_hub``."""

    agency: str
    query_id: str
    role: str
    kind: str
    fields: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReconcileReport:
    """What a reconciliation prints (JSON); ``ok`` when no query differs."""

    agency: str
    start: dt.datetime
    end: dt.datetime
    compared: int = 0
    agree: int = 0
    in_flight: list[str] = field(default_factory=list)
    local_only: list[str] = field(default_factory=list)
    differences: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "agency": self.agency,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "ok": self.ok,
            "compared": self.compared,
            "agree": self.agree,
            "in_flight": self.in_flight,
            "refused_locally": self.local_only,
            "differences": [d.to_json() for d in self.differences],
        }


def _latest(records: Iterable[RecordDigest]) -> dict[tuple[str, str], RecordDigest]:
    """One record per (query, role): the last one given (callers give them in order)."""
    return {(r.query_id, r.role): r for r in records}


def _in_period(record: RecordDigest | None, start: dt.datetime, end: dt.datetime) -> bool:
    if record is None:
        return False
    return record.requested_at is None or start <= record.requested_at < end


def compare(
    agency: str,
    hub: Iterable[RecordDigest],
    local: Iterable[RecordDigest],
    *,
    start: dt.datetime,
    end: dt.datetime,
) -> ReconcileReport:
    """Compare the hub's records of ``agency`` with the agency's own, for [start, end)."""
    report = ReconcileReport(agency, start, end)
    theirs, ours = _latest(hub), _latest(local)
    for key in sorted(theirs.keys() | ours.keys()):
        at_hub, here = theirs.get(key), ours.get(key)
        if not (_in_period(at_hub, start, end) or _in_period(here, start, end)):
            continue
        query_id, role = key
        report.compared += 1
        if at_hub is None:
            assert here is not None
            if role == "requester" and here.outcome == "refused" and here.permit_id is None:
                report.local_only.append(query_id)
            else:
                report.differences.append(Finding(agency, query_id, role, "missing_at_hub"))
            continue
        outcome = None if here is None else here.outcome
        state = (at_hub.outcome, role)
        if outcome in _IN_FLIGHT.get(state, frozenset()):
            report.in_flight.append(query_id)
            continue
        if here is None:
            if None in _AGREE.get(state, frozenset()):
                report.agree += 1  # e.g. expired before it ever reached the provider
            else:
                report.differences.append(Finding(agency, query_id, role, "missing_at_agency"))
            continue
        fields = {
            name: {"hub": getattr(at_hub, name), "agency": getattr(here, name)}
            for name in COMPARED
            if getattr(at_hub, name) != getattr(here, name)
        }
        if outcome not in _AGREE.get(state, frozenset()):
            fields["outcome"] = {"hub": at_hub.outcome, "agency": outcome}
        if fields:
            report.differences.append(Finding(agency, query_id, role, "differs", fields))
        else:
            report.agree += 1
    return report


# -- periods ----------------------------------------------------------------------------------


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 time with its offset (ValidationError otherwise)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ValidationError(f"{text!r} must carry its time zone offset")
    return value


def parse_period(
    start: str, end: str, *, time_zone: str = DEFAULT_STATISTICS_TIME_ZONE
) -> tuple[dt.datetime, dt.datetime]:
    """A command's ``--from``/``--to``: ISO times with offsets, or dates (``--to`` included)
    in ``time_zone``.  ValidationError if odd or backwards."""

    def bound(text: str, *, end_of_day: bool) -> dt.datetime:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            return parse_instant(text)
        if end_of_day:
            day += dt.timedelta(days=1)
        return dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(time_zone))

    first, last = bound(start, end_of_day=False), bound(end, end_of_day=True)
    if first >= last:
        raise ValidationError("from must be before to")
    return first, last


# -- reading a side ---------------------------------------------------------------------------


#: The agency's last record of each (query, role) requested in [$2, $3), after the cursor
#: ($4, $5), $6 at most.  A record is written after its query is requested, so partitions
#: before the period are never read.
_LOCAL_SQL: Final = """
    SELECT DISTINCT ON (query_id, role) query_id, role, requester, provider, procedure_code,
           item_code, permit_id, outcome, requested_at
    FROM provision_records
    WHERE tenant = $1 AND requested_at >= $2 AND requested_at < $3 AND recorded_at >= $2
      AND (query_id, role) > ($4, $5)
    ORDER BY query_id, role, seq DESC
    LIMIT $6"""


def _cursor(after: str | None) -> tuple[str, str]:
    if not after:
        return "", ""
    query_id, sep, role = after.rpartition("|")
    if not sep or role not in ROLES:
        raise ValidationError("after must be a cursor this API returned")
    return query_id, role


def cursor_of(record: RecordDigest) -> str:
    return f"{record.query_id}|{record.role}"


async def local_records(
    conn: db.Executor,
    agency: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[RecordDigest]:
    """One page of the agency's own records (its last record per query and role)."""
    query_id, role = _cursor(after)
    rows = await conn.fetch(_LOCAL_SQL, agency, start, end, query_id, role, limit)
    return [record_from_row(r) for r in rows]


def page_parameters(query: Mapping[str, str]) -> tuple[dt.datetime, dt.datetime, str | None, int]:
    """``from``, ``to``, ``after`` and ``limit`` of a records request (ValidationError)."""
    start, end = query.get("from"), query.get("to")
    if not start or not end:
        raise ValidationError("from and to are required (ISO 8601 times with offsets)")
    first, last = parse_instant(start), parse_instant(end)
    if first >= last:
        raise ValidationError("from must be before to")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise ValidationError("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}")
    after = query.get("after") or None
    _cursor(after)
    return first, last, after, limit


def page_json(records: Sequence[RecordDigest], limit: int) -> dict[str, Any]:
    return {
        "records": [r.to_json() for r in records],
        "next": cursor_of(records[-1]) if len(records) == limit else None,
    }


async def list_records(request: web.Request) -> web.Response:
    """``GET /network/v1/records``: this agency's records of a period, for the hub only."""
    state = request.config_dict[GATEWAY_STATE]
    start, end, after, limit = page_parameters(request.query)
    records = await local_records(
        state.pool, state.config.agency_code, start, end, after=after, limit=limit
    )
    log.info("records_listed_for_hub", records=len(records))
    return web.json_response(page_json(records, limit))


async def fetch_records(
    session: aiohttp.ClientSession,
    base_url: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    agency: str | None = None,
    server_hostname: str | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 -- per request, as the hub client's
) -> list[RecordDigest]:
    """Every page of another party's ``/network/v1/records`` (UpstreamError if it fails)."""
    records: list[RecordDigest] = []
    after: str | None = None
    while True:
        params = {"from": start.isoformat(), "to": end.isoformat(), "limit": str(MAX_LIMIT)}
        if agency is not None:
            params["agency"] = agency
        if after is not None:
            params["after"] = after
        try:
            async with session.get(
                base_url.rstrip("/") + RECORDS_PATH,
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout),
                server_hostname=server_hostname,
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise UpstreamError(
                        f"{base_url} answered HTTP {response.status} for its records: "
                        + body[:200].decode("utf-8", "replace")
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"{base_url} could not be reached ({type(exc).__name__})") from None
        try:
            document = json.loads(body)
            page = [RecordDigest.from_json(r) for r in document["records"]]
            after = document.get("next")
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(f"{base_url} answered records of an unknown shape") from None
        records.extend(page)
        if not after or not page:
            return records
