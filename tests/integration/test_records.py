"""情報提供等記録: append-only, partitioned, hash-chained, checkpointed, disclosed.

Tampering is done the way an insider would: directly in PostgreSQL as the
owner, with the append-only triggers switched off (``session_replication_role
= replica``); verification must name every altered, deleted and inserted row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import random
import secrets
from typing import Any

import asyncpg
import pytest
from records_support import admin_url, fresh_tenant

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core.keyring import enrolment_payload
from chukan.gateway.core.state import utcnow
from chukan.gateway.records.chain import chain_hash, genesis_hash
from chukan.gateway.records.checkpoints import make_checkpoint
from chukan.gateway.records.store import RecordEntry, write_record
from chukan.gateway.records.verify import verify_chain
from chukan.gateway.serve import start_gateway
from chukan.keys import b64e, generate_signing_key
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


def parse(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="chukan")
    commands = parser.add_subparsers(dest="command", required=True)
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    return parser.parse_args(argv)


async def run_cli(url: str, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    status = await admin_cli.run(parse(*argv), url, out, io.StringIO(stdin))
    return status, out.getvalue()


async def moved_person(
    rng: random.Random, source: Any, target: Any
) -> tuple[SyntheticPerson, SyntheticPerson]:
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await source.register(here.atena_id, here.individual_number))[0] == 201
    assert (await target.register(there.atena_id, there.individual_number))[0] == 201
    return here, there


async def round_trip(chiba: Any, funabashi: Any, rng: random.Random) -> tuple[str, str, str]:
    """船橋市 asks 千葉市; returns (query id, 千葉市 宛名番号, 船橋市 宛名番号)."""
    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    status, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert status == 202
    assert (await funabashi.result(submitted["query_id"]))["status"] == "answered"
    return submitted["query_id"], in_chiba.atena_id, in_funabashi.atena_id


async def seed(conn: asyncpg.Connection, tenant: str, count: int) -> None:
    """Records inserted as the owner, through the chaining trigger."""
    for i in range(count):
        await conn.execute(
            """INSERT INTO provision_records (tenant, role, query_id, requester, provider,
                   business_code, procedure_code, item_code, legal_basis, atena_id,
                   requested_at, provided_at, outcome)
               VALUES ($1, 'provider', $2, '122041', $1, $3, $4, $5, 132, $6, now(), now(),
                       'provided')""",
            tenant,
            f"q-{tenant}-{i}",
            catalog.LTC_BUSINESS,
            catalog.LTC_CERTIFICATION_PROCEDURE,
            catalog.CERTIFICATION.code,
            str(100 + i),
        )


async def test_a_round_trip_is_recorded_and_chained_on_both_sides_and_the_hub(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    query_id, _, _ = await round_trip(chiba, funabashi, rng)
    for api, role in ((chiba, "provider"), (funabashi, "requester")):
        state = api.gateway.state
        row = await state.pool.fetchrow(
            "SELECT * FROM provision_records WHERE query_id = $1", query_id
        )
        assert row["role"] == role and row["outcome"] == "provided" and row["seq"] >= 1
        assert row["business_code"] == catalog.LTC_BUSINESS
        assert row["tenant"] == api.gateway.config.agency_code
        # The database's canonical form is this module's: the hash recomputes in Python.
        assert chain_hash(row["prev_hash"], row) == row["hash"]
        public = state.keys.signing.public
        async with state.pool.acquire() as conn:
            report = await verify_chain(
                conn, api.gateway.config.agency_code, {public.key_id: public}
            )
        assert report.ok, report.issues
        assert report.records == report.head_seq
    hub = network.hub.app[HUB_STATE]
    events = await hub.pool.fetch(
        "SELECT kind, outcome FROM hub_record_events WHERE query_id = $1 ORDER BY id", query_id
    )
    assert [(e["kind"], e["outcome"]) for e in events] == [
        ("opened", "permitted"),
        ("concluded", "provided"),
    ]
    current = await hub.pool.fetchrow("SELECT * FROM hub_records WHERE query_id = $1", query_id)
    assert current["outcome"] == "provided" and current["answered_at"] is not None
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await hub.pool.execute(
            "UPDATE hub_record_events SET outcome = 'refused' WHERE query_id = $1", query_id
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await hub.pool.execute("DELETE FROM hub_record_events WHERE query_id = $1", query_id)


async def test_records_are_append_only_for_tenants_and_the_owner(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    await round_trip(chiba, funabashi, rng)
    state = chiba.gateway.state
    async with state.pool.acquire() as conn:
        await make_checkpoint(
            conn, catalog.CHIBA_CITY, state.keys.signing, every=1, interval=dt.timedelta(0)
        )
    tenant = await asyncpg.connect(chiba.gateway.config.database_url)
    try:
        for statement in (
            "UPDATE provision_records SET outcome = 'refused'",
            "DELETE FROM provision_records",
            "TRUNCATE provision_records",
            "UPDATE record_checkpoints SET seq = 0",
            "DELETE FROM record_chain_heads",
            # The chain columns and the clock belong to the database, not to the writer.
            "INSERT INTO provision_records (role, query_id, requester, provider, business_code, "
            "procedure_code, item_code, requested_at, outcome, seq) VALUES ('provider', 'x', "
            "'1', '2', 'b', 'p', 'i', now(), 'refused', 1)",
            "INSERT INTO provision_records (role, query_id, requester, provider, business_code, "
            "procedure_code, item_code, requested_at, outcome, recorded_at) VALUES ('provider', "
            "'x', '1', '2', 'b', 'p', 'i', now(), 'refused', now())",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tenant.execute(statement)
        # Partitions are reached only through the parent (and its tenant policy).
        partition = await tenant.fetchval(
            "SELECT 'provision_records_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.fetch(f"SELECT * FROM {partition}")  # noqa: S608
    finally:
        await tenant.close()
    owner = await asyncpg.connect(admin_url(chiba))
    try:
        for statement in (
            "UPDATE provision_records SET outcome = 'refused'",
            "DELETE FROM provision_records",
            "TRUNCATE provision_records",
            f"TRUNCATE {partition}",
            "DELETE FROM record_checkpoints",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)
    finally:
        await owner.close()


async def test_inserts_in_a_new_month_get_their_partition(chiba: Any) -> None:
    owner = await asyncpg.connect(admin_url(chiba))
    try:
        # The gateway prepared this month and the next ones at start-up.
        for ahead in range(4):
            month = (dt.date.today().replace(day=1) + dt.timedelta(days=32 * ahead)).strftime(
                "%Y%m"
            )
            assert await owner.fetchval("SELECT to_regclass($1)", f"provision_records_p{month}")
        tenant = "97" + "".join(secrets.choice("0123456789") for _ in range(4))
        year = 2040 + secrets.randbelow(50)
        created = await owner.fetch(
            "SELECT chukan_ensure_record_partitions($1, 2) AS p", dt.date(year, 5, 17)
        )
        assert [r["p"] for r in created] == [
            f"provision_records_p{year}05",
            f"provision_records_p{year}06",
        ]
        insert = """INSERT INTO provision_records (tenant, role, query_id, requester, provider,
                        business_code, procedure_code, item_code, requested_at, outcome,
                        recorded_at)
                    VALUES ($1, 'provider', $2, '1', $1, 'b', 'p', 'i', $3, 'refused', $3)
                    RETURNING tableoid::regclass::text AS part, seq"""
        in_may = await owner.fetchrow(
            insert, tenant, "may", dt.datetime(year, 5, 31, 23, 59, tzinfo=dt.UTC)
        )
        assert in_may is not None
        assert in_may["part"] == f"provision_records_p{year}05" and in_may["seq"] == 1
        # A month nobody prepared: the default partition takes it, the chain goes on...
        in_august = await owner.fetchrow(
            insert, tenant, "aug", dt.datetime(year, 8, 2, tzinfo=dt.UTC)
        )
        assert in_august is not None
        assert in_august["part"] == "provision_records_default" and in_august["seq"] == 2
        # ... and creating that month later leaves its rows where they are, readable.
        created = await owner.fetch(
            "SELECT chukan_ensure_record_partitions($1, 1) AS p", dt.date(year, 8, 1)
        )
        assert created == []
        assert (
            await owner.fetchval("SELECT count(*) FROM provision_records WHERE tenant = $1", tenant)
            == 2
        )
    finally:
        await owner.close()


async def test_verify_names_altered_deleted_and_inserted_records(chiba: Any) -> None:
    tenant = await fresh_tenant(chiba, "98", "改ざん試験")
    signer = generate_signing_key(tenant)
    owner = await asyncpg.connect(admin_url(chiba))
    try:
        await seed(owner, tenant, 10)
        conn = await admin_cli.tenant_connection(admin_url(chiba), tenant)
        try:
            made = await make_checkpoint(
                conn, tenant, signer, every=1, interval=dt.timedelta(0), force=True
            )
            assert made is not None and made.seq == 10
        finally:
            await conn.close()
        key = f"{signer.key_id}={b64e(signer.public.raw)}"
        status, output = await run_cli(
            admin_url(chiba), "records", "verify", "--tenant", tenant, "--public-key", key
        )
        assert status == 0, output
        assert json.loads(output)["ok"] is True

        ids = {
            r["seq"]: r["id"]
            for r in await owner.fetch(
                "SELECT seq, id FROM provision_records WHERE tenant = $1", tenant
            )
        }
        await owner.execute("SET session_replication_role = replica")
        await owner.execute(
            "UPDATE provision_records SET outcome = 'refused', provided_at = NULL "
            "WHERE tenant = $1 AND seq = 3",
            tenant,
        )
        await owner.execute("DELETE FROM provision_records WHERE tenant = $1 AND seq = 5", tenant)
        copied = await owner.fetchval(
            """INSERT INTO provision_records (tenant, seq, role, query_id, requester, provider,
                   business_code, procedure_code, item_code, legal_basis, atena_id,
                   requested_at, provided_at, outcome, recorded_at, prev_hash, hash)
               SELECT tenant, seq, role, query_id, requester, provider, business_code,
                      procedure_code, item_code, legal_basis, '999', requested_at,
                      provided_at, outcome, recorded_at, prev_hash, hash
               FROM provision_records WHERE tenant = $1 AND seq = 7 RETURNING id""",
            tenant,
        )
        appended = await owner.fetchval(
            """INSERT INTO provision_records (tenant, seq, role, query_id, requester, provider,
                   business_code, procedure_code, item_code, requested_at, outcome,
                   prev_hash, hash)
               VALUES ($1, 11, 'provider', 'forged', '122041', $1, 'b', 'p', 'i', now(),
                       'provided', '\\x00'::bytea, '\\x00'::bytea) RETURNING id""",
            tenant,
        )
        await owner.execute("SET session_replication_role = origin")
    finally:
        await owner.close()

    status, output = await run_cli(
        admin_url(chiba), "records", "verify", "--tenant", tenant, "--public-key", key
    )
    assert status == 1
    report = json.loads(output)
    found = sorted((i["kind"], i["seq"], i["id"]) for i in report["issues"])
    assert found == sorted(
        [
            ("altered", 3, ids[3]),
            ("deleted", 5, None),
            ("inserted", 7, copied),
            ("inserted", 11, appended),
        ]
    )


async def test_a_rewritten_chain_is_caught_by_its_signed_checkpoint(chiba: Any) -> None:
    tenant = await fresh_tenant(chiba, "98", "改ざん試験")
    signer = generate_signing_key(tenant)
    trusted = {signer.key_id: signer.public}
    owner = await asyncpg.connect(admin_url(chiba))
    conn = await admin_cli.tenant_connection(admin_url(chiba), tenant)
    try:
        await seed(owner, tenant, 6)
        await make_checkpoint(conn, tenant, signer, every=1, interval=dt.timedelta(0), force=True)
        # An insider alters record 2 and recomputes every hash after it, head included.
        await owner.execute("SET session_replication_role = replica")
        await owner.execute(
            "UPDATE provision_records SET atena_id = '4242' WHERE tenant = $1 AND seq = 2", tenant
        )
        rows = await owner.fetch(
            "SELECT * FROM provision_records WHERE tenant = $1 ORDER BY seq", tenant
        )
        prev = genesis_hash(tenant)
        for row in rows:
            new = chain_hash(prev, row)
            await owner.execute(
                "UPDATE provision_records SET prev_hash = $2, hash = $3 WHERE id = $1",
                row["id"],
                prev,
                new,
            )
            prev = new
        await owner.execute(
            "UPDATE record_chain_heads SET hash = $2 WHERE tenant = $1", tenant, prev
        )
        report = await verify_chain(conn, tenant, trusted)
        assert [(i.kind, i.seq) for i in report.issues] == [("checkpoint_mismatch", 6)]
        assert "records 1..6" in report.issues[0].detail
        # A forged signature, and a key nobody trusts.
        await owner.execute(
            "UPDATE record_checkpoints SET signature = $2 WHERE tenant = $1",
            tenant,
            bytes(64),
        )
        kinds = {i.kind for i in (await verify_chain(conn, tenant, trusted)).issues}
        assert "checkpoint_signature_invalid" in kinds
        other = generate_signing_key(tenant)
        kinds = {
            i.kind for i in (await verify_chain(conn, tenant, {other.key_id: other.public})).issues
        }
        assert "checkpoint_key_unknown" in kinds
        # Cutting the signed tail and moving the head back is caught by the checkpoint too.
        await owner.execute("DELETE FROM provision_records WHERE tenant = $1 AND seq = 6", tenant)
        await owner.execute(
            "UPDATE record_chain_heads SET seq = 5, hash = $2 WHERE tenant = $1",
            tenant,
            rows[4]["hash"],
        )
        kinds = {i.kind for i in (await verify_chain(conn, tenant, trusted)).issues}
        assert "checkpoint_unmatched" in kinds
    finally:
        await owner.execute("SET session_replication_role = origin")
        await owner.close()
        await conn.close()


async def test_two_gateway_processes_of_one_tenant_keep_one_chain(
    network: Any, http: Any, ops_gateway: Any, log_capture: Any
) -> None:
    first = ops_gateway.gateway
    agency = first.config.agency_code
    second = await start_gateway(first.config)
    try:
        from chukan.gateway.core.state import GATEWAY_STATE

        pools = [first.state.pool, second.app[GATEWAY_STATE].pool]
        before = await pools[0].fetchval("SELECT coalesce(max(seq), 0) FROM provision_records")
        now = dt.datetime.now(dt.UTC)

        async def write(pool: Any, n: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await write_record(
                    conn,
                    agency,
                    RecordEntry(
                        role="provider",
                        query_id=f"concurrent-{secrets.token_hex(6)}",
                        permit_id=None,
                        requester=catalog.CHIBA_CITY,
                        provider=agency,
                        business_code=catalog.LTC_BUSINESS,
                        procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
                        item_code=catalog.CERTIFICATION.code,
                        legal_basis=132,
                        atena_id=str(n),
                        requested_at=now,
                        provided_at=now,
                        outcome="provided",
                        reason_code=None,
                    ),
                )

        await asyncio.gather(*(write(pools[i % 2], i) for i in range(300)))
        seqs = [
            r["seq"]
            for r in await pools[1].fetch(
                "SELECT seq FROM provision_records WHERE seq > $1 ORDER BY seq", before
            )
        ]
        assert seqs == list(range(before + 1, before + 301))
        # Both processes' checkpointers sign as they go; wait for one covering the head.
        for _ in range(100):
            signed = await pools[0].fetchval("SELECT max(seq) FROM record_checkpoints")
            if signed == before + 300:
                break
            await asyncio.sleep(0.05)
        assert signed == before + 300
        public = first.state.keys.signing.public
        async with pools[1].acquire() as conn:
            report = await verify_chain(conn, agency, {public.key_id: public})
        assert report.ok, report.issues
        assert report.checkpoints >= 2
        assert any(e.get("tenant") == agency for e in log_capture.named("record_checkpoint_signed"))
    finally:
        await second.stop()
        # The second process enrolled last: the hub operator points it back at the first.
        state = first.state
        async with http.post(
            network.hub.url + "/admin/v1/agencies",
            json=enrolment_payload(state.config, state.endpoint, state.ring, utcnow()),
            headers={"Authorization": f"Bearer {state.config.enrolment_token}"},
            ssl=network.hub_operator_ssl(),
        ) as response:
            assert response.status == 201, await response.text()


async def test_disclosure_to_an_auditor_is_complete_and_itself_recorded(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id, chiba_atena, _ = await round_trip(chiba, funabashi, rng)
    # A query of 千葉市 about the same person, refused locally and flagged 不開示.
    status, _ = await chiba.query(
        chiba_atena,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.BENEFIT.code,
        catalog.FUNABASHI_CITY,
        non_disclosure=True,
    )
    assert status == 403
    url = admin_url(chiba)
    admin_name = f"adm{secrets.token_hex(3)}"
    password = f"Adm-{secrets.token_urlsafe(12)}"
    status, _ = await run_cli(
        url, "staff", "create-admin", "--tenant", catalog.CHIBA_CITY, "--username", admin_name,
        "--password-stdin", stdin=password + "\n",
    )  # fmt: skip
    assert status == 0
    status, body = await chiba.call(
        "POST",
        "/staff/v1/login",
        json={"username": admin_name, "password": password},
    )
    admin_token = body["token"]
    auditor_password = f"Aud-{secrets.token_urlsafe(12)}"
    auditor_name = f"aud{secrets.token_hex(3)}"
    status, _ = await chiba.call(
        "POST",
        "/staff/v1/accounts",
        token=admin_token,
        json={
            "username": auditor_name,
            "password": auditor_password,
            "roles": ["auditor"],
            "office": "kaigo-hoken-kanri",
        },
    )
    assert status == 201
    status, body = await chiba.call(
        "GET", f"/staff/v1/disclosures/{chiba_atena}", token=admin_token
    )
    assert status == 403 and body["error"]["code"] == "role_required"
    _, body = await chiba.call(
        "POST",
        "/staff/v1/login",
        json={"username": auditor_name, "password": auditor_password},
    )
    auditor = body["token"]
    status, disclosure = await chiba.call(
        "GET", f"/staff/v1/disclosures/{chiba_atena}", token=auditor
    )
    assert status == 200
    records = disclosure["records"]
    assert [(r["role"], r["outcome"]) for r in records] == [
        ("provider", "provided"),
        ("requester", "refused"),
    ]
    provided = records[0]
    assert provided["query_id"] == query_id and provided["counterpart"] == catalog.FUNABASHI_CITY
    assert provided["procedure_code"] == catalog.LTC_CERTIFICATION_PROCEDURE
    assert provided["item_code"] == catalog.CERTIFICATION.code
    assert provided["requested_at"] and provided["provided_at"] and provided["hash_valid"]
    assert records[1]["non_disclosure"] is True
    # For the person: 不開示 records are left out.
    _, for_person = await chiba.call(
        "GET", f"/staff/v1/disclosures/{chiba_atena}?audience=person", token=auditor
    )
    assert [r["role"] for r in for_person["records"]] == ["provider"]
    status, text = await chiba.call(
        "GET", f"/staff/v1/disclosures/{chiba_atena}?format=csv", token=auditor
    )
    lines = text.decode().splitlines()
    assert status == 200 and lines[0].startswith("seq,id,role,counterpart,") and len(lines) == 3
    assert (await chiba.call("GET", "/staff/v1/disclosures/12x", token=auditor))[0] == 422
    # The chain verifies through the staff API, and a checkpoint can be forced.
    status, report = await chiba.call("GET", "/staff/v1/records/verify", token=auditor)
    assert status == 200 and report["ok"], report
    status, body = await chiba.call("POST", "/staff/v1/records/checkpoints", token=auditor)
    assert status == 200 and body["checkpoint"]["seq"] == report["head_seq"]
    # The CLI export, as CSV.
    status, csv_text = await run_cli(
        url, "records", "disclose", "--tenant", catalog.CHIBA_CITY, "--atena-id", chiba_atena,
        "--format", "csv", "--actor", "auditor-cli",
    )  # fmt: skip
    assert status == 0 and len(csv_text.splitlines()) == 3
    owner = await asyncpg.connect(url)
    try:
        trail = await owner.fetch(
            "SELECT actor_kind, actor, outcome FROM audit_trail WHERE tenant = $1 "
            "AND action = 'records.disclose' AND target = $2 ORDER BY id",
            catalog.CHIBA_CITY,
            chiba_atena,
        )
    finally:
        await owner.close()
    assert [(t["actor_kind"], t["actor"]) for t in trail] == [
        ("staff", auditor_name),
        ("staff", auditor_name),
        ("staff", auditor_name),
        ("cli", "auditor-cli"),
    ]


async def test_records_verify_cli_reads_the_agency_key_folder(
    chiba: Any, funabashi: Any, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    await round_trip(chiba, funabashi, rng)  # at least one record for the checkpoint to sign
    config = chiba.gateway.config
    monkeypatch.setenv("CHUKAN_KEY_PASSPHRASE", config.key_passphrase.decode())
    status, output = await run_cli(
        admin_url(chiba), "records", "checkpoint", "--tenant", config.agency_code,
        "--key-dir", str(config.key_dir),
    )  # fmt: skip
    assert status == 0, output
    status, output = await run_cli(
        admin_url(chiba), "records", "verify", "--tenant", config.agency_code,
        "--key-dir", str(config.key_dir),
    )  # fmt: skip
    assert status == 0, output
    report = json.loads(output)
    assert report["ok"] and report["keys_trusted"] and report["checkpoints"] >= 1
    status, _ = await run_cli(admin_url(chiba), "records", "verify", "--tenant", "999999")
    assert status == 2  # not a tenant of this database
    assert dataclasses.is_dataclass(config)


async def test_core_systems_read_records_with_their_chain_fields(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    await round_trip(chiba, funabashi, rng)
    status, body = await chiba.call("GET", "/internal/v1/records")
    assert status == 200 and body["records"]
    first = body["records"][0]
    assert len(first["hash"]) == 64 and first["seq"] >= 1
