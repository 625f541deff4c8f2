"""``chukan backup`` and ``chukan restore`` against real server processes and PostgreSQL.

A hub and two gateways run as their own processes (the operator's TOML files).  The
requester's database is backed up while a query is in flight (its provider is down),
the requester is stopped, and the backup is restored into a new, empty embedded
PostgreSQL with a new key folder.  The provider then answers: the answer is sealed to
the requester's pre-backup key before the restored gateway even starts, so it opens
only if the restore brought the keys back.  Then the restored gateway serves the old
answer, the in-flight one and new queries, and ``chukan records verify`` passes against
the witness.  Tampered, truncated and misdirected restores are refused with their codes;
retention keeps 7 days of daily and 21 days of copy backups (manifests dated as data).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from process_support import (
    CORE_OPERATIONS,
    Files,
    Server,
    list_csv,
    onboard_agencies,
    run_command,
    session,
    start_server,
    without_password,
    write_network,
)

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core import db
from chukan.gateway.core.identities import system_identity
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.synthetic import synthetic_person

pytestmark = pytest.mark.integration

#: Agencies of this test only (tenant logins are server-wide: no other test provisions them).
PROVIDER: Final = "129953"
REQUESTER: Final = "129961"
AGENCIES: Final = ((PROVIDER, "試験市戊"), (REQUESTER, "試験市己"))
LIST_CSV: Final = list_csv(((REQUESTER, PROVIDER),))
PASSPHRASE: Final = "backup-passphrase-" + "x" * 24
PATIENCE: Final = 120.0
RESTORED_DATABASE: Final = "chukan_gateway"


@dataclass
class Cluster:
    files: Files
    servers: dict[str, Server]
    gateway_db: str
    hub_db: str


@pytest.fixture(scope="module")
async def cluster(
    pg_server_url: str, db_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("backup")
    files = await write_network(
        root, pg_server_url, db_prefix, provision=True, agencies=AGENCIES, tag="bk"
    )
    # Permits outlive the provider's downtime of this test on a loaded machine.
    hub_toml = files.tomls["hub"]
    hub_toml.write_text(
        hub_toml.read_text("utf-8").replace(
            "delivery_max_backoff = 1\n", "delivery_max_backoff = 1\npermit_lifetime = 1800\n"
        ),
        "utf-8",
    )
    files.secret("backup-passphrase", PASSPHRASE)
    servers: dict[str, Server] = {}
    try:
        servers["hub"] = await start_server(
            files, "hub", "hub", "serve", "--config", "hub.toml", "--migrate"
        )
        await onboard_agencies(files, servers["hub"], LIST_CSV, AGENCIES)
        for code, _ in AGENCIES:
            servers[code] = await start_server(
                files, code, "gateway", "serve", "--config", f"{code}.toml", "--migrate"
            )
        yield Cluster(
            files,
            servers,
            await db.ensure_database(pg_server_url, f"{db_prefix}bk_gateway"),
            await db.ensure_database(pg_server_url, f"{db_prefix}bk_hub"),
        )
    finally:
        for server in servers.values():
            if server.process.returncode is None:
                server.process.kill()
                await server.process.wait()


@pytest.fixture(scope="module")
def second_server() -> Iterator[str]:
    """A new, empty embedded PostgreSQL (the machine the backup is restored on)."""
    data_dir = Path(tempfile.mkdtemp(prefix="chukan-bk-"))
    embedded = db.EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def auth(files: Files, code: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {files.tokens[code]}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, files: Files, code: str, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, headers=auth(files, code), **kw) as response:
        return response.status, await response.json()


async def submit(http: aiohttp.ClientSession, url: str, files: Files, atena_id: str) -> str:
    status, body = await call(
        http,
        "POST",
        url + "/internal/v1/queries",
        files,
        REQUESTER,
        json={
            "atena_id": atena_id,
            "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
            "item_code": catalog.CERTIFICATION.code,
            "provider": PROVIDER,
        },
    )
    assert status == 202, body
    return str(body["query_id"])


async def result(
    http: aiohttp.ClientSession, url: str, files: Files, query_id: str, wait: int = 30
) -> Any:
    status, body = await call(
        http, "GET", f"{url}/internal/v1/queries/{query_id}?wait={wait}", files, REQUESTER
    )
    assert status == 200, body
    return body


async def until(what: str, check: Any) -> Any:
    """Poll ``check()`` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def chain_state(url: str, tenant: str) -> tuple[int, int]:
    """The tenant's chain head and its last witnessed seq (owner's view)."""
    conn = await asyncpg.connect(url)
    try:
        head = await conn.fetchval("SELECT seq FROM record_chain_heads WHERE tenant = $1", tenant)
        witnessed = await conn.fetchval(
            "SELECT max(seq) FROM record_witness_receipts WHERE tenant = $1", tenant
        )
    finally:
        await conn.close()
    return int(head or 0), int(witnessed or 0)


def restored_toml(files: Files, tenant_url: str, owner_url: str) -> Path:
    """The requester's file, pointed at the restored database and key folder."""
    text = files.tomls[REQUESTER].read_text("utf-8")
    bare, password = without_password(tenant_url)
    assert password is not None
    secret = files.secret(f"{REQUESTER}-restored-db", password)
    text = re.sub(
        r'\[database\]\nurl = "[^"]*"\npassword_file = "[^"]*"',
        f'[database]\nurl = "{bare}"\npassword_file = "{secret}"',
        text,
    )
    text = re.sub(
        r'\[database\.migration\]\nurl = "[^"]*"\n(password_file = "[^"]*"\n)?',
        f'[database.migration]\nurl = "{owner_url}"\n',
        text,
    )
    text = text.replace(f'dir = "keys/{REQUESTER}"', f'dir = "restored-keys/{REQUESTER}"')
    assert bare in text and owner_url in text and "restored-keys" in text
    return files.write(f"{REQUESTER}-restored", text)


def first_json(output: str) -> Any:
    """The JSON document a command printed (stderr's log lines may follow it)."""
    document, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])
    return document


def backup_args(*extra: str) -> tuple[str, ...]:
    return (*extra, "--passphrase-file", "secrets/backup-passphrase")


async def test_a_restored_gateway_opens_old_answers_verifies_its_records_and_goes_on(
    cluster: Cluster, second_server: str
) -> None:
    files, servers = cluster.files, cluster.servers
    root, pki = files.root, files.pki
    rng = random.Random("backup-restore")
    person = synthetic_person(rng, "5")
    moved = synthetic_person(rng, "6").atena_id
    item = certification_item(rng, dt.date.today())
    requester_url = servers[REQUESTER].url
    provider_system = system_identity(PROVIDER, CORE_SYSTEM, CORE_OPERATIONS)
    async with session(pki, provider_system) as http:
        async with http.post(
            servers[PROVIDER].url + "/internal/v1/persons",
            json={"atena_id": person.atena_id, "individual_number": person.individual_number},
        ) as response:
            assert response.status == 201, await response.text()
        async with http.put(
            f"{servers[PROVIDER].url}/internal/v1/persons/{person.atena_id}/items/"
            f"{catalog.CERTIFICATION.code}",
            data=item,
            headers={"Content-Type": "application/xml"},
        ) as response:
            assert response.status == 201, await response.text()
    async with session(pki) as http:
        status, body = await call(
            http,
            "POST",
            requester_url + "/internal/v1/persons",
            files,
            REQUESTER,
            json={"atena_id": moved, "individual_number": person.individual_number},
        )
        assert status == 201, body
        # An old answer: collected before the backup.
        old = await submit(http, requester_url, files, moved)
        old_answer = await result(http, requester_url, files, old)
        assert old_answer["status"] == "answered", old_answer
        assert old_answer["result"].encode() == item

        # A query in flight: its provider is down, the hub holds it.
        code, _ = await servers[PROVIDER].stop()
        assert code == 0
        in_flight = await submit(http, requester_url, files, moved)

        async def sent() -> bool:
            body = await result(http, requester_url, files, in_flight, wait=0)
            return bool(body["state"] == "sent")

        await until("the in-flight query to reach the hub", sent)

    async def all_witnessed() -> bool:
        head, witnessed = await chain_state(cluster.gateway_db, REQUESTER)
        return head > 0 and head == witnessed

    await until("the requester's chain to be witnessed", all_witnessed)
    head_at_backup, _ = await chain_state(cluster.gateway_db, REQUESTER)

    # The backup, taken while the gateway runs (its owner login from the TOML file).
    code, output = await run_command(
        root,
        "backup",
        *backup_args("--config", f"{REQUESTER}.toml", "--out", "backups", "--kind", "daily"),
    )
    assert code == 0, output
    manifest = first_json(output)
    backup = root / "backups" / manifest["file"]
    assert manifest["kind"] == "daily" and manifest["component"] == "gateway"
    assert {t["tenant"] for t in manifest["tenants"]} == {PROVIDER, REQUESTER}
    assert manifest["migrations"]["applied"] and not manifest["migrations"]["pending"]
    assert manifest["keys"] == [f"{REQUESTER}.ring.json"]
    assert manifest["size"] == backup.stat().st_size
    assert backup.stat().st_mode & 0o777 == 0o600
    beside = json.loads((root / "backups" / (backup.stem + ".manifest.json")).read_text())
    assert beside["sha256"] == manifest["sha256"]
    # Encrypted at rest: nothing of the database or the item is readable in the file.
    raw = backup.read_bytes()
    for plain in (b"PGDMP", moved.encode(), b"provision_records", item[:40]):
        assert plain not in raw

    code, _ = await servers[REQUESTER].stop()
    assert code == 0
    # Nothing was recorded after the backup (else the witness would rightly object).
    assert (await chain_state(cluster.gateway_db, REQUESTER))[0] == head_at_backup

    # The provider comes back and answers while the requester is down: the answer is
    # sealed to the requester's pre-backup encryption key and waits at the hub.
    servers[PROVIDER] = await start_server(
        files, f"{PROVIDER}-2", "gateway", "serve", "--config", f"{PROVIDER}.toml"
    )

    async def provided() -> bool:
        conn = await asyncpg.connect(cluster.hub_db)
        try:
            outcome = await conn.fetchval(
                "SELECT outcome FROM hub_records WHERE query_id = $1", in_flight
            )
        finally:
            await conn.close()
        return bool(outcome == "provided")

    await until("the provider's answer to reach the hub", provided)

    # Restore into the new server, with a new key folder.
    owner_url = db.with_database(second_server, RESTORED_DATABASE)
    restore_args = backup_args(
        "--from",
        str(backup),
        "--database-url",
        owner_url,
        "--key-dir",
        f"restored-keys/{REQUESTER}",
        "--tenant-urls",
        "restored-urls",
    )
    code, output = await run_command(root, "restore", *restore_args)
    assert code == 0, output
    report = first_json(output)
    assert report["migrations"]["up_to_date"] is True
    assert report["keys_written"] == [f"{REQUESTER}.ring.json"]
    assert {t["tenant"]: t["login"] for t in report["tenants"]} == {
        PROVIDER: "new password",
        REQUESTER: "new password",
    }
    restored_ring = root / "restored-keys" / REQUESTER / f"{REQUESTER}.ring.json"
    original_ring = root / "keys" / REQUESTER / restored_ring.name
    assert restored_ring.read_bytes() == original_ring.read_bytes()
    assert restored_ring.stat().st_mode & 0o777 == 0o600
    tenant_url = (root / "restored-urls" / f"{REQUESTER}.url").read_text().strip()
    toml = restored_toml(files, tenant_url, owner_url)

    restored = await start_server(
        files, f"{REQUESTER}-restored", "gateway", "serve", "--config", toml.name
    )
    servers[f"{REQUESTER}-restored"] = restored
    events = restored.events()
    assert any(e.get("event") == "key_ring_loaded" for e in events)
    assert not any(e.get("event") == "key_ring_generated" for e in events)
    async with session(pki) as http:
        # The old answer reads as before.
        again = await result(http, restored.url, files, old)
        assert again["status"] == "answered" and again["result"] == old_answer["result"]
        # The answer sealed before the restore opens with the restored keys.
        delivered = await result(http, restored.url, files, in_flight)
        assert delivered["status"] == "answered", delivered
        assert delivered["result"].encode() == item
        # New queries go on through the restored gateway.
        new = await submit(http, restored.url, files, moved)
        fresh = await result(http, restored.url, files, new)
        assert fresh["status"] == "answered", fresh
        assert fresh["result"].encode() == item

    passphrase = (root / "secrets" / f"{REQUESTER}-passphrase").read_text().strip()
    os.environ["CHUKAN_KEY_PASSPHRASE"] = passphrase
    try:

        async def verified() -> dict[str, Any] | None:
            code, output = await run_command(
                root,
                "records",
                "verify",
                "--tenant",
                REQUESTER,
                "--database-url",
                owner_url,
                "--key-dir",
                f"restored-keys/{REQUESTER}",
                "--witness",
                "hub",
                "--config",
                toml.name,
                "--no-progress",
            )
            document = first_json(output)
            return document if code == 0 and document.get("ok") else None

        verification = await until("records verify to pass on the restored database", verified)
    finally:
        del os.environ["CHUKAN_KEY_PASSPHRASE"]
    assert verification["ok"] is True

    # A second restore into the now non-empty database is refused, nothing touched.
    code, output = await run_command(root, "restore", *restore_args)
    assert code == 2 and "restore_target_not_empty" in output, output


@pytest.fixture(scope="module")
async def provider_backup(cluster: Cluster) -> Path:
    """One backup (of kind copy) of the gateways' database, for the damage tests."""
    code, output = await run_command(
        cluster.files.root,
        "backup",
        *backup_args("--config", f"{PROVIDER}.toml", "--out", "copies", "--kind", "copy"),
    )
    assert code == 0, output
    return cluster.files.root / "copies" / str(first_json(output)["file"])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("flip", "backup_tampered"),
        ("cut", "backup_truncated"),
        ("drop_final", "backup_truncated"),
        ("header", "backup_tampered"),
        ("passphrase", "backup_passphrase_wrong"),
    ],
)
async def test_a_damaged_backup_is_refused_before_anything_is_restored(
    cluster: Cluster, provider_backup: Path, second_server: str, damage: str, expected: str
) -> None:
    files = cluster.files
    root = files.root
    backup = root / f"damaged-{damage}.chukanbk"
    data = bytearray(await asyncio.to_thread(provider_backup.read_bytes))
    passphrase_file = "secrets/backup-passphrase"
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "cut":
        del data[-1000:]
    elif damage == "drop_final":
        # Cut exactly at a chunk boundary: every chunk left authenticates, the final is gone.
        del data[_final_frame_offset(bytes(data)) :]
    elif damage == "header":
        data = bytearray(bytes(data).replace(b'"kind":"copy"', b'"kind":"cOpy"', 1))
    else:
        passphrase_file = files.secret("wrong-passphrase", "another-passphrase-" + "y" * 20)
    backup.write_bytes(bytes(data))
    database = f"restore_{damage}"
    code, output = await run_command(
        root,
        "restore",
        "--from",
        str(backup),
        "--database-url",
        db.with_database(second_server, database),
        "--key-dir",
        f"damaged-keys-{damage}",
        "--tenant-urls",
        f"damaged-urls-{damage}",
        "--passphrase-file",
        passphrase_file,
    )
    assert code == 2, output
    assert f"chukan restore: {expected}:" in output, output
    # Nothing was created: no database, no key folder, no tenant URLs.
    conn = await asyncpg.connect(second_server)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database) is None
    finally:
        await conn.close()
    assert not (root / f"damaged-keys-{damage}").exists()
    assert not (root / f"damaged-urls-{damage}").exists()


def _final_frame_offset(data: bytes) -> int:
    """Where the last frame (flag, length, ciphertext) of a backup starts."""
    from chukan.gateway.backup.stream import MAGIC

    offset = len(MAGIC)
    offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
    last = offset
    while offset < len(data):
        last = offset
        offset += 5 + int.from_bytes(data[offset + 1 : offset + 5], "big")
    assert offset == len(data)
    return last


def _fake_backup(folder: Path, name: str, kind: str, age_days: float, database: str) -> None:
    """A backup and its manifest, dated ``age_days`` ago (data, not waiting)."""
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.chukanbk").write_bytes(b"not opened by pruning")
    (folder / f"{name}.manifest.json").write_text(
        json.dumps(
            {
                "file": f"{name}.chukanbk",
                "kind": kind,
                "component": "gateway",
                "database": database,
                "created_at": created.isoformat(),
            }
        )
    )


async def test_retention_keeps_a_week_of_daily_and_three_weeks_of_copy_backups(
    cluster: Cluster,
) -> None:
    root = cluster.files.root
    folder = root / "retention"
    database = urlsplit(cluster.gateway_db).path.lstrip("/")
    ages = {
        "daily-1d": ("daily", 1),
        "daily-6d": ("daily", 6.9),
        "daily-8d": ("daily", 8),
        "daily-30d": ("daily", 30),
        "copy-6d": ("copy", 6),
        "copy-20d": ("copy", 20.9),
        "copy-22d": ("copy", 22),
        "copy-60d": ("copy", 60),
    }
    for name, (kind, age) in ages.items():
        _fake_backup(folder, name, kind, age, database)
    _fake_backup(folder, "other-database-daily-30d", "daily", 30, "another_database")
    (folder / "unmanaged.chukanbk").write_bytes(b"no manifest: never pruned on a guess")

    # A real daily backup prunes the expired daily ones, and only those.
    code, output = await run_command(
        root,
        "backup",
        *backup_args("--config", f"{PROVIDER}.toml", "--out", "retention", "--kind", "daily"),
    )
    assert code == 0, output
    written = first_json(output)
    assert sorted(written["pruned"]) == ["daily-30d.chukanbk", "daily-8d.chukanbk"]
    # Copies are pruned by their own (three-week) rule.
    code, output = await run_command(
        root,
        "backup",
        "--prune-only",
        "--kind",
        "copy",
        "--config",
        f"{PROVIDER}.toml",
        "--out",
        "retention",
    )
    assert code == 0, output
    assert sorted(first_json(output)["pruned"]) == ["copy-22d.chukanbk", "copy-60d.chukanbk"]
    left = sorted(p.name for p in folder.glob("*.chukanbk"))
    assert left == sorted(
        [
            "copy-20d.chukanbk",
            "copy-6d.chukanbk",
            "daily-1d.chukanbk",
            "daily-6d.chukanbk",
            "other-database-daily-30d.chukanbk",
            "unmanaged.chukanbk",
            written["file"],
        ]
    )
    assert not (folder / "daily-8d.manifest.json").exists()
