"""Verifying a tenant's record chain and its checkpoints, from one database snapshot.

The walk itself is pure (:class:`~chukan.gateway.records.chain.ChainWalk`);
this module reads the rows it is fed.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from chukan.gateway.core import db
from chukan.gateway.records.chain import ChainWalk, Row, VerifyReport, genesis_hash
from chukan.gateway.records.store import ROW_COLUMNS
from chukan.keys import PublicSigningKey

log = structlog.get_logger("chukan.records")


async def verify_chain(
    conn: db.Conn,
    tenant: str,
    trusted_keys: Mapping[str, PublicSigningKey] | None,
) -> VerifyReport:
    """Walk a tenant's chain and its checkpoints in one snapshot, naming every altered,
    deleted or inserted record by ``seq`` and ``id``, and every checkpoint the chain no
    longer matches (a chain rewritten wholesale by a database superuser).

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
        walk = ChainWalk(tenant, report, report.head_seq, genesis_hash(tenant))
        group: list[Row] = []
        async for row in conn.cursor(
            f"SELECT {ROW_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed column list
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
    walk.close(head)
    for cp in checkpoints:
        walk.checkpoint(cp, trusted_keys)
    log.info(
        "record_chain_verified",
        tenant=tenant,
        records=report.records,
        issues=len(report.issues),
    )
    return report
