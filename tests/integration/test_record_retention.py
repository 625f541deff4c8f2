"""Seven-year retention of the 情報提供等記録: months past it are disposed of, the chain stays
verifiable from each tenant's base, and a premature drop is still caught.

Time really passes here: the records are written while the PostgreSQL server's clock
(only the server's, through libfaketime) reads eight years ago, then the clock is put
back to today and the disposal runs.  Nothing else is faked: the records go through the
chaining trigger, the checkpoints are signed by the product's checkpointer code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.admin import tenant_connection
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core import db
from chukan.gateway.records.checkpoints import checkpoint_now
from chukan.gateway.records.retention import dispose_expired_records
from chukan.gateway.records.verify import verify_chain
from chukan.keys import SigningKeyPair, generate_signing_key

pytestmark = pytest.mark.integration

FAKETIME: Path | None = next(
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/faketime/libfaketime.so.1"),
        )
        if p.exists()
    ),
    None,
)

INSERT = """INSERT INTO provision_records (tenant, role, query_id, permit_id, requester,
        provider, business_code, procedure_code, item_code, legal_basis, atena_id,
        requested_at, provided_at, outcome, reason_code, non_disclosure)
    VALUES ($1, 'provider', $2, 'permit-1', '122041', $1, 'JM00000000000132',
            'TM00000000000001', 'TM00000000000001', 132, '100000000000001', now(), now(),
            'provided', NULL, false)"""


class ServerClock:
    """The offset of the test server's clock (libfaketime reads the file at every call)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, offset: str) -> None:
        self.path.write_text(offset + "\n", encoding="ascii")


@pytest.fixture
def server_clock(tmp_path: Path) -> ServerClock:
    if os.environ.get("CHUKAN_DATABASE_URL"):
        pytest.skip("the server's clock can be moved only on an embedded PostgreSQL")
    if FAKETIME is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return ServerClock(tmp_path / "clock-offset")


@pytest.fixture
async def old_server(tmp_path: Path, server_clock: ServerClock) -> AsyncIterator[str]:
    """A PostgreSQL whose clock starts eight years ago, with the gateway's schema."""
    assert FAKETIME is not None
    server_clock.set("-8y")
    preload = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(server_clock.path),
        "FAKETIME_NO_CACHE": "1",
    }
    saved = {k: os.environ.get(k) for k in preload}
    os.environ.update(preload)  # inherited by the server's processes only
    embedded = db.EmbeddedPostgres(tmp_path / "pg")
    try:
        url = embedded.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        owner_url = await db.ensure_database(url, "chukan_retention")
        await db.migrate_url(owner_url, "chukan.gateway")
        yield owner_url
    finally:
        embedded.stop()


async def _records(owner: asyncpg.Connection, tenant: str, count: int) -> None:
    for _ in range(count):
        await owner.execute(INSERT, tenant, secrets.token_hex(6))


async def _tenant(url: str, prefix: str) -> tuple[str, SigningKeyPair]:
    code = prefix + "".join(secrets.choice("0123456789") for _ in range(4))
    await db.provision_tenant(url, code, "保存期間試験")
    return code, generate_signing_key(code)


async def _checkpoint(url: str, tenant: str, signer: SigningKeyPair) -> int:
    conn = await tenant_connection(url, tenant)
    try:
        made = await checkpoint_now(conn, tenant, signer)
        assert made is not None
        return made.seq
    finally:
        await conn.close()


async def _cli(url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="chukan")
    admin_cli.add_commands(
        parser.add_subparsers(dest="command", required=True), database_default=GATEWAY_DATABASE
    )
    out = io.StringIO()
    status = await admin_cli.run(parser.parse_args(argv), url, out, io.StringIO())
    return status, out.getvalue()


async def _verify(url: str, tenant: str, signer: SigningKeyPair) -> dict[str, Any]:
    conn = await tenant_connection(url, tenant)
    try:
        report = await verify_chain(conn, tenant, {signer.key_id: signer.public})
        return report.to_json()
    finally:
        await conn.close()


async def test_months_past_retention_are_disposed_and_the_rest_still_verifies(
    old_server: str, server_clock: ServerClock
) -> None:
    owner = await asyncpg.connect(old_server)
    try:
        assert (await owner.fetchval("SELECT now()")).year <= dt.datetime.now(dt.UTC).year - 7
        covered, covered_key = await _tenant(old_server, "41")
        uncovered, uncovered_key = await _tenant(old_server, "42")
        await _records(owner, covered, 5)
        await _records(owner, uncovered, 3)
        old_base = await _checkpoint(old_server, covered, covered_key)
        # Eight years on: this month's records, chained on from the old ones.
        server_clock.set("+0")
        await owner.execute("SELECT chukan_ensure_record_partitions(now()::date, 2)")
        await _records(owner, covered, 4)
        await _checkpoint(old_server, covered, covered_key)
        await _records(owner, covered, 2)  # the tail, not yet checkpointed

        # The uncovered tenant's old records have no checkpoint: nothing is disposed of.
        blocked = await dispose_expired_records(owner)
        assert blocked.records == 0  # at most an empty month went
        assert [p.blocked_by for p in blocked.partitions if not p.dropped] == [(uncovered,)]
        await _checkpoint(old_server, uncovered, uncovered_key)

        # The operator's command (the deletion job runs the same function).
        status, output = await _cli(old_server, "records", "dispose", "--tenant", covered)
        assert status == 0, output
        disposal = json.loads(output)
        dropped = [p for p in disposal["partitions"] if p["dropped"]]
        months = [p["partition"] for p in dropped]
        assert months and all(p.startswith("provision_records_p201") for p in months)
        bases = {t: (b["base_seq"], b["records"]) for p in dropped for t, b in p["bases"].items()}
        assert bases == {covered: (old_base, 5), uncovered: (3, 3)}
        assert disposal["records_disposed"] == 8
        left = {
            r["relname"]
            for r in await owner.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'provision_records'::regclass"
            )
        }
        assert not left & set(months)
        # Run again: nothing more is due.
        assert (await dispose_expired_records(owner)).partitions == ()

        report = await _verify(old_server, covered, covered_key)
        assert report["ok"], report["issues"]
        assert report["records"] == 6 and report["head_seq"] == 11
        assert report["base_seq"] == old_base
        report = await _verify(old_server, uncovered, uncovered_key)
        assert report["ok"] and report["records"] == 0 and report["base_seq"] == 3
    finally:
        await owner.close()


async def test_the_database_refuses_a_retention_shorter_than_seven_years(
    old_server: str,
) -> None:
    owner = await asyncpg.connect(old_server)
    try:
        with pytest.raises(asyncpg.InvalidParameterValueError, match="seven years"):
            await dispose_expired_records(owner, years=6)
    finally:
        await owner.close()


async def test_a_recent_month_dropped_with_a_forged_base_is_caught(
    old_server: str, server_clock: ServerClock
) -> None:
    server_clock.set("+0")
    owner = await asyncpg.connect(old_server)
    try:
        await owner.execute("SELECT chukan_ensure_record_partitions(now()::date, 2)")
        tenant, key = await _tenant(old_server, "43")
        await _records(owner, tenant, 4)
        seq = await _checkpoint(old_server, tenant, key)
        await _records(owner, tenant, 2)
        part = await owner.fetchval(
            "SELECT tableoid::regclass::text FROM provision_records WHERE tenant = $1 LIMIT 1",
            tenant,
        )
        # A superuser drops this month and writes a base as the disposal would.
        row = await owner.fetchrow(
            "SELECT hash, signed_at FROM record_checkpoints WHERE tenant = $1 AND seq = $2",
            tenant,
            seq,
        )
        assert row is not None
        await owner.execute(f"ALTER TABLE provision_records DETACH PARTITION {part}")
        await owner.execute(f"DROP TABLE {part}")
        await owner.execute(
            "INSERT INTO record_chain_bases (tenant, seq, hash, checkpoint_signed_at, "
            "partition_name, disposed_through, records) "
            "VALUES ($1, $2, $3, $4, $5, date_trunc('month', now()) + interval '1 month', 4)",
            tenant,
            seq,
            row["hash"],
            row["signed_at"],
            part,
        )
        report = await _verify(old_server, tenant, key)
        assert not report["ok"]
        kinds = {(i["kind"], i["seq"]) for i in report["issues"]}
        assert ("base_premature", seq) in kinds
        assert ("deleted", seq + 1) in kinds
    finally:
        await owner.close()
