"""Witnessed checkpoints: the hub countersigns each agency's checkpoints, and a database
superuser who rewrites the records — triggers off, chain re-hashed, checkpoints and
receipts deleted — is caught by ``records verify --witness hub`` (or an exported receipts
file), row by row; the running gateway raises the alarm (/ready, /metrics) and stops
exchanging, and does so too when the witness stays unreachable beyond its grace.

Each attack gets a gateway (an agency) of its own, so no other test meets its damage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import io
import json
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import Api
from records_support import admin_url

from chukan.codecs import catalog
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core.settings import RecordsConfig
from chukan.gateway.records.chain import chain_hash, checkpoint_message, genesis_hash
from chukan.gateway.records.store import RecordEntry, write_record
from chukan.gateway.records.witness_format import Receipt, WitnessRequest, record_digest
from chukan.gateway.serve import serve, start_gateway
from chukan.keys import b64e
from chukan.simulators.devnet.network import Gateway, Network, start_network
from chukan.simulators.hub import HUB_STATE, create_hub_app

pytestmark = pytest.mark.integration

DEADLINE = 60.0
#: Small windows: one checkpoint per burst of records (written in one transaction).
WINDOWS = RecordsConfig(
    checkpoint_every=1000,
    checkpoint_interval=dt.timedelta(seconds=0.3),
    checkpoint_poll=0.1,
    partition_check=dt.timedelta(hours=1),
)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < end, f"not within {DEADLINE} s: {what}"
        await asyncio.sleep(0.1)


async def witnessed_gateway(
    network: Network, http: Any, code: str, records: RecordsConfig = WINDOWS
) -> Api:
    """A gateway of a new agency, running with ``records`` windows."""
    first = await network.add_gateway(code, f"証人試験{code[-2:]}")
    await first.server.stop()
    config = dataclasses.replace(first.config, records=records)
    server = await start_gateway(config)
    network.gateways[code] = Gateway(server, config, first.token, first.pki)
    return Api(http, network.gateways[code])


@pytest.fixture
async def retire(network: Network) -> Any:
    """Gateways a test tampered with (or speaks for) are stopped and forgotten at its end:
    the rest of the session neither meets their alarms nor expects them to answer."""
    started: list[str] = []
    yield started
    for code in started:
        gateway = network.gateways.pop(code, None)
        if gateway is not None:
            await gateway.server.stop()


def new_code() -> str:
    return "1299" + "".join(secrets.choice("0123456789") for _ in range(2))


async def write_burst(api: Any, count: int) -> None:
    """``count`` records in one transaction, through the product's recording call."""
    state = api.gateway.state
    now = dt.datetime.now(dt.UTC)
    async with state.pool.acquire() as conn, conn.transaction():
        for i in range(count):
            await write_record(
                conn,
                api.gateway.config.agency_code,
                RecordEntry(
                    role="provider",
                    query_id=f"w-{secrets.token_hex(6)}",
                    permit_id=None,
                    requester=catalog.CHIBA_CITY,
                    provider=api.gateway.config.agency_code,
                    business_code=catalog.LTC_BUSINESS,
                    procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
                    item_code=catalog.CERTIFICATION.code,
                    legal_basis=132,
                    atena_id=str(1000 + i),
                    requested_at=now,
                    provided_at=now,
                    outcome="provided",
                    reason_code=None,
                ),
            )


async def head_seq(api: Any) -> int:
    return int(
        await api.gateway.state.pool.fetchval(
            "SELECT coalesce(max(seq), 0) FROM record_chain_heads"
        )
    )


async def all_witnessed(api: Any) -> None:
    """Until the witness has countersigned a checkpoint at the chain head."""
    pool = api.gateway.state.pool

    async def done() -> bool:
        witnessed = await pool.fetchval("SELECT max(seq) FROM record_witness_receipts")
        return witnessed is not None and witnessed == await head_seq(api)

    await eventually(done, "the chain head witnessed")


def hub_options(network: Network, api: Any, folder: Path) -> list[str]:
    """The CLI's way to the witness: the agency's TLS identity as PEM files, the hub key."""
    tls = api.gateway.config.tls
    files = {"ca": tls.ca_pem, "cert": tls.client_cert_pem, "key": tls.client_key_pem}
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
        (folder / f"{name}.pem").chmod(0o600)
    key = network.hub_key
    return [
        "--hub-url", network.hub.url, "--tls-ca", str(folder / "ca.pem"),
        "--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem"),
        "--hub-key", f"{key.key_id}={b64e(key.raw)}",
    ]  # fmt: skip


async def run_cli(url: str, *argv: str) -> tuple[int, Any]:
    parser = argparse.ArgumentParser(prog="chukan")
    admin_cli.add_commands(
        parser.add_subparsers(dest="command", required=True), database_default=GATEWAY_DATABASE
    )
    out = io.StringIO()
    status = await admin_cli.run(parser.parse_args(argv), url, out, io.StringIO())
    text = out.getvalue()
    return status, json.loads(text) if text.strip() else None


async def verify(api: Any, *options: str) -> tuple[int, Any]:
    tenant = api.gateway.config.agency_code
    return await run_cli(
        admin_url(api), "records", "verify", "--tenant", tenant, "--no-progress", *options
    )


def kinds(report: Any) -> list[tuple[str, int | None, int | None]]:
    return sorted((i["kind"], i["seq"], i["id"]) for i in report["issues"])


async def rehash(owner: asyncpg.Connection, tenant: str) -> None:
    """What an insider does after changing records: every hash recomputed, head included."""
    rows = await owner.fetch(
        "SELECT * FROM provision_records WHERE tenant = $1 ORDER BY seq, id", tenant
    )
    prev = genesis_hash(tenant)
    for row in rows:
        new = chain_hash(prev, row)
        await owner.execute(
            "UPDATE provision_records SET prev_hash = $2, hash = $3 WHERE id = $1 AND tenant = $4",
            row["id"],
            prev,
            new,
            tenant,
        )
        prev = new
    await owner.execute(
        "UPDATE record_chain_heads SET seq = $2, hash = $3 WHERE tenant = $1",
        tenant,
        rows[-1]["seq"],
        prev,
    )


async def insider(api: Any) -> asyncpg.Connection:
    owner = await asyncpg.connect(admin_url(api))
    await owner.execute("SET session_replication_role = replica")  # triggers off
    return owner


async def test_a_rewritten_and_rehashed_record_is_named_by_the_witness_online_and_offline(
    network: Network, http: Any, tmp_path: Path, retire: list[str]
) -> None:
    api = await witnessed_gateway(network, http, new_code())
    retire.append(api.gateway.config.agency_code)
    tenant = api.gateway.config.agency_code
    await write_burst(api, 6)
    await all_witnessed(api)  # small windows: witnessed within seconds
    await write_burst(api, 6)
    await all_witnessed(api)
    options = hub_options(network, api, tmp_path)
    status, report = await verify(api, "--witness", "hub", *options)
    assert status == 0, report
    assert report["witnessed"] is True and report["witness"]["receipts"] >= 2
    assert report["witness"]["unwitnessed_tail"]["records"] == 0
    # Without a witness, the report says none was consulted.
    status, plain = await verify(api)
    assert status == 0 and plain["witnessed"] is False and plain["warnings"]
    # The receipts, exported for an offline audit (mode 0600).
    receipts = tmp_path / "receipts.jsonl"
    status, exported = await run_cli(
        admin_url(api), "records", "receipts", "export", "--tenant", tenant,
        "--out", str(receipts), *options,
    )  # fmt: skip
    assert status == 0 and exported["receipts"] >= 2
    assert stat.S_IMODE(receipts.stat().st_mode) == 0o600

    owner = await insider(api)
    try:
        # One transaction, as an insider would: the running gateway never sees half of it.
        async with owner.transaction():
            target_id = await owner.fetchval(
                "SELECT id FROM provision_records WHERE tenant = $1 AND seq = 4", tenant
            )
            await owner.execute(
                "UPDATE provision_records SET atena_id = '4242' WHERE tenant = $1 AND seq = 4",
                tenant,
            )
            await rehash(owner, tenant)
    finally:
        await owner.close()
    # The chain's own walk sees nothing wrong inside the chain: the checkpoints do, and the
    # witness names the very record.
    for source in (["--witness", "hub", *options], ["--receipts", str(receipts), *options]):
        status, report = await verify(api, *source)
        assert status == 1
        found = kinds(report)
        assert ("witnessed_record_altered", 4, target_id) in found
        assert not [k for k in found if k[0] in ("altered", "deleted", "inserted")]
        mismatches = [i for i in report["issues"] if i["kind"] == "witnessed_checkpoint_mismatch"]
        assert mismatches and all(
            "first differing record: seq 4" in i["detail"] for i in mismatches
        )
    # An offline audit needs the hub's key: a key of nobody refuses every receipt.
    status, report = await verify(
        api, "--receipts", str(receipts), "--hub-key", f"{network.hub_key.key_id}={b64e(bytes(32))}"
    )
    assert status == 1 and {i["kind"] for i in report["issues"]} >= {"witness_signature_invalid"}


async def test_deleted_checkpoints_and_a_rehashed_chain_are_refused_and_stop_the_gateway(
    network: Network, http: Any, tmp_path: Path, retire: list[str]
) -> None:
    api = await witnessed_gateway(network, http, new_code())
    retire.append(api.gateway.config.agency_code)
    tenant = api.gateway.config.agency_code
    await write_burst(api, 8)
    await all_witnessed(api)
    witnessed = [
        r["seq"]
        for r in await api.gateway.state.pool.fetch(
            "SELECT seq FROM record_witness_receipts ORDER BY seq"
        )
    ]
    owner = await insider(api)
    try:
        # One transaction, as an insider would: the running gateway never sees half of it.
        async with owner.transaction():
            await owner.execute("DELETE FROM record_checkpoints WHERE tenant = $1", tenant)
            await owner.execute("DELETE FROM record_witness_receipts WHERE tenant = $1", tenant)
            await owner.execute(
                "UPDATE provision_records SET outcome = 'refused', provided_at = NULL "
                "WHERE tenant = $1 AND seq = 2",
                tenant,
            )
            await rehash(owner, tenant)
    finally:
        await owner.close()
    status, report = await verify(api, "--witness", "hub", *hub_options(network, api, tmp_path))
    assert status == 1
    found = kinds(report)
    assert ("witnessed_record_altered", 2, await record_id(api, 2)) in found
    # Each witnessed checkpoint is gone from the database, or (once the running gateway has
    # signed the re-hashed head again, which it may do at any moment now) differs there.
    for seq in witnessed:
        assert {
            ("witnessed_checkpoint_missing", seq, None),
            ("witnessed_checkpoint_mismatch", seq, None),
        } & set(found), (seq, found)
    # The running gateway signs the re-hashed chain anew; the witness refuses it (409).
    status, ready = await api.call("GET", "/ready")

    async def alarmed() -> bool:
        nonlocal status, ready
        status, ready = await api.call("GET", "/ready")
        return status == 503 and ready["checks"]["records"]["ok"] is False

    await eventually(alarmed, "/ready failing on the records")
    records = ready["checks"]["records"]
    assert records["exchanging"] is False and "refused" in records["reason"]
    status, text = await api.call("GET", "/metrics")
    metrics = text.decode() if isinstance(text, bytes) else text
    assert "chukan_records_witness_refused 1" in metrics
    assert "chukan_records_exchanging 0" in metrics
    failures = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("chukan_records_witness_failures_total ")
    ]
    assert failures and failures[0] >= 1
    status, body = await api.query(
        "1", catalog.LTC_CERTIFICATION_PROCEDURE, catalog.CERTIFICATION.code, catalog.CHIBA_CITY
    )
    assert status == 503 and body["error"]["code"] == "records_unwitnessed", body


async def record_id(api: Any, seq: int) -> int:
    return int(
        await api.gateway.state.pool.fetchval(
            "SELECT id FROM provision_records WHERE seq = $1", seq
        )
    )


async def test_a_deleted_and_an_inserted_row_between_witnessed_checkpoints_are_named(
    network: Network, http: Any, tmp_path: Path, retire: list[str]
) -> None:
    api = await witnessed_gateway(network, http, new_code())
    retire.append(api.gateway.config.agency_code)
    tenant = api.gateway.config.agency_code
    await write_burst(api, 4)
    await all_witnessed(api)
    start = await head_seq(api)
    await write_burst(api, 8)  # one witnessed segment: start+1 .. start+8
    await all_witnessed(api)
    await write_burst(api, 3)
    await all_witnessed(api)
    deleted, moved = start + 3, start + 4
    owner = await insider(api)
    try:
        # One transaction, as an insider would: the running gateway never sees half of it.
        async with owner.transaction():
            await owner.execute(
                "DELETE FROM provision_records WHERE tenant = $1 AND seq = $2", tenant, deleted
            )
            # The next record takes the deleted one's place; a forged one takes its own.
            await owner.execute(
                "UPDATE provision_records SET seq = $2 WHERE tenant = $1 AND seq = $3",
                tenant,
                deleted,
                moved,
            )
            forged = await owner.fetchval(
                """INSERT INTO provision_records (tenant, seq, role, query_id, requester, provider,
                       business_code, procedure_code, item_code, legal_basis, atena_id,
                       requested_at, provided_at, outcome, recorded_at, prev_hash, hash)
                   SELECT tenant, $2, role, 'forged', requester, provider, business_code,
                          procedure_code, item_code, legal_basis, '777', requested_at,
                          provided_at, outcome, recorded_at, prev_hash, hash
                   FROM provision_records WHERE tenant = $1 AND seq = $3 RETURNING id""",
                tenant,
                moved,
                deleted,
            )
            await rehash(owner, tenant)
    finally:
        await owner.close()
    status, report = await verify(api, "--witness", "hub", *hub_options(network, api, tmp_path))
    assert status == 1
    named = [k for k in kinds(report) if k[0].startswith("witnessed_record_")]
    assert named == [
        ("witnessed_record_deleted", deleted, None),
        ("witnessed_record_inserted", moved, forged),
    ]


async def test_the_hub_witness_endpoint(network: Network, http: Any) -> None:
    api = await witnessed_gateway(network, http, new_code())
    code = api.gateway.config.agency_code
    signer = api.gateway.state.keys.signing
    network.gateways.pop(code)
    await api.gateway.server.stop()  # the test speaks for the agency from here on
    hub = network.hub.app[HUB_STATE]
    last = await hub.pool.fetchval(
        "SELECT coalesce(max(seq), 0) FROM witnessed_checkpoints WHERE tenant = $1", code
    )
    ssl = network.agency_client_ssl(code)
    url = network.hub.url + "/network/v1/witness"
    now = dt.datetime.now(dt.UTC)

    def request(after: int, seq: int, head: bytes, *, tenant: str = code) -> WitnessRequest:
        digests = tuple(
            record_digest({"tenant": tenant, "seq": s, "role": "provider", "query_id": str(s),
                           "permit_id": None, "requester": "1", "provider": "2",
                           "business_code": "b", "procedure_code": "p", "item_code": "i",
                           "legal_basis": None, "atena_id": None, "requested_at": now,
                           "provided_at": None, "outcome": "refused", "reason_code": None,
                           "non_disclosure": False, "recorded_at": now})
            for s in range(after + 1, seq + 1)
        )  # fmt: skip
        signature = signer.sign(checkpoint_message(tenant, seq, head, now))
        return WitnessRequest(tenant, after, seq, head, now, signer.key_id, signature, digests)

    async def post(body: Any) -> tuple[int, Any]:
        async with http.post(url, json=body, ssl=ssl) as response:
            return response.status, await response.json()

    first = request(last, last + 3, bytes(range(32)))
    # Two workers send the same checkpoint at once: one row, the same receipt.
    (s1, r1), (s2, r2) = await asyncio.gather(post(first.to_json()), post(first.to_json()))
    assert (s1, s2) == (200, 200) and r1 == r2
    receipt = Receipt.from_json(r1)
    network.hub_key.verify(receipt.message(), receipt.witness_signature)
    assert receipt.records == first.records
    assert (
        await hub.pool.fetchval(
            "SELECT count(*) FROM witnessed_checkpoints WHERE tenant = $1 AND seq = $2",
            code,
            first.seq,
        )
        == 1
    )
    assert await post(first.to_json()) == (200, r1)  # a retry later: the stored receipt
    # Another agency's checkpoint, with this agency's certificate.
    status, body = await post(request(0, 1, bytes(32), tenant=catalog.CHIBA_CITY).to_json())
    assert status == 403 and body["error"]["code"] == "peer_mismatch"
    # A signature that does not verify.
    forged = dataclasses.replace(request(first.seq, first.seq + 2, bytes(32)), signature=bytes(64))
    status, body = await post(forged.to_json())
    assert status == 403 and body["error"]["code"] == "witness_signature_invalid"
    # Not following the last witnessed checkpoint; the same seq with another hash.
    status, body = await post(request(first.seq + 1, first.seq + 4, bytes(32)).to_json())
    assert status == 409 and body["error"]["code"] == "witness_out_of_sequence"
    status, body = await post(request(last, first.seq, b"\x07" * 32).to_json())
    assert status == 409 and body["error"]["code"] == "witness_conflict"
    status, body = await post({"tenant": code, "seq": 1})
    assert status in (400, 422) and body["error"]["code"] == "witness_format_invalid"
    # Reading back: only one's own receipts.
    async with http.get(url, params={"after": str(last)}, ssl=ssl) as response:
        listing = await response.json()
    assert [r["seq"] for r in listing["receipts"]] == [first.seq]
    assert listing["next_after"] is None
    async with http.get(url, params={"tenant": catalog.CHIBA_CITY}, ssl=ssl) as response:
        assert response.status == 403
    with pytest.raises(Exception):  # noqa: B017, PT011 -- the table refuses any change
        await hub.pool.execute("DELETE FROM witnessed_checkpoints WHERE tenant = $1", code)


@pytest.fixture
async def own_network(
    pg_server_url: str, db_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A hub and one gateway of their own: this test stops the hub."""
    network = await start_network(
        pg_server_url,
        tmp_path_factory.mktemp("witness"),
        agencies=(),
        hub_database=f"{db_prefix}witness_hub",
        gateway_database=f"{db_prefix}witness_gateway",
        kokuhoren=False,
    )
    try:
        yield network
    finally:
        await network.stop()


async def test_an_unreachable_witness_is_tolerated_for_the_grace_then_exchanges_stop(
    own_network: Network, tmp_path: Path
) -> None:
    network = own_network
    assert network.pki is not None
    connector = aiohttp.TCPConnector(ssl=network.pki.anonymous_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        grace = dt.timedelta(seconds=3)
        api = await witnessed_gateway(
            network, http, new_code(), dataclasses.replace(WINDOWS, witness_grace=grace)
        )
        await write_burst(api, 3)
        await all_witnessed(api)
        options = hub_options(network, api, tmp_path)
        receipts = tmp_path / "receipts.jsonl"
        status, _ = await run_cli(
            admin_url(api), "records", "receipts", "export",
            "--tenant", api.gateway.config.agency_code, "--out", str(receipts), *options,
        )  # fmt: skip
        assert status == 0

        async def query_status() -> tuple[int, Any]:
            result: tuple[int, Any] = await api.query(
                "1", catalog.LTC_CERTIFICATION_PROCEDURE, catalog.CERTIFICATION.code, "131001"
            )
            return result

        port = int(network.hub.url.rsplit(":", 1)[1])
        await network.hub.stop()
        stopped_at = time.monotonic()
        first_unwitnessed = await head_seq(api) + 1
        await write_burst(api, 2)
        ready: Any = None

        async def witness_failing() -> bool:
            nonlocal ready
            _, ready = await api.call("GET", "/ready")
            return "failing" in str(ready["checks"]["records"].get("reason", ""))

        await eventually(witness_failing, "/ready showing the witness failing")
        if time.monotonic() - stopped_at < grace.total_seconds():
            # Within the grace the gateway still takes queries (this one: nobody known).
            status, body = await query_status()
            assert body["error"]["code"] != "records_unwitnessed", body
        status, text = await api.call("GET", "/metrics")
        metrics = text.decode() if isinstance(text, bytes) else text
        assert "chukan_records_unwitnessed_records 2" in metrics

        async def refused() -> bool:
            status, body = await query_status()
            return status == 503 and body["error"]["code"] == "records_unwitnessed"

        await eventually(refused, "exchanges refused after the grace")
        # An offline audit with the receipts exported before: the records since are
        # older than the window and witnessed by nothing.
        status, report = await verify(api, "--receipts", str(receipts), *options, "--window", "1")
        assert status == 1
        assert [k[:2] for k in kinds(report) if k[0] == "unwitnessed_records"] == [
            ("unwitnessed_records", first_unwitnessed)
        ]
        assert report["witness"]["unwitnessed_tail"]["records"] == 2

        # The witness returns (same port, same keys and database): exchanges resume.
        network.hub = await serve(
            create_hub_app(network.hub_config),
            network.hub_config.host,
            port,
            ssl_context=network.hub_config.tls.server_context() if network.hub_config.tls else None,
        )

        async def recovered() -> bool:
            _, ready = await api.call("GET", "/ready")
            return bool(ready["checks"]["records"]["ok"])

        await eventually(recovered, "records witnessed again")
        status, body = await query_status()
        assert status != 503, body
        status, report = await verify(api, "--witness", "hub", *options)
        assert status == 0, report
