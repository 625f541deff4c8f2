"""The gateway server: one agency's 中間サーバー.

Two faces on one aiohttp application:

* ``/internal/v1/...`` for the agency's core systems (client certificate or
  bearer token, per-operation grants): register people, store the replica,
  submit queries, collect results, read provision records; for operators:
  status, authorization-list refresh, key-ring reload;
* ``/network/v1/...`` for the hub only (its client certificate): provision
  requests with permits, answers to our own queries, refusals, pushed lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Final

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.access import network_peer_middleware
from chukan.gateway.core.config import (
    GatewayConfig,
)
from chukan.gateway.core.errors import EnrolmentRefusedError, UpstreamError
from chukan.gateway.core.keyring import (
    current_keys,
    enrolment_payload,
    load_or_create_ring,
    reload_keys,
)
from chukan.gateway.core.retry import backoff_delay
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.gateway.core.tls import client_session
from chukan.gateway.core.web import (
    error_middleware,
)
from chukan.gateway.hublink.client import HubClient
from chukan.gateway.hublink.listsync import (
    LIST_SYNC,
    ListSync,
    list_sync_context,
    receive_pushed_list,
    refresh_list,
)
from chukan.gateway.kokuhoren.routes import setup_kokuhoren_routes
from chukan.gateway.ops.metrics_http import metrics_middleware
from chukan.gateway.ops.routes import setup_ops
from chukan.gateway.ops.status import gateway_status
from chukan.gateway.provision.provide import receive_message
from chukan.gateway.provision.review import setup_review_routes
from chukan.gateway.query.routes import (
    get_query,
    health,
    list_records,
    register_person,
    store_item,
    submit_query,
)
from chukan.gateway.query.sweep import sweep_loop
from chukan.gateway.records.routes import setup_records
from chukan.gateway.replica.routes import setup_registration_routes, setup_replica_routes
from chukan.gateway.staff.routes import setup_staff
from chukan.keys.ring import KeyRing

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


def create_gateway_app(config: GatewayConfig, endpoint: str) -> web.Application:
    """The application; ``endpoint`` is the URL the hub uses to reach this gateway."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, network_peer_middleware],
        client_max_size=8 * 1024 * 1024,
    )
    app[LIST_SYNC] = ListSync()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if config.migration_database_url is not None:
            await db.migrate_url(config.migration_database_url, "chukan.gateway")
        pool = await db.create_pool(config.database_url)
        tenant = await pool.fetchval("SELECT chukan_tenant()")
        if tenant != config.agency_code:
            await pool.close()
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
        hub = HubClient(
            config.hub_url,
            config.agency_code,
            keys.signing,
            config.hub_key,
            session,
            config.timing.http_timeout,
        )
        state = GatewayState(
            config=config, endpoint=endpoint, pool=pool, keys=keys, hub=hub, ring=ring
        )
        app[GATEWAY_STATE] = state
        try:
            await _enrol(hub, config, endpoint, ring)
        except BaseException:  # a gateway the hub cannot know must not start half-way
            await session.close()
            await pool.close()
            raise
        # What a crash or an outage left open is taken up by the durable sweep.
        state.spawn(sweep_loop(state), name="sweep")
        log.info("gateway_started", agency=config.agency_code, endpoint=endpoint)
        yield
        for task in list(state.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*state.tasks, return_exceptions=True)
        await session.close()
        await pool.close()
        log.info("gateway_stopped", agency=config.agency_code)

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(list_sync_context)
    setup_records(app)
    setup_staff(app)
    setup_ops(app, config)
    app.router.add_get("/health", health)
    app.router.add_get("/internal/v1/status", gateway_status)
    app.router.add_post("/internal/v1/authorization-list/refresh", refresh_list)
    app.router.add_post("/internal/v1/keys/reload", reload_keys)
    app.router.add_post("/internal/v1/persons", register_person)
    app.router.add_put("/internal/v1/persons/{atena_id}/items/{item_code}", store_item)
    app.router.add_post("/internal/v1/queries", submit_query)
    app.router.add_get("/internal/v1/queries/{query_id}", get_query)
    app.router.add_get("/internal/v1/records", list_records)
    app.router.add_post("/network/v1/messages", receive_message)
    app.router.add_post("/network/v1/authorization-list", receive_pushed_list)
    setup_kokuhoren_routes(app)
    setup_replica_routes(app)
    setup_registration_routes(app)
    setup_review_routes(app)
    return app
