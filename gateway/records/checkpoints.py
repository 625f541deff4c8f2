"""Signed checkpoints of the record chain: the agency's Ed25519 key vouches for a chain head.

A checkpointer signs ``(seq, hash)`` of the chain head every N records or T
seconds (:class:`~chukan.gateway.core.settings.RecordsConfig`), after checking
the segment it vouches for.  What a database superuser can still do undetected
is append well-formed records (or cut records) *after the last signed
checkpoint*; the checkpointer bounds that window to T seconds, and sends each
checkpoint to the witness (:mod:`.witnessing`), outside the database.

Several processes of one agency each run a checkpointer.  Two of them signing
at once is harmless: a checkpoint vouches for ``(seq, hash)`` of the chain as it
was, each is verified on its own, and one head is signed once (the primary key
``(tenant, seq)``); the process that loses the race for a head gets nothing to
do (``None``), not an error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.records import witnessing
from chukan.gateway.records.chain import checkpoint_message, genesis_hash, verify_segment
from chukan.gateway.records.errors import ChainBrokenError
from chukan.gateway.records.store import ROW_COLUMNS
from chukan.keys import SigningKeyPair

log = structlog.get_logger("chukan.records")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant: str
    seq: int
    hash: bytes
    signed_at: dt.datetime
    key_id: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash.hex(),
            "signed_at": self.signed_at.isoformat(),
            "key_id": self.key_id,
            "signature": self.signature.hex(),
        }


async def make_checkpoint(
    conn: db.Conn,
    tenant: str,
    signer: SigningKeyPair,
    *,
    every: int,
    interval: dt.timedelta,
    force: bool = False,
) -> Checkpoint | None:
    """Sign the chain head if due: ``every`` unsigned records, or the oldest older than
    ``interval`` (or ``force``).  The segment since the last checkpoint is checked first."""
    try:
        return await _sign_if_due(conn, tenant, signer, every, interval, force=force)
    except asyncpg.SerializationError:
        # Another process inserted the checkpoint of this very head after our snapshot.
        log.info("record_checkpoint_signed_elsewhere", tenant=tenant)
        return None


async def _sign_if_due(
    conn: db.Conn,
    tenant: str,
    signer: SigningKeyPair,
    every: int,
    interval: dt.timedelta,
    *,
    force: bool,
) -> Checkpoint | None:
    async with conn.transaction(isolation="repeatable_read"):
        head = await conn.fetchrow(
            "SELECT seq, hash FROM record_chain_heads WHERE tenant = $1", tenant
        )
        last = await conn.fetchrow(
            "SELECT seq, hash FROM record_checkpoints WHERE tenant = $1 ORDER BY seq DESC LIMIT 1",
            tenant,
        )
        if head is None:
            return None
        last_seq, prev = (last["seq"], last["hash"]) if last else (0, genesis_hash(tenant))
        if head["seq"] <= last_seq:
            return None
        rows = await conn.fetch(
            f"SELECT {ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
            "WHERE tenant = $1 AND seq > $2 ORDER BY seq, id",
            tenant,
            last_seq,
        )
        if not force and len(rows) < every:
            oldest = rows[0]["recorded_at"] if rows else None
            if oldest is None or utcnow() - oldest < interval:
                return None
        try:
            verify_segment(
                rows,
                after_seq=last_seq,
                prev_hash=prev,
                head_seq=head["seq"],
                head_hash=head["hash"],
            )
        except ChainBrokenError as exc:
            log.error("record_chain_broken", tenant=tenant, seq=exc.seq, id=exc.record_id)
            raise
        signed_at = utcnow()
        head_hash = head["hash"]
        signature = signer.sign(checkpoint_message(tenant, head["seq"], head_hash, signed_at))
        inserted = await conn.fetchval(
            """INSERT INTO record_checkpoints (tenant, seq, hash, signed_at, key_id, public_key,
                                               signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1""",
            tenant,
            head["seq"],
            head_hash,
            signed_at,
            signer.key_id,
            signer.public.raw,
            signature,
        )
    if not inserted:
        return None  # another process of this tenant signed the same head
    log.info("record_checkpoint_signed", tenant=tenant, seq=head["seq"], key_id=signer.key_id)
    return Checkpoint(tenant, head["seq"], head_hash, signed_at, signer.key_id, signature)


async def checkpoint_now(conn: db.Conn, tenant: str, signer: SigningKeyPair) -> Checkpoint | None:
    """Sign the chain head whatever is due (before an export, at a clean stop)."""
    return await make_checkpoint(
        conn, tenant, signer, every=1, interval=dt.timedelta(0), force=True
    )


async def latest_checkpoint(conn: db.Executor, tenant: str) -> Checkpoint | None:
    row = await conn.fetchrow(
        "SELECT * FROM record_checkpoints WHERE tenant = $1 ORDER BY seq DESC LIMIT 1", tenant
    )
    if row is None:
        return None
    return Checkpoint(
        tenant, row["seq"], row["hash"], row["signed_at"], row["key_id"], row["signature"]
    )


async def checkpoint_and_witness(state: GatewayState, *, force: bool = False) -> None:
    """One pass: sign the chain head if due (or ``force``), then send every checkpoint
    without a receipt to the witness (:mod:`.witnessing`).  A broken chain is kept in the
    alarm state every worker reads; checkpoints signed before it are still sent."""
    settings = state.config.records
    tenant = state.config.agency_code
    async with state.pool.acquire() as conn:
        try:
            made = await make_checkpoint(
                conn,
                tenant,
                state.keys.signing,
                every=1 if force else settings.checkpoint_every,
                interval=dt.timedelta(0) if force else settings.checkpoint_interval,
                force=force,
            )
        except ChainBrokenError as exc:
            await witnessing.note_chain_broken(conn, tenant, exc.seq)
            witnessing.forget(tenant)
        else:
            if made is not None:
                await witnessing.clear_chain_broken(conn, tenant)
    await witnessing.witness_pending(state)


async def checkpointer(state: GatewayState) -> None:
    """Background task: sign the chain head when due and have it witnessed, every
    ``checkpoint_poll`` seconds."""
    while True:
        await asyncio.sleep(state.config.records.checkpoint_poll)
        try:
            await checkpoint_and_witness(state)
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("record_checkpoint_failed")
