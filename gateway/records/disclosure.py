"""Disclosure (開示): every query and provision about one person, for an auditor or the
person, each record with its hash and whether its content still matches it."""

from __future__ import annotations

from typing import Any, Final

from chukan.gateway.core import db
from chukan.gateway.records.chain import chain_hash
from chukan.gateway.records.store import ROW_COLUMNS
from chukan.gateway.staff.api import to_csv

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
    whether its content still matches it (the chain itself: :mod:`.verify`)."""
    rows = await conn.fetch(
        f"SELECT {ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
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


def disclosure_csv(rows: list[dict[str, Any]]) -> str:
    return to_csv(rows, DISCLOSURE_FIELDS)
