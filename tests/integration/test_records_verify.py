"""``records verify`` streaming: records of every shape as PostgreSQL stores and prints them,
ranges of ``seq`` with checkpoints on either side of a boundary, and progress output."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import secrets
from typing import Any

import asyncpg
import pytest
from records_support import admin_url, fresh_tenant

from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.records import verify
from chukan.gateway.records.checkpoints import make_checkpoint
from chukan.gateway.records.verify import verify_chain
from chukan.keys import b64e, generate_signing_key

pytestmark = pytest.mark.integration

INSERT = """INSERT INTO provision_records (tenant, role, query_id, permit_id, requester,
        provider, business_code, procedure_code, item_code, legal_basis, atena_id,
        requested_at, provided_at, outcome, reason_code, non_disclosure)
    VALUES ($1, 'provider', $2, $3, '122041', $1, 'JM00000000000132', 'JT00013200000001',
            'TM00000000000001', $4, $5, $6, $7, $8, $9, $10)"""


async def add(owner: asyncpg.Connection, tenant: str, query_id: str, **values: Any) -> None:
    """One record through the chaining trigger (the database's canonical form and hash)."""
    at = dt.datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)
    row = {
        "permit_id": "permit-1",
        "legal_basis": 132,
        "atena_id": "100000000000001",
        "requested_at": at,
        "provided_at": at,
        "outcome": "provided",
        "reason_code": None,
        "non_disclosure": False,
    } | values
    await owner.execute(
        INSERT,
        tenant,
        query_id,
        row["permit_id"],
        row["legal_basis"],
        row["atena_id"],
        row["requested_at"],
        row["provided_at"],
        row["outcome"],
        row["reason_code"],
        row["non_disclosure"],
    )


async def run_cli(url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="chukan")
    admin_cli.add_commands(
        parser.add_subparsers(dest="command", required=True), database_default=GATEWAY_DATABASE
    )
    out = io.StringIO()
    status = await admin_cli.run(parser.parse_args(argv), url, out, io.StringIO())
    return status, out.getvalue()


async def test_records_of_every_shape_verify_as_the_database_hashed_them(chiba: Any) -> None:
    tenant = await fresh_tenant(chiba, "97", "検証試験")
    owner = await asyncpg.connect(admin_url(chiba))
    try:
        whole_second = dt.datetime(2026, 4, 1, 0, 0, 0, tzinfo=dt.UTC)
        shapes: list[tuple[str, dict[str, Any]]] = [
            ("plain", {}),
            ("nulls", {"permit_id": None, "legal_basis": None, "atena_id": None}),
            ("not provided", {"provided_at": None, "outcome": "refused", "reason_code": "x"}),
            ("whole seconds", {"requested_at": whole_second, "provided_at": whole_second}),
            ("tenths", {"requested_at": whole_second + dt.timedelta(microseconds=100000)}),
            ("empty texts", {"permit_id": "", "reason_code": ""}),
            ("取得不可", {"reason_code": "該当なし・取得不可"}),
            ("back\\slash", {"permit_id": "\\N"}),
            ("tab\tnew\nline\rreturn", {"reason_code": "\\\\x41"}),
            ("hidden", {"non_disclosure": True}),
            (
                "jst",
                {
                    "requested_at": dt.datetime(
                        2026, 4, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9))
                    )
                },
            ),
        ]
        for query_id, values in shapes:
            await add(owner, tenant, query_id, **values)
        conn = await admin_cli.tenant_connection(admin_url(chiba), tenant)
        try:
            report = await verify_chain(conn, tenant, None)
        finally:
            await conn.close()
        assert report.ok, report.issues
        assert report.records == report.head_seq == len(shapes)
        # Each shape altered in place is named: the reader never mistakes one for another.
        await owner.execute("SET session_replication_role = replica")
        await owner.execute(
            "UPDATE provision_records SET permit_id = NULL WHERE tenant = $1 AND permit_id = ''",
            tenant,
        )
        await owner.execute(
            "UPDATE provision_records SET reason_code = '該当なし・取得可' "
            "WHERE tenant = $1 AND reason_code = '該当なし・取得不可'",
            tenant,
        )
        await owner.execute(
            "UPDATE provision_records SET permit_id = NULL WHERE tenant = $1 AND permit_id = '\\N'",
            tenant,
        )
        await owner.execute("SET session_replication_role = origin")
        conn = await admin_cli.tenant_connection(admin_url(chiba), tenant)
        try:
            report = await verify_chain(conn, tenant, None)
        finally:
            await conn.close()
        assert sorted((i.kind, i.seq) for i in report.issues) == [
            ("altered", 6),
            ("altered", 7),
            ("altered", 8),
        ]
    finally:
        await owner.close()


async def test_ranges_and_checkpoints_across_their_boundaries(
    chiba: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(verify, "RANGE", 3)
    monkeypatch.setattr(verify, "PROGRESS_EVERY", 4)
    tenant = await fresh_tenant(chiba, "97", "検証試験")
    signer = generate_signing_key(tenant)
    owner = await asyncpg.connect(admin_url(chiba))
    conn = await admin_cli.tenant_connection(admin_url(chiba), tenant)
    try:
        for count in (3, 4, 6, 10):  # checkpoints at a range's end, start, end, and the head
            while await conn.fetchval("SELECT count(*) FROM provision_records") < count:
                await add(owner, tenant, secrets.token_hex(4))
            await make_checkpoint(
                conn, tenant, signer, every=1, interval=dt.timedelta(0), force=True
            )
        key = f"{signer.key_id}={b64e(signer.public.raw)}"
        status, output = await run_cli(
            admin_url(chiba), "records", "verify", "--tenant", tenant, "--public-key", key
        )
        assert status == 0, output
        assert json.loads(output)["checkpoints"] == 4
        lines = [
            line
            for line in capsys.readouterr().err.splitlines()
            if line.startswith("records verify")
        ]
        # Told every PROGRESS_EVERY records or so (as chunks arrive), and at the end.
        assert len(lines) >= 2
        assert re.match(rf"records verify {tenant}: [4-9] records of 10 \(\d+%\), ", lines[0])
        assert lines[-1].startswith(f"records verify {tenant}: 10 records of 10 (100%)")

        ids = {
            r["seq"]: r["id"]
            for r in await owner.fetch(
                "SELECT seq, id FROM provision_records WHERE tenant = $1", tenant
            )
        }
        await owner.execute("SET session_replication_role = replica")
        await owner.execute("DELETE FROM provision_records WHERE tenant = $1 AND seq = 4", tenant)
        await owner.execute(
            "UPDATE provision_records SET atena_id = '1' WHERE tenant = $1 AND seq = 6", tenant
        )
        await owner.execute(
            "UPDATE provision_records SET seq = 0 WHERE tenant = $1 AND seq = 9", tenant
        )
        await owner.execute("SET session_replication_role = origin")
        status, output = await run_cli(
            admin_url(chiba),
            "records",
            "verify",
            "--tenant",
            tenant,
            "--public-key",
            key,
            "--no-progress",
        )
        assert status == 1
        assert "records verify" not in capsys.readouterr().err
        found = [(i["kind"], i["seq"], i["id"]) for i in json.loads(output)["issues"]]
        assert sorted(found) == sorted(
            [
                ("inserted", 0, ids[9]),
                ("deleted", 4, None),
                ("checkpoint_unmatched", 4, None),
                ("altered", 6, ids[6]),
                ("deleted", 9, None),
            ]
        )
        # The checkpoints' findings come after the records'.
        assert found[-1][0] == "checkpoint_unmatched"
    finally:
        await owner.execute("SET session_replication_role = origin")
        await owner.close()
        await conn.close()
