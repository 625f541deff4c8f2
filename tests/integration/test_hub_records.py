"""The hub's records chained, checkpointed and witnessed: each attack named by verify.

The attacks are a database superuser's (``session_replication_role = replica``
switches the append-only triggers off): an event edited from provided to refused,
with and without re-hashing the chain after it; an event deleted, the checkpoints
deleted and the chain re-hashed and renumbered, which the database alone can no
longer show and the witness file does.  Each runs on a hub database of its own, its
events written by the statements routing uses; the running hub's chain (real
queries) is checked at the end, through ``chukan hub records verify``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_exactly_once import answered_query

from chukan.gateway.core import db
from chukan.keys import SigningKeyPair, generate_signing_key
from chukan.simulators.hub import HUB_STATE
from chukan.simulators.hub import cli as hub_cli
from chukan.simulators.hub.chain import canonical_event
from chukan.simulators.hub.checkpoints import (
    checkpoint_pass,
    make_checkpoint,
    read_witness_file,
    sync_witness,
    verify_hub_chain,
)

pytestmark = pytest.mark.integration

OPEN = """INSERT INTO hub_record_events (query_id, kind, permit_id, requester, provider,
        business_code, procedure_code, item_code, legal_basis, requester_person_code,
        provider_person_code, requested_at, permit_expires_at, outcome, non_disclosure)
    VALUES ($1, 'opened', $2, '122041', '121002', 'JM00000000000132', 'JT00013200000001',
            $3, 132, $4, $5, $6::timestamptz, $6::timestamptz + interval '5 minutes',
            'permitted', $7)
    ON CONFLICT (query_id) WHERE kind = 'opened' DO NOTHING RETURNING seq"""
CONCLUDE = """INSERT INTO hub_record_events (query_id, kind, outcome, reason_code, answered_at)
    VALUES ($1, 'concluded', $2, $3, now()) ON CONFLICT DO NOTHING RETURNING seq"""

#: Re-hash the whole chain as an attacker would: renumbered from 1, head set to match.
REHASH = """
DO $$
DECLARE
    e hub_record_events;
    prev bytea := hub_chain_genesis();
    n bigint := 0;
BEGIN
    FOR e IN SELECT * FROM hub_record_events ORDER BY seq, id LOOP
        n := n + 1;
        e.seq := n;
        e.prev_hash := prev;
        e.hash := sha256(prev || hub_event_canonical(e));
        UPDATE hub_record_events SET seq = e.seq, prev_hash = e.prev_hash, hash = e.hash
            WHERE id = e.id;
        prev := e.hash;
    END LOOP;
    UPDATE hub_record_chain_head SET seq = n, hash = prev;
END
$$"""


@pytest.fixture
async def hub_db(pg_server_url: str, db_prefix: str) -> AsyncIterator[asyncpg.Connection]:
    """A hub database of this test's own (every hub migration), as its superuser owner."""
    name = f"{db_prefix}hubchain_{secrets.token_hex(3)}"
    url = await db.ensure_database(pg_server_url, name)
    await db.migrate_url(url, "chukan.simulators", "migrations/hub")
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()
        await db.drop_database(pg_server_url, name)


async def query(conn: asyncpg.Connection, query_id: str, outcome: str = "provided") -> None:
    """One query as the hub records it: opened with its permit, then concluded."""
    now = dt.datetime.now(dt.UTC)
    await conn.fetchval(
        OPEN, query_id, f"permit-{query_id}", "TM00000000000001", "符号-a", "符号-b", now, False
    )
    await conn.fetchval(CONCLUDE, query_id, outcome, None)


async def witnessed(conn: asyncpg.Connection, signer: SigningKeyPair, path: Path) -> int:
    """A signed checkpoint of the head now, appended to the witness file."""
    seq = await make_checkpoint(conn, signer, every=1, interval=dt.timedelta(0), force=True)
    assert seq is not None
    assert await sync_witness(conn, path)
    return seq


async def verify(
    conn: asyncpg.Connection, signer: SigningKeyPair, path: Path | None = None
) -> dict[str, Any]:
    report = await verify_hub_chain(
        conn,
        {signer.key_id: signer.public},
        witness=None if path is None else read_witness_file(path),
        witness_file=None if path is None else str(path),
    )
    result: dict[str, Any] = report.to_json()
    return result


def kinds(report: dict[str, Any]) -> set[tuple[str, int | None, str | None]]:
    return {(i["kind"], i["seq"], i.get("query_id")) for i in report["issues"]}


async def superuser(conn: asyncpg.Connection, *statements: str) -> None:
    await conn.execute("SET session_replication_role = replica")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.execute("SET session_replication_role = origin")


async def test_the_database_and_python_chain_events_alike(hub_db: asyncpg.Connection) -> None:
    now = dt.datetime.now(dt.UTC)
    shapes = [
        ("plain", "TM00000000000001", "符号-1", None, now, False),
        ("unicode", "TM00000000000001", "ｶﾅ漢字\ttab", "x" * 300, now, True),
        ("whole second", "TM00000000000002", "p", "q", now.replace(microsecond=0), False),
        ("old", "TM00000000000002", "p", None, dt.datetime(1001, 1, 1, tzinfo=dt.UTC), False),
    ]
    for name, item, code, other, at, hidden in shapes:
        assert await hub_db.fetchval(OPEN, name, f"permit {name}", item, code, other, at, hidden)
    head = await hub_db.fetchval("SELECT seq FROM hub_record_chain_head")
    # A repeated opening or conclusion is skipped, as ON CONFLICT did, and moves nothing.
    assert await hub_db.fetchval(OPEN, "plain", "permit x", "TM1", "c", None, now, False) is None
    assert await hub_db.fetchval(CONCLUDE, "plain", "provided", None) is not None
    assert await hub_db.fetchval(CONCLUDE, "plain", "refused", "x") is None
    assert (await hub_db.fetchval("SELECT seq FROM hub_record_chain_head")) == head + 1
    rows = await hub_db.fetch(
        "SELECT e.*, hub_event_canonical(e) AS canonical FROM hub_record_events e ORDER BY seq"
    )
    assert [r["seq"] for r in rows] == list(range(1, len(shapes) + 2))
    for row in rows:
        assert canonical_event(row) == row["canonical"], row["query_id"]
    signer = generate_signing_key("hub")
    assert (await verify(hub_db, signer))["ok"]
    for statement in (
        "UPDATE hub_record_events SET outcome = 'refused'",
        "DELETE FROM hub_record_events",
        "TRUNCATE hub_record_events",
        "DELETE FROM hub_record_chain_head",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await hub_db.execute(statement)


async def test_an_edited_event_is_named_with_and_without_a_rehash(
    hub_db: asyncpg.Connection, tmp_path: Path
) -> None:
    signer, path = generate_signing_key("hub"), tmp_path / "witness.jsonl"
    for name in ("q1", "q2", "q3"):
        await query(hub_db, name)
    assert await witnessed(hub_db, signer, path) == 6
    await query(hub_db, "q4")  # the unwitnessed tail
    assert (await verify(hub_db, signer, path))["unwitnessed_events"] == 2

    # provided → refused, the hashes left as they were.
    edit = "UPDATE hub_record_events SET outcome = 'refused' WHERE query_id = 'q2' "
    await superuser(hub_db, edit + "AND kind = 'concluded'")
    alone = await verify(hub_db, signer)
    assert not alone["ok"] and ("altered", 4, "q2") in kinds(alone)
    report = await verify(hub_db, signer, path)
    assert ("altered", 4, "q2") in kinds(report)

    # The chain re-hashed after the edit: it holds together; the checkpoint and the
    # witness do not.
    await superuser(hub_db, REHASH)
    alone = await verify(hub_db, signer)
    assert kinds(alone) == {("checkpoint_mismatch", 6, "q3")}
    report = await verify(hub_db, signer, path)
    assert not report["ok"]
    assert ("altered", 4, "q2") in kinds(report)
    assert ("witness_mismatch", 6, "q3") in kinds(report)
    assert not any(i["kind"] == "altered" and i["seq"] != 4 for i in report["issues"])


async def test_deleted_checkpoints_and_a_rehashed_chain_are_exposed_by_the_witness_file(
    hub_db: asyncpg.Connection, tmp_path: Path, log_capture: Any
) -> None:
    signer, path = generate_signing_key("hub"), tmp_path / "witness.jsonl"
    await query(hub_db, "q1")
    await query(hub_db, "q2")
    await witnessed(hub_db, signer, path)
    await query(hub_db, "q3", "refused")
    await witnessed(hub_db, signer, path)
    assert [e.seq for e in read_witness_file(path)] == [4, 6]

    # Delete q1's conclusion, every checkpoint, and re-hash (renumbering) the rest.
    await superuser(
        hub_db,
        "DELETE FROM hub_record_events WHERE query_id = 'q1' AND kind = 'concluded'",
        "DELETE FROM hub_record_checkpoints",
        REHASH,
    )
    # The database alone tells nothing any more ...
    assert (await verify(hub_db, signer))["ok"]
    # ... the witness file names the deleted event and the checkpoints that went missing.
    report = await verify(hub_db, signer, path)
    assert not report["ok"]
    found = kinds(report)
    assert ("deleted", 2, "q1") in found
    assert {("witness_missing", 4), ("witness_missing", 6)} <= {(k, s) for k, s, _ in found}
    assert not any(i["kind"] == "altered" for i in report["issues"])  # renumbered only
    # The checkpointer refuses to go on from a database that lost what it witnessed.
    assert not await sync_witness(hub_db, path)
    assert log_capture.named("hub_witness_mismatch")


async def run_hub_records(*argv: str) -> tuple[int, dict[str, Any]]:
    """``chukan hub records …`` as the command line parses and runs it (own event loop)."""
    parser = argparse.ArgumentParser(prog="chukan")
    hub_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hub", "records", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = await asyncio.to_thread(hub_cli.run_records, args, out, err)
    assert status in (0, 1), err.getvalue()
    return status, json.loads(out.getvalue())


async def test_the_running_hub_chains_and_witnesses_real_queries(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, tmp_path: Path
) -> None:
    query_id = await answered_query(chiba, funabashi, rng)
    state = network.hub.app[HUB_STATE]
    await checkpoint_pass(state, force=True)
    head = await state.pool.fetchval("SELECT seq FROM hub_record_chain_head")
    seqs = await state.pool.fetch(
        "SELECT seq FROM hub_record_events WHERE query_id = $1 ORDER BY seq", query_id
    )
    assert len(seqs) == 2 and seqs[-1]["seq"] <= head
    entries = read_witness_file(state.config.witness_path)
    assert entries[-1].seq >= seqs[-1]["seq"]
    config = network.hub_config
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(config.key_passphrase)
    passphrase.chmod(0o600)
    token = tmp_path / "token"
    token.write_text(config.admin_token)
    token.chmod(0o600)
    toml = tmp_path / "hub.toml"
    toml.write_text(
        f'[database]\nurl = "{config.database_url}"\n\n'
        f'[keys]\ndir = "{config.key_dir}"\npassphrase_file = "{passphrase}"\n\n'
        f'[admin]\ntoken_file = "{token}"\n\n'
        f'[records]\nwitness_file = "{config.witness_path}"\n'
    )
    status, report = await run_hub_records("verify", "--config", str(toml))
    assert status == 0, report
    assert report["ok"] and report["keys_trusted"]
    assert report["witnessed_seq"] >= seqs[-1]["seq"]
    assert report["events"] >= head
