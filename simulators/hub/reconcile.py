"""Three-party reconciliation at the hub: its records per agency, and the check across all.

``GET /network/v1/records?from&to&after&limit`` answers an agency with the hub's
record of each query it took part in (as requester, or as provider of a query that
reached it with a permit), and nothing of any other agency's: the caller is the
agency of its client certificate (over plain HTTP, the test network's baseline, the
``agency`` parameter names it).  ``chukan hub records reconcile`` asks every
registered agency for its own records (the gateways' ``/network/v1/records``, with
the hub's client certificate) and compares them with the hub's
(:func:`chukan.gateway.records.reconcile.compare`): one report naming agency and
query of every difference.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import ForbiddenError, GatewayError, ValidationError
from chukan.gateway.core.identities import agency_host
from chukan.gateway.core.tls import identity_label
from chukan.gateway.records.reconcile import (
    MAX_LIMIT,
    ReconcileReport,
    RecordDigest,
    compare,
    cursor_of,
    fetch_records,
    page_json,
    page_parameters,
    record_from_row,
)
from chukan.simulators.errors import PeerMismatchError
from chukan.simulators.hub.auth import HUB_PEER
from chukan.simulators.hub.state import HUB_STATE

log = structlog.get_logger("chukan.hub")

#: The hub's current record of each query of agency $1 requested in [$2, $3), in the
#: agency's role, after the cursor ($4, $5), $6 at most.  A provider sees only queries
#: that reached it (a permit was issued).
_HUB_SQL: Final = """
    SELECT * FROM (
        SELECT query_id, 'requester' AS role, requester, provider, procedure_code, item_code,
               permit_id, outcome, requested_at
        FROM hub_records WHERE requester = $1 AND requested_at >= $2 AND requested_at < $3
        UNION ALL
        SELECT query_id, 'provider', requester, provider, procedure_code, item_code,
               permit_id, outcome, requested_at
        FROM hub_records WHERE provider = $1 AND permit_id IS NOT NULL
          AND requested_at >= $2 AND requested_at < $3) AS r
    WHERE (query_id, role) > ($4, $5)
    ORDER BY query_id, role
    LIMIT $6"""


async def hub_records(
    conn: db.Executor,
    agency: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    after: str | None = None,
    limit: int = MAX_LIMIT,
) -> list[RecordDigest]:
    """One page of the hub's records of ``agency``'s queries."""
    query_id, _, role = (after or "").rpartition("|")
    rows = await conn.fetch(_HUB_SQL, agency, start, end, query_id, role, limit)
    return [record_from_row(r) for r in rows]


def _caller(request: web.Request) -> str:
    """The agency asking: its certificate's, or (plain HTTP) the ``agency`` parameter."""
    named = request.query.get("agency")
    identity = request.get(HUB_PEER)
    if identity is None:
        if not named:
            raise ValidationError("agency is required")
        return named
    label = identity_label(identity)
    if identity.kind != "agency":
        log.warning("hub_access_refused", caller=label, path=request.path, code="forbidden")
        raise ForbiddenError(f"{label} is not an agency: its records are read by the operator")
    if named and named != identity.subject_id:
        log.warning("hub_access_refused", caller=label, path=request.path, code="peer_mismatch")
        raise PeerMismatchError(f"{label} may not read the records of agency {named}")
    return str(identity.subject_id)


async def list_records(request: web.Request) -> web.Response:
    """``GET /network/v1/records``: the hub's records of the calling agency's queries."""
    agency = _caller(request)
    start, end, after, limit = page_parameters(request.query)
    state = request.config_dict[HUB_STATE]
    records = await hub_records(state.pool, agency, start, end, after=after, limit=limit)
    log.info("hub_records_listed", agency=agency, records=len(records))
    return web.json_response(page_json(records, limit))


async def all_hub_records(
    conn: db.Executor, agency: str, start: dt.datetime, end: dt.datetime
) -> list[RecordDigest]:
    records: list[RecordDigest] = []
    after: str | None = None
    while True:
        page = await hub_records(conn, agency, start, end, after=after)
        records.extend(page)
        if len(page) < MAX_LIMIT:
            return records
        after = cursor_of(page[-1])


async def reconcile_all(
    conn: db.Executor,
    session: aiohttp.ClientSession,
    start: dt.datetime,
    end: dt.datetime,
    *,
    margin: dt.timedelta,
    tls: bool,
    timeout: float,  # noqa: ASYNC109 -- per request to each agency
) -> dict[str, Any]:
    """Every registered agency's records against the hub's: one report, agency by agency;
    an agency that cannot be asked is listed under ``unreachable`` (and is not ok)."""
    wide = (start - margin, end + margin)
    agencies = await conn.fetch("SELECT code, endpoint FROM agencies ORDER BY code")
    reports: list[ReconcileReport] = []
    unreachable: list[dict[str, str]] = []
    for agency in agencies:
        code, endpoint = agency["code"], agency["endpoint"]
        try:
            theirs = await fetch_records(
                session,
                endpoint,
                *wide,
                server_hostname=agency_host(code)
                if tls and endpoint.startswith("https://")
                else None,
                timeout=timeout,
            )
        except GatewayError as exc:
            unreachable.append({"agency": code, "error": exc.message})
            continue
        ours = await all_hub_records(conn, code, *wide)
        reports.append(compare(code, ours, theirs, start=start, end=end))
    differences = [d.to_json() for r in reports for d in r.differences]
    ok = not differences and not unreachable
    log.info(
        "hub_records_reconciled",
        agencies=len(reports),
        differences=len(differences),
        unreachable=len(unreachable),
    )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "ok": ok,
        "agencies": [
            {k: v for k, v in r.to_json().items() if k not in ("from", "to")} for r in reports
        ],
        "unreachable": unreachable,
        "differences": differences,
    }
