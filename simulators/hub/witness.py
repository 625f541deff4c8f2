"""The hub as witness of agencies' record chains: ``POST`` and ``GET /network/v1/witness``.

Each gateway sends every checkpoint it signs (:mod:`chukan.gateway.records.witnessing`)
with the digests of the records since its previous one.  The hub checks that the
caller is the agency, that one of its registered signing keys signed the checkpoint
and that the segment follows the last one witnessed for the agency, then countersigns
with its own key and time and keeps it append-only (migration 0040).  What the hub
holds is what a superuser at the agency cannot rewrite: a rewritten chain or deleted
checkpoints get 409 (``witness_conflict``, ``witness_out_of_sequence``), the
agency's alarm.  The values and the signed bytes are
:mod:`chukan.gateway.records.witness_format`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.web import current_request_id, read_json
from chukan.gateway.records.chain import checkpoint_message
from chukan.gateway.records.witness_format import Receipt, WitnessRequest, receipt_for
from chukan.keys import KeysError
from chukan.simulators.errors import (
    WitnessConflictError,
    WitnessOutOfSequenceError,
    WitnessSignatureInvalidError,
)
from chukan.simulators.hub import auth
from chukan.simulators.hub.registry import load_agency
from chukan.simulators.hub.state import HUB_STATE, HubState, utcnow

log = structlog.get_logger("chukan.hub")

#: A witness request carries up to MAX_SEGMENT digests (64 hex characters each).
MAX_WITNESS_BODY: Final = 8 * 1024 * 1024
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
_DIGEST: Final = 32


def receipt_from_row(row: asyncpg.Record) -> Receipt:
    """A stored witnessed checkpoint as the receipt the agency was given."""
    raw: bytes = row["records"]
    return Receipt(
        tenant=row["tenant"],
        after_seq=row["after_seq"],
        seq=row["seq"],
        hash=row["hash"],
        signed_at=row["signed_at"],
        key_id=row["key_id"],
        signature=row["signature"],
        segment_digest=row["segment_digest"],
        witnessed_at=row["witnessed_at"],
        witness_key_id=row["witness_key_id"],
        witness_signature=row["witness_signature"],
        records=tuple(raw[i : i + _DIGEST] for i in range(0, len(raw), _DIGEST)),
    )


def _same(stored: Receipt, request: WitnessRequest) -> bool:
    """The very checkpoint already witnessed (a retry, or another worker of the agency)."""
    return (
        stored.after_seq == request.after_seq
        and stored.hash == request.hash
        and stored.signature == request.signature
        and stored.key_id == request.key_id
        and stored.segment_digest == request.segment_digest
    )


async def _check_signature(state: HubState, request: WitnessRequest) -> None:
    agency = await load_agency(state.pool, request.tenant)
    key = agency.signing_keys.get(request.key_id)
    if key is None:
        raise WitnessSignatureInvalidError(
            f"key {request.key_id} is not a signing key of agency {request.tenant}"
        )
    message = checkpoint_message(request.tenant, request.seq, request.hash, request.signed_at)
    try:
        key.verify(message, request.signature)
    except KeysError:
        raise WitnessSignatureInvalidError(
            f"the checkpoint signature does not verify under {request.key_id}"
        ) from None


async def witness(state: HubState, request: WitnessRequest) -> Receipt:
    """Countersign and keep ``request``, or give the receipt it already has.

    One agency's submissions are serialised by a transaction lock on the agency, so
    two of its workers sending the same checkpoint at once get one row and the same
    receipt; the unique keys of migration 0040 hold the chain linear whatever happens.
    """
    await _check_signature(state, request)
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('chukan-witness'), hashtext($1))",
            request.tenant,
        )
        row = await conn.fetchrow(
            "SELECT * FROM witnessed_checkpoints WHERE tenant = $1 AND seq = $2",
            request.tenant,
            request.seq,
        )
        if row is not None:
            stored = receipt_from_row(row)
            if _same(stored, request):
                return stored
            log.error("witness_conflict", tenant=request.tenant, seq=request.seq)
            raise WitnessConflictError(
                f"seq {request.seq} of {request.tenant} was witnessed with another hash, "
                "signature or records"
            )
        last = await conn.fetchval(
            "SELECT seq FROM witnessed_checkpoints WHERE tenant = $1 ORDER BY seq DESC LIMIT 1",
            request.tenant,
        )
        last = last or 0
        if request.after_seq != last:
            log.error(
                "witness_out_of_sequence",
                tenant=request.tenant,
                seq=request.seq,
                after_seq=request.after_seq,
                last_witnessed=last,
            )
            raise WitnessOutOfSequenceError(
                f"the last checkpoint witnessed for {request.tenant} is at seq {last}, "
                f"not {request.after_seq}"
            )
        # Microseconds, as a timestamptz keeps them: the signed time reads back the same.
        witnessed_at = utcnow()
        signer = state.keys.signing
        unsigned = receipt_for(
            request, witnessed_at=witnessed_at, witness_key_id=signer.key_id, signature=b""
        )
        signature = signer.sign(unsigned.message())
        await conn.execute(
            """INSERT INTO witnessed_checkpoints (tenant, seq, after_seq, hash, signed_at,
                   key_id, signature, segment_digest, records, witnessed_at, witness_key_id,
                   witness_signature, request_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            request.tenant,
            request.seq,
            request.after_seq,
            request.hash,
            request.signed_at,
            request.key_id,
            request.signature,
            request.segment_digest,
            b"".join(request.records),
            witnessed_at,
            signer.key_id,
            signature,
            current_request_id(),
        )
    log.info(
        "checkpoint_witnessed",
        tenant=request.tenant,
        seq=request.seq,
        after_seq=request.after_seq,
        records=len(request.records),
    )
    return dataclasses.replace(unsigned, witness_signature=signature)


async def post_witness(request: web.Request) -> web.Response:
    """``POST /network/v1/witness``: a signed checkpoint in, the hub's receipt out."""
    state = request.config_dict[HUB_STATE]
    witness_request = WitnessRequest.from_json(await read_json(request, limit=MAX_WITNESS_BODY))
    auth.require_sender(request, witness_request.tenant)
    receipt = await witness(state, witness_request)
    return web.json_response(receipt.to_json())


def _tenant_of(request: web.Request) -> str:
    """The caller's own agency (over plain HTTP, the ``tenant`` the query names)."""
    named = request.query.get("tenant")
    identity = request.get(auth.HUB_PEER)
    if identity is None:
        if not named:
            raise ValidationError("tenant is required")
        return named
    auth.require_sender(request, named or identity.subject_id)
    return str(identity.subject_id)


def _int_param(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValidationError(f"{name} must be an integer") from None
    if number < 0:
        raise ValidationError(f"{name} must not be negative")
    return number


async def list_receipts(conn: db.Executor, tenant: str, after: int, limit: int) -> list[Receipt]:
    rows = await conn.fetch(
        "SELECT * FROM witnessed_checkpoints WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        tenant,
        after,
        limit,
    )
    return [receipt_from_row(r) for r in rows]


async def get_witness(request: web.Request) -> web.Response:
    """``GET /network/v1/witness?after=SEQ&limit=N``: the caller's own receipts, in order."""
    state = request.config_dict[HUB_STATE]
    tenant = _tenant_of(request)
    after = _int_param(request, "after", 0)
    limit = _int_param(request, "limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE}")
    receipts = await list_receipts(state.pool, tenant, after, limit)
    body: dict[str, Any] = {
        "receipts": [r.to_json() for r in receipts],
        "next_after": receipts[-1].seq if len(receipts) == limit else None,
    }
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/network/v1/witness", post_witness)
    app.router.add_get("/network/v1/witness", get_witness)
