"""The hub's ``/health``, ``/ready`` and ``/metrics``, and who called (for the access log).

* ``/health``: liveness and the database (``SELECT 1`` with a deadline).
* ``/ready``: the database answers, the outbox is not backed up (due deliveries:
  pending, their time come, nobody delivering them), the authorization list
  in force has not expired and the hub's records are sound (no alarm of
  :mod:`~chukan.simulators.hub.record_status`); 503 with the failing checks otherwise.
* ``/metrics``: Prometheus text — the HTTP answers and large bodies every
  server counts (:class:`~chukan.gateway.core.metrics.HttpMetrics`), and the
  outbox as the database holds it at scrape time: deliveries by kind and status,
  due, in flight (leased by a worker of any hub process) and the oldest due one's
  age; the records' alarms.  Counted in the database, so every hub process shows the
  same outbox and records.

With TLS every hub call presents a certificate of the network CA (the hub's
peer middleware), the probes included: a monitor uses the operator's
certificate or an agency's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import AuthorizationListUnavailableError
from chukan.gateway.core.metrics import CONTENT_TYPE, Gauge, HttpMetrics
from chukan.gateway.core.probes import Check, health_answer, ready_answer, timed
from chukan.gateway.core.settings import DEFAULT_READY_TIMEOUT
from chukan.gateway.core.tls import identity_label
from chukan.gateway.core.web import CALLER, Handler, observe
from chukan.simulators.hub import auth, lists, record_status
from chukan.simulators.hub.state import HUB_STATE, HubState, utcnow

#: More due deliveries than this and the hub is not ready: it is not keeping up.
READY_MAX_DUE: Final = 1000

_OUTBOX_SQL: Final = """
    SELECT count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()
                              AND (leased_until IS NULL OR leased_until <= now())) AS due,
           count(*) FILTER (WHERE status = 'pending' AND leased_until > now()) AS in_flight,
           coalesce(extract(epoch FROM now() - min(next_attempt_at) FILTER (
               WHERE status = 'pending' AND next_attempt_at <= now()
                 AND (leased_until IS NULL OR leased_until <= now()))), 0)::float8
               AS oldest_due_seconds
    FROM deliveries"""


@dataclass
class HubMetrics(HttpMetrics):
    """What a hub process exposes on ``/metrics`` (the outbox is counted at scrape time)."""

    deliveries: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_hub_deliveries",
            "Deliveries in the hub's outbox, by kind and status.",
            ("kind", "status"),
        )
    )
    due: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_hub_deliveries_due", "Pending deliveries whose time has come, not leased."
        )
    )
    in_flight: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_hub_deliveries_in_flight",
            "Deliveries a worker holds the lease of now (any hub process).",
        )
    )
    oldest_due: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_hub_oldest_due_delivery_seconds",
            "How long the oldest due delivery has waited (0 when none is due).",
        )
    )

    def render(
        self,
        outbox: dict[str, float],
        by_status: dict[tuple[str, ...], float],
        records: list[str] | None = None,
    ) -> str:
        lines = self.http_lines()
        lines.extend(self.deliveries.render(by_status))
        if outbox:  # without the database, no outbox samples rather than false zeros
            lines.extend(self.due.render({(): outbox["due"]}))
            lines.extend(self.in_flight.render({(): outbox["in_flight"]}))
            lines.extend(self.oldest_due.render({(): outbox["oldest_due_seconds"]}))
        lines.extend(records or [])
        return "\n".join(lines) + "\n"


HUB_METRICS: Final = web.AppKey("hub_metrics", HubMetrics)


@web.middleware
async def caller_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After the peer middleware: name the certificate's holder for the access log."""
    identity = request.get(auth.HUB_PEER)
    if identity is not None:
        request[CALLER] = identity_label(identity)
    return await handler(request)


async def outbox_depth(state: HubState) -> dict[str, float]:
    row = await state.pool.fetchrow(_OUTBOX_SQL)
    assert row is not None
    return {name: float(row[name]) for name in ("due", "in_flight", "oldest_due_seconds")}


async def _outbox_check(state: HubState) -> Check:
    depth = await outbox_depth(state)
    check: dict[str, Any] = {"ok": depth["due"] <= READY_MAX_DUE, **depth}
    if not check["ok"]:
        check["reason"] = f"more than {READY_MAX_DUE} deliveries are due"
    return check


def _list_check(state: HubState) -> Check:
    current = state.authorization_list
    try:
        lists.require_current(current, utcnow())
    except AuthorizationListUnavailableError as exc:
        return {"ok": False, "reason": exc.reason, "version": current.version}
    return {"ok": True, "version": current.version, "expires_at": current.expires_at.isoformat()}


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the database answers (``degraded`` without a valid list), else 503."""
    state = request.config_dict[HUB_STATE]
    database = await db.probe(state.pool, DEFAULT_READY_TIMEOUT)
    authorization = _list_check(state)
    return health_answer(
        database,
        degraded=not authorization["ok"],
        service="hub",
        authorization_list=authorization,
    )


async def _records_check(state: HubState) -> Check:
    return (await record_status.records_health(state.pool)).check()


async def ready(request: web.Request) -> web.Response:
    """200 when the database answers, the outbox keeps up, the list is valid and the
    records are sound; else 503."""
    state = request.config_dict[HUB_STATE]
    database = await db.probe(state.pool, DEFAULT_READY_TIMEOUT)
    outbox: Check = {"ok": False, "reason": "database_unavailable"}
    records: Check = {"ok": False, "reason": "database_unavailable"}
    if database["ok"]:
        outbox = await timed(_outbox_check(state), DEFAULT_READY_TIMEOUT)
        records = await timed(_records_check(state), DEFAULT_READY_TIMEOUT)
    return ready_answer(
        {
            "database": database,
            "outbox": outbox,
            "authorization_list": _list_check(state),
            "records": records,
        },
        service="hub",
    )


async def metrics(request: web.Request) -> web.Response:
    state = request.config_dict[HUB_STATE]
    outbox: dict[str, float] = {}
    by_status: dict[tuple[str, ...], float] = {}
    records: list[str] = []
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        outbox = await outbox_depth(state)
        rows = await state.pool.fetch(
            "SELECT kind, status, count(*) AS n FROM deliveries GROUP BY 1, 2"
        )
        by_status = {(r["kind"], r["status"]): float(r["n"]) for r in rows}
        records = record_status.metrics_lines(await record_status.records_health(state.pool))
    text = request.config_dict[HUB_METRICS].render(outbox, by_status, records)
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def setup_probes(app: web.Application) -> None:
    """The hub's metrics, large-body bound and access log setup, and its probe routes."""
    registry = app[HUB_METRICS] = HubMetrics()
    observe(app, "hub", registry)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
