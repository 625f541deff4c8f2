"""The hub's application: routes, middlewares and a start-up that releases what it opened.

Start-up acquires each resource on one :class:`contextlib.AsyncExitStack`, so a
failure at any step (migration, keys, list, session) closes what was already
opened, and stopping releases everything in reverse order: the delivery worker
first, then the client session, then the pool.  Migrations are applied only when
the configuration gives the owner's URL for it (``migration_database_url``);
otherwise a pending one stops the start (``chukan db migrate --component hub``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.notices import NOTICES, Listener, listener_context
from chukan.gateway.core.tls import client_session
from chukan.gateway.core.web import access_log_middleware, error_middleware
from chukan.simulators.hub import (
    auth,
    checkpoints,
    conclusions,
    enrolment,
    lists,
    messages,
    openapi,
    reconcile,
    records,
    registry,
    routing,
    witness,
    worker,
)
from chukan.simulators.hub.config import HUB_OWNER, HubConfig
from chukan.simulators.hub.probes import caller_middleware, setup_probes
from chukan.simulators.hub.state import HUB_STATE, HubState, load_secret

log = structlog.get_logger("chukan.hub")


def create_hub_app(config: HubConfig) -> web.Application:
    app = web.Application(
        middlewares=[
            access_log_middleware,
            error_middleware,
            auth.peer_middleware(config.tls is not None),
            caller_middleware,
        ],
        client_max_size=8 * 1024 * 1024,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await db.open_checked_pool(
                config.database_url, "hub", migration_url=config.migration_database_url
            )
            stack.push_async_callback(pool.close)
            keys = await asyncio.to_thread(
                load_or_create_keys, config.key_dir, HUB_OWNER, config.key_passphrase
            )
            authorization, signed = await lists.initial_list(pool, config, keys.signing)
            state = HubState(
                config=config,
                pool=pool,
                keys=keys,
                secret=await asyncio.to_thread(load_secret, config.key_dir, config.key_passphrase),
                authorization_list=authorization,
                signed_list=signed,
                session=await stack.enter_async_context(client_session(config.tls)),
            )
            app[HUB_STATE] = state
            # Record writes shared by concurrent queries: drained after the worker stops.
            state.opening = routing.group_commit(pool)
            stack.push_async_callback(state.opening.close)
            state.concluding = conclusions.group_commit(pool)
            stack.push_async_callback(state.concluding.close)
            worker.start_worker(state)
            stack.push_async_callback(worker.stop_worker, state)
            await stack.enter_async_context(checkpoints.running_checkpointer(state))
            log.info("hub_started", signing_key=keys.signing.key_id)
            yield
        log.info("hub_stopped")

    app[NOTICES] = Listener(config.database_url, "hub")
    app.cleanup_ctx.append(lifecycle)
    # The list other hub processes publish; the listener last, after its subscribers.
    app.cleanup_ctx.append(lists.list_watch_context)
    app.cleanup_ctx.append(listener_context)
    setup_probes(app)
    app.router.add_post("/admin/v1/agencies", registry.register_agency)
    enrolment_path = "/admin/v1/agencies/{code}/enrolment-token"
    app.router.add_post(enrolment_path, enrolment.issue_token)
    app.router.add_delete(enrolment_path, enrolment.revoke_token)
    app.router.add_get(enrolment_path, enrolment.token_status)
    app.router.add_get("/admin/v1/records", records.list_records)
    app.router.add_post("/admin/v1/deliveries/retry", worker.retry_deliveries)
    app.router.add_post("/admin/v1/authorization-list", lists.publish_list)
    app.router.add_get("/admin/v1/authorization-list/versions", lists.list_versions)
    app.router.add_get("/network/v1/agencies", registry.list_agencies)
    app.router.add_get("/network/v1/agencies/{code}", registry.get_agency)
    app.router.add_get("/network/v1/hub-key", registry.hub_key)
    app.router.add_get("/network/v1/authorization-list", lists.authorization_list)
    app.router.add_post("/network/v1/messages", messages.receive_message)
    app.router.add_post("/network/v1/messages/batch", messages.receive_batch)
    app.router.add_get("/network/v1/records", reconcile.list_records)
    witness.add_routes(app)
    app.router.add_get("/openapi.json", openapi.SPEC.serve)
    return app
