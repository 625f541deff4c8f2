"""The 国保連 simulator's application: routes, and a start-up that releases what it opened.

HTTP API
--------
* ``PUT /admin/v1/insurers/{保険者番号}`` (admin token): register a 保険者 —
  ``{"name", "token_sha256", "signing_key": {"key_id", "public"},
  "encryption_key": {"key_id", "public"}}``.
* ``POST /admin/v1/returns`` (admin token): produce the 給付実績 file of a
  month — ``{"insurer_number", "month": "YYYYMM"}``.
* ``GET /mailbox/v1/keys``: the simulator's public keys.
* ``POST /mailbox/v1/files`` (insurer token, signed file envelope): deliver a
  file → 201 (or 200 for a repeat) ``{"duplicate", "intake": {...}}``.
* ``GET /mailbox/v1/files/{ファイル管理番号}`` (insurer token): the intake result again.
* ``GET /mailbox/v1/outbox?month=YYYYMM`` (insurer token): return files waiting.
* ``GET /mailbox/v1/outbox/{ファイル管理番号}`` (insurer token): one return file,
  sealed for the insurer's encryption key.

Every mailbox answer is signed (``Chukan-Signature``) with the simulator's key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.web import access_log_middleware, error_middleware
from chukan.gateway.kokuhoren.mailbox import KOKUHOREN_PARTY
from chukan.simulators.kokuhoren import insurers, intake, openapi, returns
from chukan.simulators.kokuhoren.config import KokuhorenConfig
from chukan.simulators.kokuhoren.probes import setup_probes
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE, KokuhorenState

log = structlog.get_logger("chukan.kokuhoren")


def create_kokuhoren_app(config: KokuhorenConfig) -> web.Application:
    app = web.Application(
        middlewares=[access_log_middleware, error_middleware],
        client_max_size=config.max_file_bytes * 2 + 65536,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await db.open_checked_pool(
                config.database_url, "kokuhoren", migration_url=config.migration_database_url
            )
            stack.push_async_callback(pool.close)
            keys = await asyncio.to_thread(
                load_or_create_keys, config.key_dir, KOKUHOREN_PARTY, config.key_passphrase
            )
            app[KOKUHOREN_STATE] = KokuhorenState(config=config, pool=pool, keys=keys)
            log.info("kokuhoren_started", encryption_key=keys.encryption.key_id)
            yield
        log.info("kokuhoren_stopped")

    app.cleanup_ctx.append(lifecycle)
    setup_probes(app)
    app.router.add_put("/admin/v1/insurers/{insurer_number}", insurers.register_insurer)
    app.router.add_post("/admin/v1/returns", returns.produce_returns)
    app.router.add_get("/mailbox/v1/keys", insurers.public_keys)
    app.router.add_post("/mailbox/v1/files", intake.receive_file)
    app.router.add_get("/mailbox/v1/files/{file_management_number}", intake.get_intake)
    app.router.add_get("/mailbox/v1/outbox", returns.list_outbox)
    app.router.add_get("/mailbox/v1/outbox/{file_management_number}", returns.fetch_return)
    app.router.add_get("/openapi.json", openapi.SPEC.serve)
    return app
