"""The gateway server: one agency's 中間サーバー, composed from its flows.

Three faces, each an aiohttp sub-application with its own middlewares:

* ``/internal/v1/...`` for the agency's core systems (client certificate or
  bearer token, per-operation grants, checked by each handler): register people,
  store the replica, submit queries, collect results, read provision records,
  国保連 伝送; for operators: status, authorization-list refresh, key-ring reload;
* ``/network/v1/...`` for the hub only (its client certificate, checked by the
  sub-application's middleware): provision requests with permits, answers to our
  own queries, refusals, pushed lists;
* ``/staff/v1/...`` for the agency's staff (session and role, per handler), and
  ``/staff/`` the staff console (職員画面) over the same sessions and roles.

``/health``, ``/ready`` and ``/metrics`` stay on the root.  The root's
middlewares (the access log with its request id and the metrics, then errors →
HTTP answers) wrap every face.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Final

import structlog
from aiohttp import web

from chukan.gateway import console, network_face, openapi
from chukan.gateway.authlist import sync as authlist
from chukan.gateway.authlist.sync import LIST_SYNC, ListSync, list_sync_context
from chukan.gateway.core import db
from chukan.gateway.core.access import hub_only_middleware
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.errors import EnrolmentRefusedError, UpstreamError
from chukan.gateway.core.hubclient import HubClient
from chukan.gateway.core.keyring import (
    RING_WATCH,
    RingWatch,
    current_keys,
    enrolment_payload,
    load_or_create_ring,
    ring_watch_context,
)
from chukan.gateway.core.notices import NOTICES, Listener, listener_context
from chukan.gateway.core.oplog import operation_log_middleware, oplog_context
from chukan.gateway.core.retry import backoff_delay
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.tls import client_session
from chukan.gateway.core.web import access_log_middleware, error_middleware, private_middleware
from chukan.gateway.kokuhoren import routes as kokuhoren
from chukan.gateway.ops import routes as ops
from chukan.gateway.persons import routes as persons
from chukan.gateway.provision import review
from chukan.gateway.provision.batch import provision_batch_context
from chukan.gateway.query import routes as query
from chukan.gateway.query.sweep import sweep_loop
from chukan.gateway.records import routes as records
from chukan.gateway.replica import routes as replica
from chukan.gateway.staff import routes as staff
from chukan.keys.ring import KeyRing

#: The largest request body any face accepts (registration messages are the largest).
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024

log = structlog.get_logger("chukan.gateway")

#: How long a starting gateway keeps trying to enrol with a hub that does not answer.
ENROLMENT_PATIENCE: Final = 60.0

# -- lifecycle -----------------------------------------------------------------------------


async def _enrol(hub: HubClient, config: GatewayConfig, endpoint: str, ring: KeyRing) -> None:
    """Enrol with the hub, retrying a hub that is busy or away for ``ENROLMENT_PATIENCE``.

    A gateway restarted while the hub is slow (or restarting too) must come up
    when it answers; a refusal (4xx) ends the start at once.
    """
    deadline = time.monotonic() + ENROLMENT_PATIENCE
    attempt = 0
    while True:
        try:
            await hub.enrol(
                config.enrolment_token, enrolment_payload(config, endpoint, ring, utcnow())
            )
            return
        except EnrolmentRefusedError:
            raise
        except UpstreamError as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                raise
            log.warning("hub_enrolment_retry", attempt=attempt, error=exc.message)
            await asyncio.sleep(backoff_delay(attempt, 0.5, 5.0))


async def _open_state(
    stack: contextlib.AsyncExitStack, config: GatewayConfig, endpoint: str
) -> GatewayState:
    """Open what a running gateway holds, each release registered on ``stack`` as it opens.

    A failure at any step (migrations, tenant check, key ring, enrolment) unwinds the
    stack, so nothing opened before it is left behind; at shutdown the same stack
    closes all.  Migrations are applied only when the configuration gives the owner's
    URL for it; otherwise a pending one stops the start (``chukan db migrate``).
    """
    pool = await db.open_checked_pool(
        config.database_url, "gateway", migration_url=config.migration_database_url
    )
    stack.push_async_callback(pool.close)
    tenant = await pool.fetchval("SELECT chukan_tenant()")
    if tenant != config.agency_code:
        raise RuntimeError(
            f"the database login is bound to tenant {tenant!r}, not {config.agency_code!r}"
        )
    ring = await asyncio.to_thread(
        load_or_create_ring,
        config.key_dir,
        config.agency_code,
        config.key_passphrase,
        now=utcnow(),
    )
    keys = current_keys(ring, utcnow())
    session = client_session(config.tls)
    stack.push_async_callback(session.close)
    hub = HubClient(
        config.hub_url,
        config.agency_code,
        keys.signing,
        config.hub_key,
        session,
        config.timing.http_timeout,
    )
    stack.push_async_callback(hub.close)  # after the tasks stop, before the session closes
    state = GatewayState(config=config, endpoint=endpoint, pool=pool, keys=keys, hub=hub, ring=ring)
    # A gateway the hub cannot know must not start half-way.
    await _enrol(hub, config, endpoint, ring)
    stack.push_async_callback(_stop_tasks, state)
    # What a crash or an outage left open is taken up by the durable sweep.
    state.spawn(sweep_loop(state), name="sweep")
    log.info("gateway_started", agency=config.agency_code, endpoint=endpoint)
    return state


async def _stop_tasks(state: GatewayState) -> None:
    """Cancel the gateway's background tasks and wait until each has ended (a batch of
    conclusions in flight is finished first: it commits or fails as one)."""
    if state.conclusions is not None:
        await state.conclusions.close()
    for task in list(state.tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*state.tasks, return_exceptions=True)


def create_gateway_app(config: GatewayConfig, endpoint: str) -> web.Application:
    """The application; ``endpoint`` is this process's socket URL.

    The hub is told ``config.public_endpoint`` instead when one is configured: the
    address of a balancer in front of several processes of this agency, each of
    which would otherwise take the hub's routing over with its own socket.
    """
    endpoint = config.public_endpoint or endpoint
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware], client_max_size=MAX_REQUEST_BYTES
    )
    app[LIST_SYNC] = ListSync()
    app[RING_WATCH] = RingWatch()
    app[NOTICES] = Listener(config.database_url, f"gateway:{config.agency_code}")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app[GATEWAY_STATE] = await _open_state(stack, config, endpoint)
            yield
        log.info("gateway_stopped", agency=config.agency_code)

    # Background work, in start order (each needs the state the first one opens).
    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(oplog_context)  # 操作内容の記録 of the internal and staff faces
    app.cleanup_ctx.append(ring_watch_context)
    app.cleanup_ctx.append(list_sync_context)
    app.cleanup_ctx.append(provision_batch_context)
    app.on_shutdown.append(_stopping)
    records.setup_records(app)
    query.setup_query(app)
    staff.setup_staff(app)
    ops.setup_ops(app, config)
    kokuhoren.setup_kokuhoren(app)
    # Last: what other processes of this agency announce (key reloads, new lists).
    app.cleanup_ctx.append(listener_context)
    app.add_subapp("/internal", _internal_face())
    app.add_subapp("/network", _network_face())
    app.router.add_get("/staff", console.redirect_to_console)  # before the face: it wins
    app.add_subapp("/staff", _staff_face())
    app.router.add_get("/openapi.json", openapi.serve_document)
    return app


async def _stopping(app: web.Application) -> None:
    """A graceful stop has begun: long-polls answer now, with the state as it is."""
    state = app.get(GATEWAY_STATE)
    if state is not None:
        state.stopping.set()
        state.notify_all()


def _internal_face() -> web.Application:
    """Core systems: each handler authorizes its operation (certificate or token)."""
    internal = web.Application(middlewares=[private_middleware, operation_log_middleware])
    for flow in (persons, replica, query, review, records, kokuhoren, ops, authlist):
        flow.add_internal_routes(internal)
    return internal


def _network_face() -> web.Application:
    """The hub only: its client certificate is checked before any handler runs."""
    network = web.Application(middlewares=[hub_only_middleware])
    network_face.add_network_routes(network)
    authlist.add_network_routes(network)
    return network


def _staff_face() -> web.Application:
    """Staff: each handler checks the session and the role it needs."""
    staff_app = web.Application(middlewares=[private_middleware, operation_log_middleware])
    for flow in (staff, review, records, ops, console):
        flow.add_staff_routes(staff_app)
    return staff_app
