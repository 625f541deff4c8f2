"""The gateway server: one agency's 中間サーバー.

Two faces on one aiohttp application:

* ``/internal/v1/...`` for the agency's core systems (token-authenticated,
  per-operation grants): register people, store the replica, submit queries,
  collect results, read provision records;
* ``/network/v1/messages`` for the hub: provision requests with permits,
  answers to our own queries, refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from chukan.keys import b64e
from chukan.permits import (
    PermitsError,
    verify_signed_list,
)

from . import db
from .config import (
    GatewayConfig,
)
from .errors import (
    GatewayError,
)
from .hubclient import HubClient
from .internal import get_query, health, list_records, register_person, store_item, submit_query
from .keystore import load_or_create_keys
from .kokuhoren import setup_kokuhoren_routes
from .network import receive_message
from .ops import metrics_middleware, setup_ops
from .queries import send_query
from .records import setup_records
from .replica import setup_replica_routes
from .replica_registration import setup_registration_routes
from .review import setup_review_routes
from .staff import setup_staff
from .state import GATEWAY_STATE, GatewayState, utcnow
from .web import (
    error_middleware,
)

log = structlog.get_logger("chukan.gateway")

# -- lifecycle -----------------------------------------------------------------------------


async def refresh_authorization_list(state: GatewayState) -> None:
    """Fetch and verify the hub-signed list; keep the last good one only while it is valid."""
    try:
        signed = await state.hub.get("/network/v1/authorization-list")
        state.authorization_list = verify_signed_list(signed, state.hub.trusted_hub, now=utcnow())
        state.list_error = None
    except (GatewayError, PermitsError) as exc:
        state.list_error = getattr(exc, "code", type(exc).__name__)
        current = state.authorization_list
        if current is not None and current.expires_at <= utcnow():
            state.authorization_list = None
        log.warning("authorization_list_unavailable", code=state.list_error)


async def _list_refresher(state: GatewayState) -> None:
    while True:
        await asyncio.sleep(state.config.timing.list_refresh)
        await refresh_authorization_list(state)


async def _resume_queued(state: GatewayState) -> None:
    """After a restart, queries accepted but not yet sent are sent now."""
    rows = await state.pool.fetch("SELECT query_id FROM queries WHERE status = 'queued'")
    for row in rows:
        state.spawn(send_query(state, row["query_id"]), name=f"resend-{row['query_id']}")


def create_gateway_app(config: GatewayConfig, endpoint: str) -> web.Application:
    """The application; ``endpoint`` is the URL the hub uses to reach this gateway."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware], client_max_size=8 * 1024 * 1024
    )

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
        keys = await asyncio.to_thread(
            load_or_create_keys, config.key_dir, config.agency_code, config.key_passphrase
        )
        session = aiohttp.ClientSession()
        hub = HubClient(
            config.hub_url,
            config.agency_code,
            keys.signing,
            config.hub_key,
            session,
            config.timing.http_timeout,
        )
        state = GatewayState(config=config, endpoint=endpoint, pool=pool, keys=keys, hub=hub)
        app[GATEWAY_STATE] = state
        await hub.enrol(
            config.enrolment_token,
            {
                "code": config.agency_code,
                "name": config.agency_name,
                "endpoint": endpoint,
                "signing_key": {
                    "key_id": keys.signing.key_id,
                    "public": b64e(keys.signing.public.raw),
                },
                "encryption_key": {
                    "key_id": keys.encryption.key_id,
                    "public": b64e(keys.encryption.public.raw),
                },
            },
        )
        await refresh_authorization_list(state)
        refresher = asyncio.create_task(_list_refresher(state), name="list-refresher")
        await _resume_queued(state)
        log.info("gateway_started", agency=config.agency_code, endpoint=endpoint)
        yield
        refresher.cancel()
        for task in list(state.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(refresher, *state.tasks, return_exceptions=True)
        await session.close()
        await pool.close()
        log.info("gateway_stopped", agency=config.agency_code)

    app.cleanup_ctx.append(lifecycle)
    setup_records(app)
    setup_staff(app)
    setup_ops(app, config)
    app.router.add_get("/health", health)
    app.router.add_post("/internal/v1/persons", register_person)
    app.router.add_put("/internal/v1/persons/{atena_id}/items/{item_code}", store_item)
    app.router.add_post("/internal/v1/queries", submit_query)
    app.router.add_get("/internal/v1/queries/{query_id}", get_query)
    app.router.add_get("/internal/v1/records", list_records)
    app.router.add_post("/network/v1/messages", receive_message)
    setup_kokuhoren_routes(app)
    setup_replica_routes(app)
    setup_registration_routes(app)
    setup_review_routes(app)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before building the app so the endpoint (with an ephemeral port) is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
