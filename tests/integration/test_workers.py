"""Several worker processes of one agency behave as one (README "Several workers per agency").

Two ``chukan gateway serve`` processes of one agency (the requester) bind one port
with ``reuse_port = true``, share its database, key folder and ``public_endpoint``;
a hub process and a provider process complete the network.  Each request is
attributed to the worker that served it by its ``X-Request-Id`` in the workers'
access logs.  Shown here:

* the ring is created once though both workers start together;
* queries spread over both workers; one is killed with ``kill -9`` under load;
  every query is answered once and recorded identically by the requester, the
  hub and the provider (the fault suite's comparison: one record per party,
  the same outcome and the same permit id everywhere);
* a key reload on one worker is seen by the other (``/internal/v1/status``);
* a list the hub pushes to one worker is used by the other.

The periodic checks (``ring_check``, ``list_refresh``) are set far beyond the
test's length, so what reaches the other worker is the database notice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import pytest
from process_support import (
    CORE_OPERATIONS,
    Files,
    Server,
    list_csv,
    onboard_agencies,
    session,
    start_server,
    write_network,
)

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.cli.admin import tenant_connection
from chukan.gateway.core import db
from chukan.gateway.core.config import ADMIN_OPERATIONS, token_digest
from chukan.gateway.core.identities import HUB_OPERATOR, system_identity
from chukan.gateway.core.keyring import read_ring, ring_path, write_ring
from chukan.gateway.records.checkpoints import checkpoint_now
from chukan.keys import b64e
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.ports import free_port
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration

#: Codes of this test only (tenant login roles are server-wide).  The requester runs as
#: two workers, as 千葉市 would behind one address.
PROVIDER: Final = "129937"
REQUESTER: Final = "129945"
AGENCIES: Final = ((PROVIDER, "試験市丙"), (REQUESTER, "試験市丁"))
PAIRS: Final = ((REQUESTER, PROVIDER), (PROVIDER, REQUESTER))
WORKERS: Final = ("worker-a", "worker-b")
OPERATOR: Final = "operator"
PEOPLE: Final = 6
QUERIES: Final = 36
CONCURRENCY: Final = 6
SETTLE: Final = 90.0


@dataclass
class Cluster:
    files: Files
    servers: dict[str, Server]
    url: str  # the requester's one address (both workers)
    gateway_database: str
    hub_database: str
    operator_token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.files.tokens['hub_admin']}"}


def _requester_toml(text: str, port: int, operator_token: str) -> str:
    """Both workers: one port (SO_REUSEPORT), one public endpoint, an operator system."""
    server = '[server]\nhost = "127.0.0.1"\nport = 0\n'
    assert server in text
    text = text.replace(
        server,
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'public_endpoint = "https://localhost:{port}"\nreuse_port = true\n',
    )
    # The periodic fallbacks far away: what the other worker sees comes by notice.
    text = text.replace("[timing]\n", "[timing]\nlist_refresh = 3600\nring_check = 3600\n")
    return (
        text
        + f"""
[[systems]]
id = "{OPERATOR}"
operations = {json.dumps(sorted(ADMIN_OPERATIONS))}
token_sha256 = "{token_digest(operator_token)}"
"""
    )


@pytest.fixture(scope="module")
async def cluster(
    pg_server_url: str, db_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("workers")
    files = await write_network(
        root, pg_server_url, db_prefix, provision=True, agencies=AGENCIES, tag="workers"
    )
    port = free_port()
    operator_token = b64e(os.urandom(24))
    toml = files.tomls[REQUESTER]
    toml.write_text(
        _requester_toml(toml.read_text(encoding="utf-8"), port, operator_token), encoding="utf-8"
    )
    servers: dict[str, Server] = {}
    try:
        servers["hub"] = await start_server(
            files, "hub", "hub", "serve", "--config", "hub.toml", "--migrate"
        )
        await onboard_agencies(files, servers["hub"], list_csv(PAIRS), AGENCIES)
        servers[PROVIDER] = await start_server(
            files, PROVIDER, "gateway", "serve", "--config", f"{PROVIDER}.toml", "--migrate"
        )
        # Both workers start together on an empty key folder: one ring must come of it.
        started = await asyncio.gather(
            *(
                start_server(files, name, "gateway", "serve", "--config", f"{REQUESTER}.toml")
                for name in WORKERS
            )
        )
        servers.update(zip(WORKERS, started, strict=True))
        yield Cluster(
            files,
            servers,
            f"https://127.0.0.1:{port}",
            await db.ensure_database(pg_server_url, f"{db_prefix}workers_gateway"),
            await db.ensure_database(pg_server_url, f"{db_prefix}workers_hub"),
            operator_token,
        )
    finally:
        for server in servers.values():
            if server.process.returncode is None:
                server.process.kill()
                await server.process.wait()


# -- helpers ----------------------------------------------------------------------------------


def core_system(code: str) -> Any:
    return system_identity(code, CORE_SYSTEM, CORE_OPERATIONS)


#: Request ids of letters only: the logs redact runs of digits that look like a 個人番号.
LETTERS: Final = str.maketrans("0123456789", "ghijklmnop")


def request_tag() -> str:
    return uuid.uuid4().hex.translate(LETTERS)


def served_by(cluster: Cluster, request_id: str) -> str | None:
    """Which worker's access log holds ``request_id`` (None: not logged yet)."""
    for name in WORKERS:
        for event in cluster.servers[name].events():
            if event.get("event") == "http_request" and event.get("request_id") == request_id:
                return name
    return None


async def status_by_worker(cluster: Cluster, *, tries: int = 24) -> dict[str, list[dict[str, Any]]]:
    """``GET /internal/v1/status`` over fresh connections, by the worker that answered."""
    answers: list[tuple[str, dict[str, Any]]] = []
    headers = {"Authorization": f"Bearer {cluster.operator_token}"}
    for _ in range(tries):
        request_id = f"status-{request_tag()}"
        async with (
            session(cluster.files.pki) as http,  # a new connection: the kernel picks a worker
            http.get(
                cluster.url + "/internal/v1/status",
                headers={**headers, "X-Request-Id": request_id},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            answers.append((request_id, await response.json()))
    by_worker: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKERS}
    deadline = time.monotonic() + 10
    for request_id, body in answers:
        while (name := served_by(cluster, request_id)) is None:
            assert time.monotonic() < deadline, f"{request_id} in no worker's access log"
            await asyncio.sleep(0.1)
        by_worker[name].append(body)
    return by_worker


async def until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit:.0f} s: {what}")
        await asyncio.sleep(0.3)


async def enrol_people(cluster: Cluster, rng: random.Random, count: int = PEOPLE) -> list[str]:
    """People known to both agencies with an item at the provider; the requester's 宛名番号."""
    provider = cluster.servers[PROVIDER].url
    token = {"Authorization": f"Bearer {cluster.files.tokens[REQUESTER]}"}
    atena_ids: list[str] = []
    async with (
        session(cluster.files.pki, core_system(PROVIDER)) as there,
        session(cluster.files.pki) as here,
    ):
        for _ in range(count):
            person = synthetic_person(rng, "5")
            moved = SyntheticPerson(
                synthetic_person(rng, "6").atena_id,
                person.individual_number,
                person.kana_name,
                person.birth_year,
            )
            async with there.post(
                provider + "/internal/v1/persons",
                json={"atena_id": person.atena_id, "individual_number": person.individual_number},
            ) as response:
                assert response.status == 201, await response.text()
            async with there.put(
                f"{provider}/internal/v1/persons/{person.atena_id}/items/"
                f"{catalog.CERTIFICATION.code}",
                data=certification_item(rng, dt.date.today()),
                headers={"Content-Type": "application/xml"},
            ) as response:
                assert response.status == 201, await response.text()
            async with here.post(
                cluster.url + "/internal/v1/persons",
                json={"atena_id": moved.atena_id, "individual_number": moved.individual_number},
                headers=token,
            ) as response:
                assert response.status == 201, await response.text()
            atena_ids.append(moved.atena_id)
    return atena_ids


@dataclass
class Submitted:
    key: str
    query_id: str | None = None
    request_id: str | None = None  # of the attempt that was accepted
    attempts: int = 0


async def submit(cluster: Cluster, atena_id: str, item: Submitted) -> None:
    """One logical query, retried with its Idempotency-Key until accepted (a worker may die)."""
    headers = {
        "Authorization": f"Bearer {cluster.files.tokens[REQUESTER]}",
        "Idempotency-Key": item.key,
    }
    deadline = time.monotonic() + 60
    while True:
        item.attempts += 1
        request_id = f"submit-{request_tag()}"
        try:
            async with (
                session(cluster.files.pki) as http,
                http.post(
                    cluster.url + "/internal/v1/queries",
                    json={
                        "atena_id": atena_id,
                        "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                        "item_code": catalog.CERTIFICATION.code,
                        "provider": PROVIDER,
                    },
                    headers={**headers, "X-Request-Id": request_id},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response,
            ):
                body = await response.json(content_type=None)
                if response.status == 202:
                    item.query_id = body["query_id"]
                    item.request_id = request_id
                    return
                assert response.status >= 500, body  # only a passing failure is retried
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        assert time.monotonic() < deadline, f"query {item.key} never accepted"
        await asyncio.sleep(0.3)


async def hub_records(cluster: Cluster) -> list[dict[str, Any]]:
    async with (
        session(cluster.files.pki, HUB_OPERATOR) as http,
        http.get(cluster.servers["hub"].url + "/admin/v1/records", headers=cluster.admin) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        records: list[dict[str, Any]] = body["records"]
        return records


# -- tests ------------------------------------------------------------------------------------


async def test_the_workers_share_one_ring_created_once(cluster: Cluster) -> None:
    generated = [
        name
        for name in WORKERS
        if any(e.get("event") == "key_ring_generated" for e in cluster.servers[name].events())
    ]
    assert len(generated) == 1, generated
    ring_files = sorted((cluster.files.root / "keys" / REQUESTER).glob("*"))
    assert [p.name for p in ring_files] == [f"{REQUESTER}.ring.json"]  # no temporary left
    by_worker = await status_by_worker(cluster)
    assert all(by_worker.values()), {k: len(v) for k, v in by_worker.items()}  # both answer
    keys = {body["keys"]["signing_key"] for bodies in by_worker.values() for body in bodies}
    assert len(keys) == 1, keys
    # The hub routes to the one public endpoint, whichever worker enrolled last.
    hub = await asyncpg.connect(cluster.hub_database)
    try:
        endpoint = await hub.fetchval("SELECT endpoint FROM agencies WHERE code = $1", REQUESTER)
    finally:
        await hub.close()
    assert endpoint == cluster.url.replace("127.0.0.1", "localhost")


async def test_queries_spread_over_both_workers_and_survive_kill_9(cluster: Cluster) -> None:
    rng = random.Random("workers")
    people = await enrol_people(cluster, rng)
    items = [Submitted(str(uuid.uuid4())) for _ in range(QUERIES)]
    gate = asyncio.Semaphore(CONCURRENCY)
    victim = cluster.servers[WORKERS[0]]

    async def one(index: int, item: Submitted) -> None:
        async with gate:
            await submit(cluster, people[index % len(people)], item)

    tasks = [asyncio.create_task(one(i, item)) for i, item in enumerate(items)]
    # Under load: once a third is accepted, one worker dies without a word.
    await until(
        lambda: _true(sum(1 for i in items if i.query_id) >= QUERIES // 3), 60, "a third accepted"
    )
    victim.process.send_signal(signal.SIGKILL)
    await victim.process.wait()
    await asyncio.gather(*tasks)

    ids = [i.query_id for i in items if i.query_id is not None]
    assert len(ids) == QUERIES and len(set(ids)) == QUERIES
    workers = {served_by(cluster, i.request_id) for i in items if i.request_id}
    assert set(WORKERS) <= workers, workers  # both took queries

    conn = await asyncpg.connect(cluster.gateway_database)
    try:

        async def all_final() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM queries WHERE tenant = $1 AND query_id = ANY($2::text[]) "
                "AND status IN ('answered', 'refused', 'failed')",
                REQUESTER,
                ids,
            )
            return bool(n == QUERIES)

        await until(all_final, SETTLE, "every query final at the requester")
        states = await conn.fetch(
            "SELECT query_id, status FROM queries WHERE tenant = $1 AND query_id = ANY($2::text[])",
            REQUESTER,
            ids,
        )
        records = await conn.fetch(
            "SELECT tenant, role, query_id, outcome, permit_id FROM provision_records "
            "WHERE query_id = ANY($1::text[])",
            ids,
        )
        keyed = await conn.fetch(
            "SELECT idempotency_key, count(*) AS n FROM queries WHERE tenant = $1 "
            "AND idempotency_key = ANY($2::text[]) GROUP BY 1",
            REQUESTER,
            [i.key for i in items],
        )
    finally:
        await conn.close()
    assert {r["status"] for r in states} == {"answered"}, [dict(r) for r in states]
    assert all(r["n"] == 1 for r in keyed) and len(keyed) == QUERIES
    hub = [r for r in await hub_records(cluster) if r["query_id"] in set(ids)]
    problems: list[str] = []
    for query_id in ids:
        mine = [r for r in records if r["query_id"] == query_id]
        requester = [r for r in mine if r["role"] == "requester"]
        provider = [r for r in mine if r["role"] != "requester"]
        at_hub = [r for r in hub if r["query_id"] == query_id]
        counts = (len(requester), len(at_hub), len(provider))
        everywhere: list[Any] = [*requester, *at_hub, *provider]
        outcomes = {r["outcome"] for r in everywhere}
        permits = {r["permit_id"] for r in everywhere}
        tenants = {(r["role"] == "requester", r["tenant"]) for r in mine}
        if (
            counts != (1, 1, 1)
            or outcomes != {"provided"}
            or len(permits) != 1
            or tenants != {(True, REQUESTER), (False, PROVIDER)}
        ):
            problems.append(f"{query_id}: records {counts} {outcomes} {permits} {tenants}")
    assert not problems, "\n".join(problems)
    # The survivor keeps serving; the dead one left nothing the survivor did not finish.
    by_worker = await status_by_worker(cluster, tries=3)
    assert len(by_worker[WORKERS[1]]) == 3


async def test_a_key_reload_on_one_worker_reaches_the_other(cluster: Cluster) -> None:
    survivor = cluster.servers[WORKERS[1]]
    # The killed worker comes back; then the ring is rotated on disk and reloaded once.
    restarted = await start_server(  # a log of its own: it waits for this run's start
        cluster.files, f"{WORKERS[0]}-again", "gateway", "serve", "--config", f"{REQUESTER}.toml"
    )
    cluster.servers[WORKERS[0]] = restarted
    key_dir = cluster.files.root / "keys" / REQUESTER
    passphrase = (
        (cluster.files.root / "secrets" / f"{REQUESTER}-passphrase").read_text().strip().encode()
    )
    path = ring_path(key_dir, REQUESTER)
    ring = read_ring(path, passphrase, owner=REQUESTER)
    now = dt.datetime.now(dt.UTC)
    rotated = ring.rotate(now)
    write_ring(path, rotated, passphrase)
    new_key = rotated.current_signing(now).key_id
    assert new_key != ring.current_signing(now).key_id
    request_id = f"reload-{request_tag()}"
    async with (
        session(cluster.files.pki) as http,
        http.post(
            cluster.url + "/internal/v1/keys/reload",
            headers={
                "Authorization": f"Bearer {cluster.operator_token}",
                "X-Request-Id": request_id,
            },
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert (await response.json())["signing_key"] == new_key
    await until(lambda: _true(served_by(cluster, request_id) is not None), 10, "reload logged")
    reloaded_by = served_by(cluster, request_id)
    other = WORKERS[1] if reloaded_by == WORKERS[0] else WORKERS[0]

    async def both_use_the_new_key() -> bool:
        by_worker = await status_by_worker(cluster, tries=8)
        seen = {
            name: {body["keys"]["signing_key"] for body in bodies}
            for name, bodies in by_worker.items()
        }
        return all(keys == {new_key} for keys in seen.values() if keys) and all(seen.values())

    await until(both_use_the_new_key, 30, "the new key at both workers")
    taken_up = [e for e in cluster.servers[other].events() if e.get("event") == "key_ring_taken_up"]
    assert taken_up and taken_up[-1]["reason"] == "reload notice", taken_up
    assert survivor.process.returncode is None


async def test_a_list_pushed_to_one_worker_is_used_by_the_other(cluster: Cluster) -> None:
    async with (
        session(cluster.files.pki, HUB_OPERATOR) as http,
        http.post(
            cluster.servers["hub"].url + "/admin/v1/authorization-list",
            data=list_csv(PAIRS).encode(),
            headers={**cluster.admin, "Content-Type": "text/csv"},
        ) as response,
    ):
        published = await response.json()
        assert response.status == 201, published
    # Pushed to the public endpoint: one worker received it.
    assert published["pushed"][REQUESTER] == "accepted", published
    version = published["version"]

    async def both_hold_it() -> bool:
        by_worker = await status_by_worker(cluster, tries=8)
        versions = {
            name: {body["authorization_list"]["version"] for body in bodies}
            for name, bodies in by_worker.items()
        }
        return all(versions.values()) and all(v == {version} for v in versions.values())

    await until(both_hold_it, 30, f"list version {version} at both workers")
    restored = [
        e
        for name in WORKERS
        for e in cluster.servers[name].events()
        if e.get("event") == "authorization_list_restored" and e.get("source") == "notice"
    ]
    assert any(e["version"] == version for e in restored), restored
    digest = published["digest"]
    assert len(digest) == len(hashlib.sha256().hexdigest())


async def test_a_list_published_by_one_hub_process_is_served_by_another(
    cluster: Cluster,
) -> None:
    hub_toml = cluster.files.tomls["hub"]
    text = hub_toml.read_text(encoding="utf-8")
    second = cluster.files.write(
        "hub-second", re.sub(r"(?m)^port = \d+$", "port = 0", text, count=1)
    )
    hub2 = await start_server(cluster.files, "hub-second", "hub", "serve", "--config", second.name)
    cluster.servers["hub-second"] = hub2
    async with (
        session(cluster.files.pki, HUB_OPERATOR) as http,
        http.post(
            cluster.servers["hub"].url + "/admin/v1/authorization-list",
            data=list_csv(PAIRS).encode(),
            headers={**cluster.admin, "Content-Type": "text/csv"},
        ) as response,
    ):
        published = await response.json()
        assert response.status == 201, published

    async def served_by_the_second() -> bool:
        async with (
            session(cluster.files.pki, ClientIdentity("agency", PROVIDER)) as http,
            http.get(hub2.url + "/network/v1/authorization-list") as response,
        ):
            assert response.status == 200, await response.text()
            digest = hashlib.sha256(await response.read()).hexdigest()
            return bool(digest == published["digest"])

    await until(served_by_the_second, 15, "the new version served by the second hub process")
    taken = [e for e in hub2.events() if e.get("event") == "authorization_list_taken_up"]
    assert taken and taken[-1]["source"] == "notice", taken
    code, _ = await hub2.stop()
    assert code == 0


async def test_the_record_chain_verifies_after_two_workers_signed(cluster: Cluster) -> None:
    """Two checkpoints of one head signed at once (two workers' checkpointers) break nothing."""
    passphrase = (cluster.files.root / "secrets" / f"{REQUESTER}-passphrase").read_text().strip()
    # New records after the last checkpoint: one more query, answered.
    atena = (await enrol_people(cluster, random.Random("workers-checkpoint"), 1))[0]
    item = Submitted(str(uuid.uuid4()))
    await submit(cluster, atena, item)
    conn = await tenant_connection(cluster.gateway_database, REQUESTER)
    other = await tenant_connection(cluster.gateway_database, REQUESTER)
    try:

        async def answered() -> bool:
            status = await conn.fetchval(
                "SELECT status FROM queries WHERE query_id = $1", item.query_id
            )
            return bool(status == "answered")

        await until(answered, SETTLE, "the query answered")
        ring = read_ring(
            ring_path(cluster.files.root / "keys" / REQUESTER, REQUESTER),
            passphrase.encode(),
            owner=REQUESTER,
        )
        signer = ring.current_signing(dt.datetime.now(dt.UTC))
        made = await asyncio.gather(
            checkpoint_now(conn, REQUESTER, signer), checkpoint_now(other, REQUESTER, signer)
        )
        signed = [c for c in made if c is not None]
        assert signed, made  # at least one signed the new head; a second one is dropped
        assert len({c.seq for c in signed}) == len(signed)
    finally:
        await conn.close()
        await other.close()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chukan",
        "records",
        "verify",
        "--database-url",
        cluster.gateway_database,
        "--tenant",
        REQUESTER,
        "--key-dir",
        str(cluster.files.root / "keys" / REQUESTER),
        "--actor",
        "workers-test",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CHUKAN_KEY_PASSPHRASE": passphrase},
        cwd=Path(cluster.files.root),
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode()


async def _true(value: bool) -> bool:
    return value
