"""情報提供等記録: writing, chaining, checkpointing, verifying and disclosing records.

How a record is written (DESIGN §3 flow 5, §8)
----------------------------------------------
Code calls :func:`write_record` (or runs :data:`INSERT_RECORD_SQL`, or an
``INSERT INTO provision_records (...) SELECT ...`` naming only content columns)
*inside the transaction of the event it records*, as its last statement before
the commit.  The database does the rest in the same statement: a trigger locks
the tenant's chain head, numbers the record (``seq``) and sets
``hash = sha256(prev_hash || canonical content)`` (migration 0003).  Records are
events: a provision held for review and later answered has two records.  There
is no ``ON CONFLICT``: the table is partitioned by month, so it has no unique
key on ``(role, query_id)``.

Tamper evidence
---------------
* every record's hash covers its canonical content (:func:`canonical_record`,
  the same bytes as ``chukan_record_canonical`` in SQL) and the previous hash;
* a checkpointer signs ``(seq, hash)`` of the chain head with the agency's
  Ed25519 key every N records or T seconds (:class:`~.settings.RecordsConfig`),
  after checking the segment it vouches for;
* :func:`verify_chain` walks the chain and names every altered, deleted or
  inserted record by ``seq`` and ``id``, and every checkpoint the chain no
  longer matches (a chain rewritten wholesale by a database superuser).

What a superuser can still do undetected: append well-formed records (or cut
records) *after the last signed checkpoint* and move the chain head along.
The checkpointer bounds that window to T seconds; it verifies before it signs.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TypeAlias

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import ConflictError, ValidationError
from chukan.gateway.core.keyring import own_verification_keys
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import ATENA_PATTERN, GATEWAY_STATE, GatewayState, utcnow
from chukan.keys import PublicSigningKey, SigningKeyPair, public_signing_key

log = structlog.get_logger("chukan.records")

CANONICAL_VERSION: Final = "chukan-record-v1"
CHECKPOINT_VERSION: Final = "chukan-checkpoint-v1"

#: Content columns, in canonical order after tenant and seq.
CONTENT_COLUMNS: Final = (
    "role",
    "query_id",
    "permit_id",
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "legal_basis",
    "atena_id",
    "requested_at",
    "provided_at",
    "outcome",
    "reason_code",
    "non_disclosure",
)
_TIMESTAMPS: Final = frozenset({"requested_at", "provided_at", "recorded_at"})

INSERT_RECORD_SQL: Final = """INSERT INTO provision_records (role, query_id, permit_id,
    requester, provider, business_code, procedure_code, item_code, legal_basis, atena_id,
    requested_at, provided_at, outcome, reason_code, non_disclosure)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"""
_ROW_COLUMNS: Final = (
    "id, tenant, seq, " + ", ".join(CONTENT_COLUMNS) + ", recorded_at, prev_hash, hash"
)

OUTCOMES: Final = ("provided", "refused", "held", "failed")

#: A record row: from asyncpg, or a plain mapping (tests, exports).
Row: TypeAlias = Mapping[str, Any] | asyncpg.Record


# -- canonical form and hashes (pure) --------------------------------------------------------


def _canon(name: str, value: str | None) -> str:
    if value is None:
        return f"{name}:-;"
    return f"{name}:{len(value.encode('utf-8'))}:{value};"


def canonical_timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("record timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in _TIMESTAMPS:
        return canonical_timestamp(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"record field {name} has an unexpected type {type(value).__name__}")


def canonical_record(row: Row) -> bytes:
    """The bytes a record's hash covers: every field but id and the hashes, in fixed order."""
    names = ("tenant", "seq", *CONTENT_COLUMNS, "recorded_at")
    text = CANONICAL_VERSION + ";" + "".join(_canon(n, _text(n, row[n])) for n in names)
    return text.encode("utf-8")


def genesis_hash(tenant: str) -> bytes:
    """The prev_hash of a tenant's first record (``chukan_chain_genesis`` in SQL)."""
    return hashlib.sha256(f"{CANONICAL_VERSION}|genesis|{tenant}".encode()).digest()


def chain_hash(prev_hash: bytes, row: Row) -> bytes:
    return hashlib.sha256(prev_hash + canonical_record(row)).digest()


def checkpoint_message(tenant: str, seq: int, head_hash: bytes, signed_at: dt.datetime) -> bytes:
    """What a checkpoint signature covers."""
    return (
        f"{CHECKPOINT_VERSION}|{tenant}|{seq}|{head_hash.hex()}|{canonical_timestamp(signed_at)}"
    ).encode()


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordEntry:
    """The content of one record; the database adds tenant, seq, recorded_at and hashes."""

    role: str
    query_id: str
    permit_id: str | None
    requester: str
    provider: str
    business_code: str
    procedure_code: str
    item_code: str
    legal_basis: int | None
    atena_id: str | None
    requested_at: dt.datetime
    provided_at: dt.datetime | None
    outcome: str
    reason_code: str | None
    non_disclosure: bool = False

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in CONTENT_COLUMNS)


async def insert_record(conn: db.Executor, entry: RecordEntry) -> None:
    """One INSERT, inside the caller's transaction; the trigger chains it (not counted)."""
    if entry.role not in ("requester", "provider") or entry.outcome not in OUTCOMES:
        raise ValueError(f"bad record role/outcome {entry.role}/{entry.outcome}")
    await conn.execute(INSERT_RECORD_SQL, *entry.values())


async def write_record(conn: db.Executor, agency: str, entry: RecordEntry) -> None:
    """:func:`insert_record`, counted in the metrics at once."""
    await insert_record(conn, entry)
    count_record(agency, entry.role, entry.outcome)


def count_record(agency: str, role: str, outcome: str) -> None:
    """Metrics of records written by SQL of the caller's own (e.g. INSERT ... SELECT)."""
    metrics = metrics_for(agency)
    (metrics.queries if role == "requester" else metrics.provisions).inc(outcome)


# -- partitions ------------------------------------------------------------------------------


async def ensure_partitions(conn: db.Executor, start: dt.date, months: int) -> list[str]:
    """Create the monthly partitions from ``start``'s month on; returns those created."""
    rows = await conn.fetch("SELECT chukan_ensure_record_partitions($1, $2) AS p", start, months)
    created = [r["p"] for r in rows]
    if created:
        log.info("record_partitions_created", partitions=created)
    return created


# -- checkpoints -----------------------------------------------------------------------------


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


class ChainBrokenError(RuntimeError):
    """The segment a checkpoint would vouch for does not verify: nothing is signed."""


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
            f"SELECT {_ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
            "WHERE tenant = $1 AND seq > $2 ORDER BY seq, id",
            tenant,
            last_seq,
        )
        if not force and len(rows) < every:
            oldest = rows[0]["recorded_at"] if rows else None
            if oldest is None or utcnow() - oldest < interval:
                return None
        expected = last_seq + 1
        for row in rows:
            if (
                row["seq"] != expected
                or row["prev_hash"] != prev
                or chain_hash(prev, row) != (row["hash"])
            ):
                log.error("record_chain_broken", tenant=tenant, seq=row["seq"], id=row["id"])
                raise ChainBrokenError(f"record chain does not verify at seq {row['seq']}")
            prev, expected = row["hash"], expected + 1
        if expected - 1 != head["seq"] or prev != head["hash"]:
            log.error("record_chain_broken", tenant=tenant, seq=head["seq"], id=None)
            raise ChainBrokenError("record chain head does not match its records")
        signed_at = utcnow()
        signature = signer.sign(checkpoint_message(tenant, head["seq"], prev, signed_at))
        inserted = await conn.fetchval(
            """INSERT INTO record_checkpoints (tenant, seq, hash, signed_at, key_id, public_key,
                                               signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1""",
            tenant,
            head["seq"],
            prev,
            signed_at,
            signer.key_id,
            signer.public.raw,
            signature,
        )
    if not inserted:
        return None  # another process of this tenant signed the same head
    log.info("record_checkpoint_signed", tenant=tenant, seq=head["seq"], key_id=signer.key_id)
    return Checkpoint(tenant, head["seq"], prev, signed_at, signer.key_id, signature)


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: ``kind`` is altered, deleted, inserted, broken_link, head_missing,
    head_mismatch, checkpoint_signature_invalid, checkpoint_key_unknown,
    checkpoint_mismatch or checkpoint_unmatched."""

    kind: str
    seq: int | None
    id: int | None = None
    detail: str = ""


@dataclass
class VerifyReport:
    tenant: str
    records: int = 0
    head_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    keys_trusted: bool = True
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "keys_trusted": self.keys_trusted,
            "issues": [asdict(i) for i in self.issues],
        }


@dataclass
class _Walk:
    tenant: str
    report: VerifyReport
    head_seq: int | None
    prev_hash: bytes | None
    expected: int = 1
    last_seq: int = 0
    previous_reported: bool = False
    hashes: dict[int, bytes] = field(default_factory=dict)

    def add(self, kind: str, seq: int | None, row_id: int | None = None, detail: str = "") -> None:
        self.report.issues.append(Issue(kind, seq, row_id, detail))

    def group(self, seq: int, rows: Sequence[Row]) -> None:
        self.report.records += len(rows)
        if seq < 1 or (self.head_seq is not None and seq > self.head_seq):
            for row in rows:
                self.add("inserted", seq, row["id"], "sequence number beyond the chain head")
            return
        if seq > self.expected:
            for missing in range(self.expected, seq):
                self.add("deleted", missing, None, "sequence number missing from the chain")
            self.previous_reported = True
        checked = [
            (
                row,
                chain_hash(row["prev_hash"], row) == row["hash"],
                self.prev_hash is None or row["prev_hash"] == self.prev_hash,
            )
            for row in rows
        ]
        genuine = next(
            (c for c in checked if c[1] and c[2]),
            next((c for c in checked if c[2]), next((c for c in checked if c[1]), checked[0])),
        )
        row, valid, links = genuine
        if not valid:
            self.add("altered", seq, row["id"], "content does not match the record's hash")
        elif not links and not self.previous_reported:
            self.add("broken_link", seq, row["id"], "previous hash does not match the chain")
        for other, _, _ in checked:
            if other is not row:
                self.add("inserted", seq, other["id"], "duplicate sequence number")
        self.previous_reported = not valid
        self.prev_hash = row["hash"]
        self.hashes[seq] = row["hash"]
        self.last_seq, self.expected = seq, seq + 1


async def verify_chain(
    conn: db.Conn,
    tenant: str,
    trusted_keys: Mapping[str, PublicSigningKey] | None,
) -> VerifyReport:
    """Walk a tenant's chain and its checkpoints in one snapshot.

    ``trusted_keys`` are the agency's public signing keys from outside the
    database (key files, the hub registry); ``None`` falls back on the keys
    stored beside the checkpoints, and the report says the keys are untrusted.
    """
    report = VerifyReport(tenant, keys_trusted=trusted_keys is not None)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow(
            "SELECT seq, hash FROM record_chain_heads WHERE tenant = $1", tenant
        )
        checkpoints = await conn.fetch(
            "SELECT * FROM record_checkpoints WHERE tenant = $1 ORDER BY seq", tenant
        )
        report.head_seq = head["seq"] if head else None
        walk = _Walk(tenant, report, report.head_seq, genesis_hash(tenant))
        group: list[Row] = []
        async for row in conn.cursor(
            f"SELECT {_ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
            "WHERE tenant = $1 ORDER BY seq, id",
            tenant,
            prefetch=1000,
        ):
            if group and row["seq"] != group[0]["seq"]:
                walk.group(group[0]["seq"], group)
                group = []
            group.append(row)
        if group:
            walk.group(group[0]["seq"], group)
    if head is None:
        if report.records:
            walk.add("head_missing", None, None, "records exist but the chain head is gone")
    else:
        for missing in range(walk.last_seq + 1, head["seq"] + 1):
            walk.add("deleted", missing, None, "sequence number missing from the chain")
        if walk.last_seq == head["seq"] and walk.prev_hash != head["hash"]:
            walk.add("head_mismatch", head["seq"], None, "chain head hash differs")
    previous_cp = 0
    for cp in checkpoints:
        report.checkpoints += 1
        report.last_checkpoint_seq = cp["seq"]
        keys = trusted_keys
        if keys is None:
            keys = {cp["key_id"]: public_signing_key(cp["key_id"], cp["public_key"])}
        key = keys.get(cp["key_id"])
        message = checkpoint_message(tenant, cp["seq"], cp["hash"], cp["signed_at"])
        if key is None:
            walk.add("checkpoint_key_unknown", cp["seq"], None, f"key {cp['key_id']}")
        else:
            try:
                key.verify(message, cp["signature"])
            except Exception:
                walk.add("checkpoint_signature_invalid", cp["seq"], None, "bad signature")
        actual = walk.hashes.get(cp["seq"])
        if actual is None:
            walk.add("checkpoint_unmatched", cp["seq"], None, "no record at this sequence")
        elif actual != cp["hash"]:
            walk.add(
                "checkpoint_mismatch",
                cp["seq"],
                None,
                f"records {previous_cp + 1}..{cp['seq']} were rewritten after they were signed",
            )
        previous_cp = cp["seq"]
    log.info(
        "record_chain_verified",
        tenant=tenant,
        records=report.records,
        issues=len(report.issues),
    )
    return report


# -- disclosure ------------------------------------------------------------------------------

DISCLOSURE_FIELDS: Final = (
    "seq",
    "id",
    "role",
    "counterpart",
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "legal_basis",
    "requested_at",
    "provided_at",
    "outcome",
    "reason_code",
    "permit_id",
    "query_id",
    "non_disclosure",
    "recorded_at",
    "hash",
    "hash_valid",
)


async def disclose(
    conn: db.Executor, tenant: str, atena_id: str, *, include_non_disclosed: bool = True
) -> list[dict[str, Any]]:
    """Every query and provision about one person, oldest first, each with its hash and
    whether its content still matches it (the chain itself: :func:`verify_chain`)."""
    rows = await conn.fetch(
        f"SELECT {_ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
        "WHERE tenant = $1 AND atena_id = $2 AND ($3 OR NOT non_disclosure) "
        "ORDER BY requested_at, seq",
        tenant,
        atena_id,
        include_non_disclosed,
    )
    result: list[dict[str, Any]] = []
    for row in rows:
        item = {name: row[name] for name in DISCLOSURE_FIELDS if name in row}
        item["counterpart"] = row["provider"] if row["role"] == "requester" else row["requester"]
        item["hash"] = row["hash"].hex()
        item["hash_valid"] = chain_hash(row["prev_hash"], row) == row["hash"]
        for key in ("requested_at", "provided_at", "recorded_at"):
            value = item.get(key)
            item[key] = value.isoformat() if value is not None else None
        result.append({name: item.get(name) for name in DISCLOSURE_FIELDS})
    return result


async def latest_checkpoint(conn: db.Executor, tenant: str) -> Checkpoint | None:
    row = await conn.fetchrow(
        "SELECT * FROM record_checkpoints WHERE tenant = $1 ORDER BY seq DESC LIMIT 1", tenant
    )
    if row is None:
        return None
    return Checkpoint(
        tenant, row["seq"], row["hash"], row["signed_at"], row["key_id"], row["signature"]
    )


# -- background work in the gateway ----------------------------------------------------------


async def _checkpointer(state: GatewayState) -> None:
    settings = state.config.records
    while True:
        await asyncio.sleep(settings.checkpoint_poll)
        try:
            async with state.pool.acquire() as conn:
                await make_checkpoint(
                    conn,
                    state.config.agency_code,
                    state.keys.signing,
                    every=settings.checkpoint_every,
                    interval=settings.checkpoint_interval,
                )
        except ChainBrokenError:
            pass  # logged; an operator must look (chukan records verify)
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("record_checkpoint_failed")


async def _partition_keeper(state: GatewayState) -> None:
    from chukan.gateway.core.jobs import create_job, fail_job, finish_job, start_job

    settings = state.config.records
    while True:
        await asyncio.sleep(settings.partition_check.total_seconds())
        try:
            job_id = await create_job(state.pool, "records.partitions", created_by="gateway")
            await start_job(state.pool, job_id)
            try:
                created = await ensure_partitions(
                    state.pool, utcnow().date(), settings.partitions_ahead + 1
                )
            except asyncpg.PostgresError as exc:
                if db.is_database_error(exc):
                    raise
                await fail_job(state.pool, job_id, type(exc).__name__)
                continue
            await finish_job(state.pool, job_id, {"created": len(created)})
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)  # logged once per outage, not per pass
            else:
                log.exception("record_partitions_failed")


async def records_context(app: web.Application) -> AsyncIterator[None]:
    """Partitions ahead at start-up; checkpointer and daily partition job while running."""
    state = app[GATEWAY_STATE]
    await ensure_partitions(state.pool, utcnow().date(), state.config.records.partitions_ahead + 1)
    tasks = [
        asyncio.create_task(_checkpointer(state), name="records-checkpointer"),
        asyncio.create_task(_partition_keeper(state), name="records-partitions"),
    ]
    yield
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    # Sign what is left, so that a clean stop leaves no unsigned tail.
    with contextlib.suppress(ChainBrokenError, OSError, asyncpg.PostgresError):
        async with state.pool.acquire() as conn:
            await make_checkpoint(
                conn,
                state.config.agency_code,
                state.keys.signing,
                every=1,
                interval=dt.timedelta(0),
                force=True,
            )


# -- staff API -------------------------------------------------------------------------------


def disclosure_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DISCLOSURE_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in DISCLOSURE_FIELDS})
    return out.getvalue()


async def get_disclosure(request: web.Request) -> web.Response:
    """Every query and provision about one person (auditor); ``?format=json|csv``;
    ``?audience=person`` leaves out records flagged non-disclosure (不開示)."""
    from chukan.gateway.staff.accounts import ROLE_AUDITOR, audit_staff, require_staff

    await require_staff(request, ROLE_AUDITOR)
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
        return web.Response(
            body=disclosure_csv(rows).encode("utf-8"),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="disclosure.csv"'},
        )
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
    from chukan.gateway.staff.accounts import ROLE_AUDITOR, audit_staff, require_staff

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
    """Sign a checkpoint now (auditor, admin), e.g. before an export."""
    from chukan.gateway.staff.accounts import ROLE_ADMIN, ROLE_AUDITOR, audit_staff, require_staff

    await require_staff(request, ROLE_AUDITOR, ROLE_ADMIN)
    state = request.config_dict[GATEWAY_STATE]
    async with state.pool.acquire() as conn:
        try:
            checkpoint = await make_checkpoint(
                conn,
                state.config.agency_code,
                state.keys.signing,
                every=1,
                interval=dt.timedelta(0),
                force=True,
            )
        except ChainBrokenError as exc:
            raise ChainBrokenApiError(str(exc)) from None
        if checkpoint is None:
            checkpoint = await latest_checkpoint(conn, state.config.agency_code)
    await audit_staff(
        request, "records.checkpoint", detail={"seq": checkpoint.seq if checkpoint else None}
    )
    return web.json_response({"checkpoint": checkpoint.to_json() if checkpoint else None})


class ChainBrokenApiError(ConflictError):
    code = "record_chain_broken"


def setup_records(app: web.Application) -> None:
    """Background work of the records, and their staff API."""
    app.cleanup_ctx.append(records_context)
    app.router.add_get("/staff/v1/disclosures/{atena_id}", get_disclosure)
    app.router.add_get("/staff/v1/records/verify", get_verify)
    app.router.add_post("/staff/v1/records/checkpoints", post_checkpoint)
