"""情報提供等記録: writing the provision records, and their monthly partitions.

How a record is written (DESIGN §3 flow 5, §8)
----------------------------------------------
Code calls :func:`write_record` (or runs :data:`INSERT_RECORD_SQL`, or an
``INSERT INTO provision_records (...) SELECT ...`` naming only content columns)
*inside the transaction of the event it records*, as its last statement before
the commit.  The database does the rest in the same statement: a trigger locks
the tenant's chain head, numbers the record (``seq``) and sets
``hash = sha256(prev_hash || canonical content)`` (migration 0003, and
:mod:`.chain`).  Records are events: a provision held for review and later
answered has two records.  There is no ``ON CONFLICT``: the table is
partitioned by month, so it has no unique key on ``(role, query_id)``.

Tamper evidence: :mod:`.chain` (hashes), :mod:`.checkpoints` (signed chain
heads), :mod:`.verify` (the walk that names what was altered).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.jobs import create_job, fail_job, finish_job, start_job
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.records.chain import CONTENT_COLUMNS

log = structlog.get_logger("chukan.records")

PARTITION_JOB: Final = "records.partitions"

INSERT_RECORD_SQL: Final = """INSERT INTO provision_records (role, query_id, permit_id,
    requester, provider, business_code, procedure_code, item_code, legal_basis, atena_id,
    requested_at, provided_at, outcome, reason_code, non_disclosure)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"""
#: Every column of a stored record, for reading whole records back.
ROW_COLUMNS: Final = (
    "id, tenant, seq, " + ", ".join(CONTENT_COLUMNS) + ", recorded_at, prev_hash, hash"
)

OUTCOMES: Final = ("provided", "refused", "held", "failed")


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


async def partition_keeper(state: GatewayState) -> None:
    """Background task: the partitions ahead, every ``partition_check``, as a job row."""
    settings = state.config.records
    while True:
        await asyncio.sleep(settings.partition_check.total_seconds())
        try:
            job_id = await create_job(state.pool, PARTITION_JOB, created_by="gateway")
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
