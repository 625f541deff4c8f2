"""Each server as its own OS process, from a TOML file: ``chukan hub|gateway|kokuhoren serve``.

The test writes what an operator would: a CA and PEM files, secret files
(mode 0600), one TOML file per server; then starts ``python -m chukan … serve``
processes against the session's PostgreSQL and talks to them over mutual TLS
only.  A query flows from one agency's gateway process through the hub process to
another's; SIGTERM stops each process with exit status 0, answering a long-poll
that was in flight; misconfigurations are refused before anything starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest
from process_support import (
    AGENCIES,
    CORE_OPERATIONS,
    PROVIDER,
    REQUESTER,
    STOP_PATIENCE,
    Files,
    Server,
    list_csv,
    onboard_agencies,
    run_command,
    session,
    start_server,
    write_network,
)

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core import db
from chukan.gateway.core.identities import (
    system_identity,
)
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.synthetic import synthetic_person

pytestmark = pytest.mark.integration

#: The hub's list for this test: each agency may ask the other for 要介護認定情報.
LIST_CSV: Final = list_csv(((REQUESTER, PROVIDER), (PROVIDER, REQUESTER)))


@dataclass
class Cluster:
    files: Files
    servers: dict[str, Server]
    before: set[Path]
    hub_database: str


@pytest.fixture(scope="module")
async def cluster(
    pg_server_url: str, db_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("servers")
    files = await write_network(root, pg_server_url, db_prefix, provision=True)
    before = {p for p in root.rglob("*") if p.is_file()}
    os.environ["TEST_KOKUHOREN_ADMIN_TOKEN"] = "kokuhoren-admin-token"
    servers: dict[str, Server] = {}
    try:
        for name in ("hub", "kokuhoren"):
            servers[name] = await start_server(
                files, name, name, "serve", "--config", f"{name}.toml", "--migrate"
            )
        # Each agency enrols with a token of its own, handed over by the hub's operator.
        await onboard_agencies(files, servers["hub"], LIST_CSV)
        before = {p for p in root.rglob("*") if p.is_file()}
        for code, _ in AGENCIES:
            servers[code] = await start_server(
                files, code, "gateway", "serve", "--config", f"{code}.toml", "--migrate"
            )
        hub_database = await db.ensure_database(pg_server_url, f"{db_prefix}proc_hub")
        yield Cluster(files, servers, before, hub_database)
    finally:
        del os.environ["TEST_KOKUHOREN_ADMIN_TOKEN"]
        for server in servers.values():
            if server.process.returncode is None:
                server.process.kill()
                await server.process.wait()


def core_system(code: str) -> ClientIdentity:
    return system_identity(code, CORE_SYSTEM, CORE_OPERATIONS)


async def test_each_server_runs_as_its_own_process_and_answers(cluster: Cluster) -> None:
    servers, pki = cluster.servers, cluster.files.pki
    pids = {server.process.pid for server in servers.values()}
    assert len(pids) == 4 and os.getpid() not in pids
    for server in servers.values():
        started = [e for e in server.events() if e["event"] == "server_started"]
        assert started[0]["url"].startswith("https://127.0.0.1:")
        assert started[0]["pid"] == server.process.pid
    async with session(pki) as http:
        for name in (PROVIDER, REQUESTER, "kokuhoren"):
            async with http.get(servers[name].url + "/health") as response:
                assert response.status == 200, (name, await response.text())
    # The hub serves the key the agencies pinned in their files.
    async with (
        session(pki, ClientIdentity("agency", PROVIDER)) as http,
        http.get(servers["hub"].url + "/network/v1/hub-key") as response,
    ):
        assert response.status == 200
        assert f'"{(await response.json())["key_id"]}=' in cluster.files.tomls[PROVIDER].read_text(
            encoding="utf-8"
        )
    # The requester enrolled its socket's URL; the provider its configured public endpoint.
    hub = await asyncpg.connect(cluster.hub_database)
    try:
        rows = await hub.fetch("SELECT code, endpoint FROM agencies")
        endpoints = {row["code"]: row["endpoint"] for row in rows}
    finally:
        await hub.close()
    assert endpoints[REQUESTER] == servers[REQUESTER].url
    assert endpoints[PROVIDER] == cluster.files.tokens["provider_endpoint"]
    assert endpoints[PROVIDER] != servers[PROVIDER].url


async def test_a_query_flows_between_two_gateway_processes_through_the_hub_process(
    cluster: Cluster,
) -> None:
    servers, pki = cluster.servers, cluster.files.pki
    rng = random.Random("server-processes")
    person = synthetic_person(rng, "5")
    moved = synthetic_person(rng, "6").atena_id
    item = certification_item(rng, dt.date.today())
    chiba, funabashi = servers[PROVIDER].url, servers[REQUESTER].url
    async with session(pki, core_system(PROVIDER)) as http:
        async with http.post(
            chiba + "/internal/v1/persons",
            json={"atena_id": person.atena_id, "individual_number": person.individual_number},
        ) as response:
            assert response.status == 201, await response.text()
        async with http.put(
            f"{chiba}/internal/v1/persons/{person.atena_id}/items/{catalog.CERTIFICATION.code}",
            data=item,
            headers={"Content-Type": "application/xml"},
        ) as response:
            assert response.status == 201, await response.text()
    # The requester's core system calls with its bearer token (no certificate of its own).
    auth = {"Authorization": f"Bearer {cluster.files.tokens[REQUESTER]}"}
    async with session(pki) as http:
        async with http.post(
            funabashi + "/internal/v1/persons",
            json={"atena_id": moved, "individual_number": person.individual_number},
            headers=auth,
        ) as response:
            assert response.status == 201, await response.text()
        async with http.post(
            funabashi + "/internal/v1/queries",
            json={
                "atena_id": moved,
                "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                "item_code": catalog.CERTIFICATION.code,
                "provider": PROVIDER,
            },
            headers=auth,
        ) as response:
            assert response.status == 202, await response.text()
            query_id = (await response.json())["query_id"]
        async with http.get(
            f"{funabashi}/internal/v1/queries/{query_id}?wait=30", headers=auth
        ) as response:
            result = await response.json()
    assert result["status"] == "answered", result
    assert result["result"].encode() == item


async def test_sigterm_stops_each_process_gracefully(cluster: Cluster) -> None:
    servers, pki = cluster.servers, cluster.files.pki
    rng = random.Random("server-processes-stop")
    person = synthetic_person(rng, "6")
    async with (
        session(pki, core_system(PROVIDER)) as http,
        http.post(
            servers[PROVIDER].url + "/internal/v1/persons",
            json={
                "atena_id": synthetic_person(rng, "5").atena_id,
                "individual_number": person.individual_number,
            },
        ) as response,
    ):
        assert response.status == 201, await response.text()
    # The provider stops: a query to it then stays open at the requester.
    code, took = await servers[PROVIDER].stop()
    assert code == 0, servers[PROVIDER].tail()
    assert took < STOP_PATIENCE
    funabashi = servers[REQUESTER]
    auth = {"Authorization": f"Bearer {cluster.files.tokens[REQUESTER]}"}
    async with session(pki) as http:
        async with http.post(
            funabashi.url + "/internal/v1/persons",
            json={"atena_id": person.atena_id, "individual_number": person.individual_number},
            headers=auth,
        ) as response:
            assert response.status == 201, await response.text()
        async with http.post(
            funabashi.url + "/internal/v1/queries",
            json={
                "atena_id": person.atena_id,
                "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                "item_code": catalog.CERTIFICATION.code,
                "provider": PROVIDER,
            },
            headers=auth,
        ) as response:
            assert response.status == 202, await response.text()
            query_id = (await response.json())["query_id"]

        async def long_poll() -> tuple[int, dict[str, Any], float]:
            started = time.monotonic()
            async with http.get(
                f"{funabashi.url}/internal/v1/queries/{query_id}?wait=30", headers=auth
            ) as response:
                return response.status, await response.json(), time.monotonic() - started

        polling = asyncio.create_task(long_poll())
        await asyncio.sleep(1.0)  # the long-poll is waiting inside the server
        assert not polling.done(), polling.result()
        code, took = await funabashi.stop()
        status, body, waited = await polling
    # The long-poll was answered (the query as it stands), not cut off; the exit was clean.
    assert status == 200 and body["query_id"] == query_id
    assert body["status"] not in ("answered", "refused")
    assert waited < 10
    assert code == 0, funabashi.tail()
    assert took < 5
    events = [e["event"] for e in funabashi.events()]
    assert events.index("server_stopping") < events.index("server_stopped")
    for name in ("hub", "kokuhoren"):
        code, took = await servers[name].stop(signal.SIGINT if name == "hub" else signal.SIGTERM)
        assert code == 0, servers[name].tail()
        assert took < 5
    # Nothing is left behind but the configured folders (keys) and the logs we asked for.
    after = {p for p in cluster.files.root.rglob("*") if p.is_file()}
    new = {p.relative_to(cluster.files.root).parts[0] for p in after - cluster.before}
    assert new <= {"keys", "logs"}, after - cluster.before


async def test_misconfigurations_are_refused_before_anything_starts(
    tmp_path: Path, pg_server_url: str, db_prefix: str
) -> None:
    files = await write_network(tmp_path, pg_server_url, db_prefix, provision=False)
    files.secret(f"{PROVIDER}-enrolment-token", "issued-by-the-hub-operator")
    gateway = files.tomls[PROVIDER]
    text = gateway.read_text(encoding="utf-8")
    inline = tmp_path / "inline.toml"
    inline.write_text(
        text.replace('passphrase_file = "secrets/', 'passphrase = "oops"\n# "'), encoding="utf-8"
    )
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(text.replace("[server]\n", "[server]\nprot = 1\n"), encoding="utf-8")
    exposed = tmp_path / "exposed.toml"
    exposed.write_text(
        text.replace(f"secrets/{PROVIDER}-passphrase", files.secret("exposed", "a" * 32)),
        encoding="utf-8",
    )
    (tmp_path / "secrets" / "exposed").chmod(0o644)
    runs = await asyncio.gather(
        run_command(tmp_path, "gateway", "serve", "--config", inline.name),
        run_command(tmp_path, "gateway", "serve", "--config", unknown.name),
        run_command(tmp_path, "gateway", "serve", "--config", exposed.name),
        run_command(tmp_path, "hub", "serve", "--config", "hub.toml", "--log-level", "LOUD"),
        run_command(tmp_path, "--log-level", "verbose", "kokuhoren", "serve", "--config", "x"),
    )
    (code, out), (code2, out2), (code3, out3), (code4, out4), (code5, out5) = runs
    assert code == 2 and "[keys] passphrase: secrets are never written" in out, out
    assert "oops" not in out
    assert code2 == 2 and "[server]: unknown key prot" in out2, out2
    assert code3 == 2 and "[keys] passphrase_file" in out3 and "chmod 600" in out3, out3
    assert code4 == 2 and "invalid choice: 'LOUD'" in out4, out4
    assert code5 == 2 and "invalid choice: 'VERBOSE'" in out5, out5
    for output, path in ((out, inline), (out2, unknown), (out3, exposed)):
        assert f"chukan gateway serve: {path.name}: [" in output  # file, table, key
    assert not (tmp_path / "keys" / PROVIDER).exists()  # nothing started
