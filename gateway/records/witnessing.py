"""Witnessed checkpoints, gateway side: submitting signed checkpoints to the hub, keeping its
receipts, and the alarm state every worker of the agency shares (in the database).

After the checkpointer signs (:mod:`.checkpoints`), :func:`witness_pending` sends every
checkpoint that has no receipt yet, in ``seq`` order, with the digest of each record of its
segment (:func:`~chukan.gateway.records.witness_format.record_digest`), to ``POST
/network/v1/witness``; the hub's countersignature is checked under the pinned hub key
(``config.hub_key``) and the receipt kept (``record_witness_receipts``).  Several
workers may send the same checkpoint: the hub answers each with the one receipt it
keeps, and the second copy is dropped here (``ON CONFLICT DO NOTHING``).

The policy when the witness cannot be had (docs/records.md): exchanges go on while the
oldest unwitnessed record is younger than ``[records] witness_grace`` (like X-Road's
acceptable timestamp failure period); beyond it, and at once when the witness *refuses*
a checkpoint (409: a rewritten chain, deleted checkpoints) or the checkpointer finds the
chain broken, new exchanges get 503 ``records_unwitnessed`` (:func:`require_recording`)
until the witness accepts again.  ``/ready`` and ``/metrics`` show the same state.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.metrics import Counter, Gauge
from chukan.gateway.core.state import GatewayState
from chukan.gateway.core.web import REQUEST_ID_HEADER, new_request_id, request_id_bound
from chukan.gateway.records.errors import (
    ChainBrokenError,
    RecordsUnwitnessedError,
    WitnessFormatError,
    WitnessRefusedError,
    WitnessUnavailableError,
)
from chukan.gateway.records.store import ROW_COLUMNS
from chukan.gateway.records.witness_format import Receipt, WitnessRequest, record_digest
from chukan.keys import KeysError, PublicSigningKey

log = structlog.get_logger("chukan.records")

WITNESS_PATH: Final = "/network/v1/witness"
#: Checkpoints sent per pass (the rest wait for the next pass, a second later).
PASS_LIMIT: Final = 100
#: Receipts asked for per page when reading them back from the witness.
PAGE: Final = 1000


# -- one submission ----------------------------------------------------------------------------


async def segment_request(
    conn: db.Executor, tenant: str, checkpoint: asyncpg.Record, after_seq: int
) -> WitnessRequest:
    """The witness request of one signed checkpoint: its segment's records, one digest each.

    The segment must still be what the checkpoint vouched for (as many records as seqs,
    the last one's hash the checkpoint's), else :class:`ChainBrokenError`."""
    rows = await conn.fetch(
        f"SELECT {ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
        "WHERE tenant = $1 AND seq > $2 AND seq <= $3 ORDER BY seq, id",
        tenant,
        after_seq,
        checkpoint["seq"],
    )
    seqs = [r["seq"] for r in rows]
    if seqs != list(range(after_seq + 1, checkpoint["seq"] + 1)) or (
        rows and rows[-1]["hash"] != checkpoint["hash"]
    ):
        raise ChainBrokenError(
            f"the records of checkpoint {checkpoint['seq']} no longer match it",
            seq=checkpoint["seq"],
        )
    return WitnessRequest(
        tenant=tenant,
        after_seq=after_seq,
        seq=checkpoint["seq"],
        hash=checkpoint["hash"],
        signed_at=checkpoint["signed_at"],
        key_id=checkpoint["key_id"],
        signature=checkpoint["signature"],
        records=tuple(record_digest(r) for r in rows),
    )


def check_receipt(
    receipt: Receipt, request: WitnessRequest, hub_key: PublicSigningKey
) -> str | None:
    """Why ``receipt`` is not the witness's countersignature of ``request`` (None: it is)."""
    if (
        receipt.tenant,
        receipt.after_seq,
        receipt.seq,
        receipt.hash,
        receipt.key_id,
        receipt.signature,
        receipt.segment_digest,
    ) != (
        request.tenant,
        request.after_seq,
        request.seq,
        request.hash,
        request.key_id,
        request.signature,
        request.segment_digest,
    ):
        return "the receipt is not for the checkpoint sent"
    if receipt.witness_key_id != hub_key.key_id:
        return f"the receipt is signed by {receipt.witness_key_id}, not the pinned hub key"
    try:
        hub_key.verify(receipt.message(), receipt.witness_signature)
    except KeysError:
        return "the witness signature does not verify"
    return None


async def submit(state: GatewayState, request: WitnessRequest) -> Receipt:
    """``POST /network/v1/witness``: the receipt, checked; :class:`WitnessRefusedError` on a
    409, :class:`WitnessUnavailableError` on anything else that is not a good receipt."""
    hub = state.hub
    request_id = new_request_id()
    try:
        async with hub.session.post(
            hub.base_url.rstrip("/") + WITNESS_PATH,
            json=request.to_json(),
            headers={REQUEST_ID_HEADER: request_id},
            timeout=aiohttp.ClientTimeout(total=hub.timeout),
        ) as response:
            status, body = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WitnessUnavailableError(
            f"the witness could not be reached ({type(exc).__name__})",
            reason="witness_unreachable",
        ) from None
    if status != 200:
        code = _error_code(body) or f"http_{status}"
        if status == 409:
            raise WitnessRefusedError(
                f"the witness refused checkpoint {request.seq}: {code}",
                reason=code,
                seq=request.seq,
            )
        raise WitnessUnavailableError(f"the witness answered HTTP {status} {code}", reason=code)
    try:
        receipt = Receipt.from_json(json.loads(body))
    except (ValueError, WitnessFormatError):
        raise WitnessUnavailableError(
            "the witness answered with no readable receipt", reason="witness_receipt_invalid"
        ) from None
    problem = check_receipt(receipt, request, state.config.hub_key)
    if problem is not None:
        raise WitnessUnavailableError(problem, reason="witness_receipt_invalid")
    return receipt


def _error_code(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def store_receipt(conn: db.Executor, receipt: Receipt) -> None:
    await conn.execute(
        """INSERT INTO record_witness_receipts (tenant, seq, after_seq, hash, signed_at, key_id,
               signature, segment_digest, witnessed_at, witness_key_id, witness_signature)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING""",
        receipt.tenant,
        receipt.seq,
        receipt.after_seq,
        receipt.hash,
        receipt.signed_at,
        receipt.key_id,
        receipt.signature,
        receipt.segment_digest,
        receipt.witnessed_at,
        receipt.witness_key_id,
        receipt.witness_signature,
    )


# -- the alarm state (one row per tenant, shared by the agency's workers) -------------------


async def note_success(conn: db.Executor, tenant: str) -> None:
    """The witness accepted: a refusal it made earlier is over (it accepts again)."""
    await conn.execute(
        """INSERT INTO record_witness_status (tenant, last_success_at) VALUES ($1, now())
           ON CONFLICT (tenant) DO UPDATE SET last_success_at = now(), refused_at = NULL,
               refused_code = NULL, refused_seq = NULL, updated_at = now()""",
        tenant,
    )


async def note_failure(
    conn: db.Executor, tenant: str, reason: str, *, refused_seq: int | None = None
) -> None:
    """A failed submission; ``refused_seq``: the witness refused that checkpoint (409)."""
    await conn.execute(
        """INSERT INTO record_witness_status (tenant, last_failure_at, last_failure_code,
               failures, refused_at, refused_code, refused_seq)
           VALUES ($1, now(), $2, 1, CASE WHEN $3::bigint IS NOT NULL THEN now() END,
                   CASE WHEN $3::bigint IS NOT NULL THEN $2 END, $3)
           ON CONFLICT (tenant) DO UPDATE SET last_failure_at = now(),
               last_failure_code = $2, failures = record_witness_status.failures + 1,
               refused_at = CASE WHEN $3::bigint IS NULL THEN record_witness_status.refused_at
                                 ELSE coalesce(record_witness_status.refused_at, now()) END,
               refused_code = CASE WHEN $3::bigint IS NULL
                                   THEN record_witness_status.refused_code ELSE $2 END,
               refused_seq = coalesce($3, record_witness_status.refused_seq),
               updated_at = now()""",
        tenant,
        reason,
        refused_seq,
    )


async def note_chain_broken(conn: db.Executor, tenant: str, seq: int | None) -> None:
    await conn.execute(
        """INSERT INTO record_witness_status (tenant, chain_broken_at, chain_broken_seq)
           VALUES ($1, now(), $2)
           ON CONFLICT (tenant) DO UPDATE SET
               chain_broken_at = coalesce(record_witness_status.chain_broken_at, now()),
               chain_broken_seq = $2, updated_at = now()""",
        tenant,
        seq,
    )


async def clear_chain_broken(conn: db.Executor, tenant: str) -> None:
    """A checkpoint was signed again: the segments since verify (after a restore)."""
    await conn.execute(
        "UPDATE record_witness_status SET chain_broken_at = NULL, chain_broken_seq = NULL, "
        "updated_at = now() WHERE tenant = $1 AND chain_broken_at IS NOT NULL",
        tenant,
    )


# -- a pass --------------------------------------------------------------------------------


async def witness_pending(state: GatewayState, *, limit: int = PASS_LIMIT) -> int:
    """Send the checkpoints without a receipt, in order; the number witnessed.

    Stops at the first failure, which is noted in the alarm state (and logged): the
    next pass starts again from the last receipt."""
    tenant = state.config.agency_code
    witnessed = 0
    async with state.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT (SELECT seq FROM record_witness_receipts WHERE tenant = $1
                       ORDER BY seq DESC LIMIT 1) AS last,
                      (SELECT last_failure_at > coalesce(last_success_at, '-infinity')
                              OR refused_at IS NOT NULL
                       FROM record_witness_status WHERE tenant = $1) AS failing""",
            tenant,
        )
        assert row is not None
        last = row["last"] or 0
        pending = await conn.fetch(
            "SELECT * FROM record_checkpoints WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            tenant,
            last,
            limit,
        )
        if not pending:
            if row["failing"]:
                await note_success(conn, tenant)
            return 0
        after = await conn.fetchval(
            "SELECT seq FROM record_checkpoints WHERE tenant = $1 AND seq < $2 "
            "ORDER BY seq DESC LIMIT 1",
            tenant,
            pending[0]["seq"],
        )
        after = after or 0
        try:
            for checkpoint in pending:
                request = await segment_request(conn, tenant, checkpoint, after)
                with request_id_bound(None):
                    receipt = await submit(state, request)
                await store_receipt(conn, receipt)
                log.info("record_checkpoint_witnessed", tenant=tenant, seq=receipt.seq)
                witnessed += 1
                after = checkpoint["seq"]
        except WitnessRefusedError as exc:
            log.error("record_witness_refused", tenant=tenant, seq=exc.seq, code=exc.reason)
            await note_failure(conn, tenant, exc.reason, refused_seq=exc.seq)
            forget(tenant)
            return witnessed
        except WitnessUnavailableError as exc:
            log.warning("record_witness_failed", tenant=tenant, code=exc.reason)
            await note_failure(conn, tenant, exc.reason)
            forget(tenant)
            return witnessed
        except ChainBrokenError as exc:
            log.error("record_chain_broken", tenant=tenant, seq=exc.seq)
            await note_chain_broken(conn, tenant, exc.seq)
            forget(tenant)
            return witnessed
        await note_success(conn, tenant)
    forget(tenant)
    return witnessed


# -- the state of the records: /ready, /metrics and the refusal of new exchanges -------------


@dataclass(frozen=True, slots=True)
class RecordsHealth:
    """What the database says of a tenant's records and their witness, at ``now``."""

    now: dt.datetime
    head_seq: int
    witnessed_seq: int
    oldest_unwitnessed_at: dt.datetime | None
    last_success_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    last_failure_code: str | None = None
    failures: int = 0
    refused_code: str | None = None
    refused_seq: int | None = None
    chain_broken_at: dt.datetime | None = None
    chain_broken_seq: int | None = None

    @property
    def unwitnessed_records(self) -> int:
        return max(self.head_seq - self.witnessed_seq, 0)

    @property
    def unwitnessed_seconds(self) -> float:
        if self.oldest_unwitnessed_at is None or not self.unwitnessed_records:
            return 0.0
        return max((self.now - self.oldest_unwitnessed_at).total_seconds(), 0.0)

    @property
    def witness_failing(self) -> bool:
        """The last submission failed (nothing accepted since)."""
        return self.last_failure_at is not None and (
            self.last_success_at is None or self.last_failure_at > self.last_success_at
        )

    def refusal(self, grace: dt.timedelta) -> str | None:
        """Why new exchanges are refused now (None: they are not)."""
        if self.chain_broken_at is not None:
            return f"the record chain is broken (seq {self.chain_broken_seq})"
        if self.refused_code is not None:
            return f"the witness refused checkpoint {self.refused_seq} ({self.refused_code})"
        if self.unwitnessed_seconds > grace.total_seconds():
            return (
                f"{self.unwitnessed_records} records have waited "
                f"{self.unwitnessed_seconds:.0f} s for the witness "
                f"(grace {grace.total_seconds():.0f} s)"
            )
        return None

    def check(self, grace: dt.timedelta) -> dict[str, Any]:
        """The ``records`` check of ``/ready``."""
        check: dict[str, Any] = {
            "ok": True,
            "head_seq": self.head_seq,
            "witnessed_seq": self.witnessed_seq,
            "unwitnessed_records": self.unwitnessed_records,
            "unwitnessed_seconds": round(self.unwitnessed_seconds, 3),
            "exchanging": True,
        }
        refusal = self.refusal(grace)
        if refusal is not None:
            check.update(ok=False, reason=refusal, exchanging=False)
        elif self.witness_failing:
            check.update(ok=False, reason=f"the witness is failing ({self.last_failure_code})")
        return check


_HEALTH_SQL: Final = """
    SELECT coalesce(h.seq, 0) AS head_seq, coalesce(w.seq, 0) AS witnessed_seq,
           (SELECT min(p.recorded_at) FROM provision_records p
            WHERE p.tenant = $1 AND p.seq = coalesce(w.seq, 0) + 1) AS oldest,
           s.last_success_at, s.last_failure_at, s.last_failure_code,
           coalesce(s.failures, 0) AS failures, s.refused_code, s.refused_seq,
           s.chain_broken_at, s.chain_broken_seq, now() AS now
    FROM (SELECT $1::text AS tenant) t
    LEFT JOIN record_chain_heads h ON h.tenant = t.tenant
    LEFT JOIN record_witness_status s ON s.tenant = t.tenant
    LEFT JOIN LATERAL (SELECT r.seq FROM record_witness_receipts r WHERE r.tenant = t.tenant
                       ORDER BY r.seq DESC LIMIT 1) w ON true"""


async def records_health(conn: db.Executor, tenant: str) -> RecordsHealth:
    row = await conn.fetchrow(_HEALTH_SQL, tenant)
    assert row is not None
    return RecordsHealth(
        now=row["now"],
        head_seq=row["head_seq"],
        witnessed_seq=row["witnessed_seq"],
        oldest_unwitnessed_at=row["oldest"],
        last_success_at=row["last_success_at"],
        last_failure_at=row["last_failure_at"],
        last_failure_code=row["last_failure_code"],
        failures=row["failures"],
        refused_code=row["refused_code"],
        refused_seq=row["refused_seq"],
        chain_broken_at=row["chain_broken_at"],
        chain_broken_seq=row["chain_broken_seq"],
    )


#: Each process's last look at the database, by tenant: (monotonic time, health).  Only a
#: cache of the shared state, at most ``_FRESH`` seconds old, so that a refusal costs no
#: round trip per request.
_SEEN: dict[str, tuple[float, RecordsHealth]] = {}
_FRESH: Final = 1.0


def forget(tenant: str) -> None:
    """The state just changed here: the next look reads the database."""
    _SEEN.pop(tenant, None)


async def current_health(state: GatewayState) -> RecordsHealth:
    tenant = state.config.agency_code
    seen = _SEEN.get(tenant)
    if seen is not None and time.monotonic() - seen[0] < _FRESH:
        return seen[1]
    health = await records_health(state.pool, tenant)
    _SEEN[tenant] = (time.monotonic(), health)
    return health


async def require_recording(state: GatewayState) -> None:
    """Refuse a new exchange (503 ``records_unwitnessed``) when the records cannot be kept
    verifiably now: the witness refused, the chain is broken, or the grace is over."""
    health = await current_health(state)
    refusal = health.refusal(state.config.records.witness_grace)
    if refusal is not None:
        log.warning("exchange_refused_unwitnessed", reason=refusal)
        raise RecordsUnwitnessedError(f"new exchanges are refused: {refusal}")


async def records_check(state: GatewayState) -> dict[str, Any]:
    """``/ready``'s ``records`` check (read fresh from the database)."""
    health = await records_health(state.pool, state.config.agency_code)
    return health.check(state.config.records.witness_grace)


_UNWITNESSED: Final = Gauge(
    "chukan_records_unwitnessed_records",
    "Records not yet covered by a checkpoint the witness countersigned.",
)
_UNWITNESSED_SECONDS: Final = Gauge(
    "chukan_records_unwitnessed_seconds",
    "Age of the oldest record not covered by a witnessed checkpoint.",
)
_BROKEN: Final = Gauge(
    "chukan_records_chain_broken",
    "1 when the checkpointer found the record chain broken.",
)
_REFUSED: Final = Gauge(
    "chukan_records_witness_refused",
    "1 when the witness refused a checkpoint (a rewritten chain or deleted checkpoints).",
)
_EXCHANGING: Final = Gauge(
    "chukan_records_exchanging",
    "1 while new exchanges are accepted; 0 while refused with records_unwitnessed.",
)


async def metrics_lines(state: GatewayState) -> list[str]:
    """The records' families of ``/metrics`` (the agency's, from the database)."""
    health = await records_health(state.pool, state.config.agency_code)
    failures = Counter(
        "chukan_records_witness_failures_total",
        "Checkpoint submissions the witness did not accept (all workers of the agency).",
        values={(): float(health.failures)},
    )
    refusal = health.refusal(state.config.records.witness_grace)
    lines: list[str] = []
    for gauge, value in (
        (_UNWITNESSED, float(health.unwitnessed_records)),
        (_UNWITNESSED_SECONDS, health.unwitnessed_seconds),
        (_BROKEN, float(health.chain_broken_at is not None)),
        (_REFUSED, float(health.refused_code is not None)),
        (_EXCHANGING, float(refusal is None)),
    ):
        lines.extend(gauge.render({(): value}))
    lines.extend(failures.render())
    return lines


# -- reading receipts back: from the witness, from a file -------------------------------------


async def fetch_receipts(
    session: aiohttp.ClientSession, hub_url: str, tenant: str, *, after: int = 0
) -> AsyncIterator[Receipt]:
    """Every receipt the witness keeps for ``tenant`` after ``after``, in ``seq`` order, a
    page at a time (the caller's TLS identity must be the tenant's)."""
    while True:
        async with session.get(
            hub_url.rstrip("/") + WITNESS_PATH,
            params={"after": str(after), "limit": str(PAGE), "tenant": tenant},
            headers={REQUEST_ID_HEADER: new_request_id()},
        ) as response:
            body = await response.read()
            if response.status != 200:
                code = _error_code(body) or f"http_{response.status}"
                raise WitnessUnavailableError(
                    f"the witness answered HTTP {response.status} {code}", reason=code
                )
        document = json.loads(body)
        for item in document["receipts"]:
            yield Receipt.from_json(item)
        if document.get("next_after") is None:
            return
        after = int(document["next_after"])


def read_receipts(path: Path) -> Iterator[Receipt]:
    """Receipts from a JSON-lines file (``chukan records receipts export``), one per line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield Receipt.from_json(json.loads(line))
            except ValueError:
                raise WitnessFormatError(f"line {number} of {path.name} is not JSON") from None


async def receipts_of(source: Iterator[Receipt]) -> AsyncIterator[Receipt]:
    for receipt in source:
        yield receipt
