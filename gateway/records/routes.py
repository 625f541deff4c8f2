"""The records' staff API (disclosure, verification, checkpoints) and background work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.keyring import own_verification_keys
from chukan.gateway.core.state import GATEWAY_STATE, utcnow
from chukan.gateway.core.validation import ATENA_PATTERN
from chukan.gateway.records.checkpoints import (
    checkpoint_and_witness,
    checkpoint_now,
    checkpointer,
    latest_checkpoint,
)
from chukan.gateway.records.disclosure import disclose, disclosure_csv
from chukan.gateway.records.errors import ChainBrokenError
from chukan.gateway.records.internal_api import list_records
from chukan.gateway.records.store import ensure_partitions, partition_keeper
from chukan.gateway.records.verify import verify_chain
from chukan.gateway.staff.api import csv_response
from chukan.gateway.staff.roles import ROLE_ADMIN, ROLE_AUDITOR
from chukan.gateway.staff.sessions import audit_staff, require_staff

log = structlog.get_logger("chukan.records")


async def records_context(app: web.Application) -> AsyncIterator[None]:
    """Partitions ahead at start-up; checkpointer and daily partition job while running."""
    state = app[GATEWAY_STATE]
    await ensure_partitions(state.pool, utcnow().date(), state.config.records.partitions_ahead + 1)
    # What a stop left unsigned or unwitnessed is signed and witnessed before serving, so a
    # restart after a long stop does not meet its own old tail as "waiting for the witness".
    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        await asyncio.wait_for(
            checkpoint_and_witness(state, force=True), state.config.timing.http_timeout * 2
        )
    tasks = [
        asyncio.create_task(checkpointer(state), name="records-checkpointer"),
        asyncio.create_task(partition_keeper(state), name="records-partitions"),
    ]
    yield
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    # Sign what is left, so that a clean stop leaves no unsigned tail.
    with contextlib.suppress(ChainBrokenError, OSError, asyncpg.PostgresError):
        async with state.pool.acquire() as conn:
            await checkpoint_now(conn, state.config.agency_code, state.keys.signing)


async def get_disclosure(request: web.Request) -> web.Response:
    """Every query and provision about one person (auditor); ``?format=json|csv``;
    ``?audience=person`` leaves out records flagged non-disclosure (不開示)."""
    session = await require_staff(request, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = request.match_info["atena_id"]
    if not ATENA_PATTERN.match(atena_id):
        raise ValidationError("団体内統合宛名番号 must be 1 to 15 digits")
    fmt = request.query.get("format", "json")
    audience = request.query.get("audience", "auditor")
    if fmt not in ("json", "csv") or audience not in ("auditor", "person"):
        raise ValidationError("format must be json or csv; audience auditor or person")
    tenant = state.config.agency_code
    async with state.pool.acquire() as conn, conn.transaction():
        rows = await disclose(conn, tenant, atena_id, include_non_disclosed=audience == "auditor")
        rows = [r for r in rows if session.sees(r["item_code"])]  # the office's item classes
        checkpoint = await latest_checkpoint(conn, tenant)
        # The disclosure itself is on the record, in the same transaction.
        await audit_staff(
            request,
            "records.disclose",
            target=atena_id,
            detail={"records": len(rows), "format": fmt, "audience": audience},
            conn=conn,
        )
    log.info("records_disclosed", records=len(rows), format=fmt)
    if fmt == "csv":
        return csv_response(disclosure_csv(rows), "disclosure.csv")
    return web.json_response(
        {
            "agency": tenant,
            "atena_id": atena_id,
            "generated_at": utcnow().isoformat(),
            "records": rows,
            "checkpoint": checkpoint.to_json() if checkpoint else None,
        }
    )


async def get_verify(request: web.Request) -> web.Response:
    """Walk this agency's chain against its own signing key (auditor)."""
    await require_staff(request, ROLE_AUDITOR)
    state = request.config_dict[GATEWAY_STATE]
    trusted = own_verification_keys(state.ring)  # checkpoints signed before a rotation too
    async with state.pool.acquire() as conn:
        report = await verify_chain(conn, state.config.agency_code, trusted)
    await audit_staff(
        request, "records.verify", detail={"ok": report.ok, "issues": len(report.issues)}
    )
    return web.json_response(report.to_json())


async def post_checkpoint(request: web.Request) -> web.Response:
    """Sign a checkpoint now (auditor, admin), e.g. before an export; 409
    ``record_chain_broken`` when the chain does not verify."""
    await require_staff(request, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    async with state.pool.acquire() as conn:
        checkpoint = await checkpoint_now(conn, state.config.agency_code, state.keys.signing)
        if checkpoint is None:
            checkpoint = await latest_checkpoint(conn, state.config.agency_code)
    await audit_staff(
        request, "records.checkpoint", detail={"seq": checkpoint.seq if checkpoint else None}
    )
    return web.json_response({"checkpoint": checkpoint.to_json() if checkpoint else None})


def setup_records(app: web.Application) -> None:
    """Background work of the records, and their staff API."""
    app.cleanup_ctx.append(records_context)


def add_staff_routes(staff: web.Application) -> None:
    """Routes on the staff's ``/staff`` face (paths relative to its prefix)."""
    staff.router.add_get("/v1/disclosures/{atena_id}", get_disclosure)
    staff.router.add_get("/v1/records/verify", get_verify)
    staff.router.add_post("/v1/records/checkpoints", post_checkpoint)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_get("/v1/records", list_records)
