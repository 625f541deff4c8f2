"""Disposal of 情報提供等記録 past their seven-year retention, a monthly partition at a time.

The records are kept seven years (the statutory period).  After that a whole month's
partition is dropped by ``chukan_dispose_record_partitions`` (migration 0120), which
first makes the signed checkpoint covering each tenant's last record in it the
tenant's *chain base*: ``records verify`` then walks the chain from that base, so
what remains stays verifiable.  The periodic deletion job runs it; so does
``chukan records dispose``.  Partitions are shared by every tenant of a database,
so any tenant's run disposes of every tenant's expired months, each with its base.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import structlog

from chukan.gateway.core import db

log = structlog.get_logger("chukan.records")

#: Years the records are kept (情報提供等記録の保存期間); the database refuses less.
RETENTION_YEARS: Final = 7


@dataclass(frozen=True, slots=True)
class DisposedPartition:
    """One month's partition: dropped, or kept because a tenant's records in it are
    covered by no checkpoint yet (``blocked_by``)."""

    partition: str
    disposed_through: dt.datetime
    dropped: bool
    #: tenant → (base seq, records disposed) for a dropped partition
    bases: dict[str, tuple[int, int]] = field(default_factory=dict)
    blocked_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Disposal:
    partitions: tuple[DisposedPartition, ...]

    @property
    def dropped(self) -> tuple[DisposedPartition, ...]:
        return tuple(p for p in self.partitions if p.dropped)

    @property
    def records(self) -> int:
        return sum(n for p in self.dropped for _, n in p.bases.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "partitions_dropped": len(self.dropped),
            "records_disposed": self.records,
            "partitions": [
                {
                    **asdict(p),
                    "disposed_through": p.disposed_through.isoformat(),
                    "bases": {t: {"base_seq": s, "records": n} for t, (s, n) in p.bases.items()},
                    "blocked_by": list(p.blocked_by),
                }
                for p in self.partitions
            ],
        }


async def dispose_expired_records(conn: db.Conn, *, years: int = RETENTION_YEARS) -> Disposal:
    """Drop every monthly partition older than ``years`` whose records are covered by a
    signed checkpoint; one transaction, serialised with partition creation."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT * FROM chukan_dispose_record_partitions(make_interval(years => $1))", years
        )
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = found.setdefault(
            row["partition_name"],
            {"through": row["disposed_through"], "bases": {}, "blocked": [], "dropped": False},
        )
        if row["status"] == "disposed":
            entry["bases"][row["tenant"]] = (row["base_seq"], row["records"])
        elif row["status"] == "no_checkpoint":
            entry["blocked"].append(row["tenant"])
        elif row["status"] == "dropped":
            entry["dropped"] = True
    disposal = Disposal(
        tuple(
            DisposedPartition(name, p["through"], p["dropped"], p["bases"], tuple(p["blocked"]))
            for name, p in found.items()
        )
    )
    for part in disposal.partitions:
        if part.dropped:
            log.info(
                "records_disposed",
                partition=part.partition,
                disposed_through=part.disposed_through.isoformat(),
                records=sum(n for _, n in part.bases.values()),
                tenants=len(part.bases),
            )
        else:
            log.warning(
                "records_disposal_blocked",
                partition=part.partition,
                tenants=list(part.blocked_by),
                reason="no signed checkpoint covers these tenants' records yet",
            )
    return disposal
