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
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core import db
from chukan.gateway.core.config import ADMIN_OPERATIONS, ALL_OPERATIONS, token_digest
from chukan.gateway.core.identities import (
    HUB_IDENTITY,
    HUB_OPERATOR,
    agency_host,
    system_identity,
)
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.tls import TlsSettings
from chukan.keys import b64e
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS, NetworkPki
from chukan.simulators.devnet.synthetic import synthetic_person
from chukan.simulators.hub.config import HUB_OWNER

pytestmark = pytest.mark.integration

#: Agencies of this test only: a tenant's login role is server-wide, and provisioning it
#: again (a new password) would cut off another test's gateway of the same code.
PROVIDER: Final = "129911"
REQUESTER: Final = "129929"
AGENCIES: Final = ((PROVIDER, "試験市甲"), (REQUESTER, "試験市乙"))
#: The hub's list for this test: each agency may ask the other for 要介護認定情報.
LIST_CSV: Final = (
    "requester,provider,business_code,procedure_code,item_code,legal_basis,"
    "valid_from,valid_to,note\n"
) + "".join(
    f"{a},{b},JM00000000000132,{catalog.LTC_CERTIFICATION_PROCEDURE},"
    f"{catalog.CERTIFICATION.code},132,2017-11-13,,試験\n"
    for a, b in ((REQUESTER, PROVIDER), (PROVIDER, REQUESTER))
)
CORE_OPERATIONS: Final = sorted(ALL_OPERATIONS - ADMIN_OPERATIONS)
START_PATIENCE: Final = 120.0  # a loaded 2-core machine imports slowly
STOP_PATIENCE: Final = 8.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def without_password(url: str) -> tuple[str, str | None]:
    """The URL with its password taken out (the file gets the password on its own)."""
    parts = urlsplit(url)
    if not parts.password:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, f"{parts.username}@{host}", parts.path, parts.query, ""))
    return bare, parts.password


@dataclass
class Files:
    """One folder of an operator's files for the whole network."""

    root: Path
    pki: NetworkPki
    tokens: dict[str, str] = field(default_factory=dict)
    tomls: dict[str, Path] = field(default_factory=dict)

    def secret(self, name: str, value: str) -> str:
        path = self.root / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return f"secrets/{name}"

    def tls_table(self, name: str, settings: TlsSettings, *, client: bool = True) -> str:
        folder = self.root / "tls" / name
        folder.mkdir(parents=True, exist_ok=True)
        (self.root / "tls" / "ca.pem").write_bytes(settings.ca_pem)
        (folder / "server.crt").write_bytes(settings.server_cert_pem)
        write_private(folder / "server.key", settings.server_key_pem)
        lines = [
            "[tls]",
            'ca_file = "tls/ca.pem"',
            f'server_cert_file = "tls/{name}/server.crt"',
            f'server_key_file = "tls/{name}/server.key"',
        ]
        if client:
            (folder / "client.crt").write_bytes(settings.client_cert_pem)
            write_private(folder / "client.key", settings.client_key_pem)
            lines += [
                f'client_cert_file = "tls/{name}/client.crt"',
                f'client_key_file = "tls/{name}/client.key"',
            ]
        return "\n".join(lines)

    def write(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        self.tomls[name] = path
        return path


@dataclass
class Server:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    url: str = ""

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def tail(self) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8").splitlines()[-30:])

    async def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``signum``; the exit status and how long the process took to end."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = await asyncio.wait_for(self.process.wait(), STOP_PATIENCE)
        return code, time.monotonic() - started


async def start_server(files: Files, name: str, *args: str) -> Server:
    """``python -m chukan <args>``, its stderr (JSON events) in a log file, until it serves."""
    log = files.root / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chukan",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
            cwd=files.root,
        )
    server = Server(name, process, log)
    deadline = time.monotonic() + START_PATIENCE
    while time.monotonic() < deadline:
        started = [e for e in server.events() if e.get("event") == "server_started"]
        if started:
            server.url = started[0]["url"]
            return server
        if process.returncode is not None:
            break
        await asyncio.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
    raise AssertionError(f"{name} did not start (exit {process.returncode}):\n{server.tail()}")


async def run_command(cwd: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chukan",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), START_PATIENCE)
    assert process.returncode is not None
    return process.returncode, (out + err).decode("utf-8", errors="replace")


async def write_network(root: Path, server_url: str, prefix: str, *, provision: bool) -> Files:
    """The files of a hub, a 国保連 simulator and two gateways.

    With ``provision`` the databases exist and the gateways' tenant logins are
    created; without, the URLs are placeholders (for files refused before use).
    """
    files = Files(root, NetworkPki.create())
    hub_port = free_port()
    hub_url = f"https://127.0.0.1:{hub_port}"

    # The hub: its keys exist before it starts, so the agencies can pin its signing key.
    hub_passphrase = b64e(os.urandom(24))
    hub_keys = load_or_create_keys(root / "keys" / "hub", HUB_OWNER, hub_passphrase.encode())
    hub_key = hub_keys.signing.public
    admin_token = b64e(os.urandom(24))
    files.tokens["hub_admin"] = admin_token
    hub_db, hub_password = without_password(
        await db.ensure_database(server_url, f"{prefix}proc_hub") if provision else server_url
    )
    files.write(
        "hub",
        f"""[server]
host = "127.0.0.1"
port = {hub_port}

[database]
url = "{hub_db}"
{f'password_file = "{files.secret("hub-db", hub_password)}"' if hub_password else ""}

[keys]
dir = "keys/hub"
passphrase_file = "{files.secret("hub-passphrase", hub_passphrase)}"

[admin]
token_file = "{files.secret("hub-admin-token", admin_token)}"

[timing]
delivery_backoff = 0.2
delivery_max_backoff = 1

{files.tls_table("hub", files.pki.settings("hub", HUB_IDENTITY))}
""",
    )

    kokuhoren_passphrase = b64e(os.urandom(24))
    kokuhoren_db, kokuhoren_password = without_password(
        await db.ensure_database(server_url, f"{prefix}proc_kokuhoren") if provision else server_url
    )
    files.write(
        "kokuhoren",
        f"""[server]
port = 0

[database]
url = "{kokuhoren_db}"
{f'password_file = "{files.secret("k-db", kokuhoren_password)}"' if kokuhoren_password else ""}

[keys]
dir = "keys/kokuhoren"
passphrase_file = "{files.secret("kokuhoren-passphrase", kokuhoren_passphrase)}"

[admin]
token_env = "TEST_KOKUHOREN_ADMIN_TOKEN"

[mailbox]
require_client_certificate = true

{files.tls_table("kokuhoren", files.pki.settings("kokuhoren", HUB_IDENTITY), client=False)}
""",
    )

    # The gateways: one database, a tenant login each, their own key passphrase.
    admin_url = server_url
    if provision:
        admin_url = await db.ensure_database(server_url, f"{prefix}proc_gateway")
        await db.migrate_url(admin_url, "chukan.gateway")
    owner_url, owner_password = without_password(admin_url)
    for code, name in AGENCIES:
        tenant_url, tenant_password = without_password(
            await db.provision_tenant(admin_url, code, name)
            if provision
            else db.with_credentials(server_url, db.tenant_role(code), "placeholder")
        )
        assert tenant_password is not None
        token = b64e(os.urandom(24))
        files.tokens[code] = token
        tls = files.pki.settings(
            code, ClientIdentity("agency", code), (*LOOPBACK_HOSTS, agency_host(code))
        )
        # The provider is reached through a public endpoint: another spelling of its socket.
        server_extra = "port = 0"
        if code == PROVIDER:
            port = free_port()
            files.tokens["provider_endpoint"] = f"https://localhost:{port}"
            server_extra = f'port = {port}\npublic_endpoint = "https://localhost:{port}"'
        owner_secret = (
            f'password_file = "{files.secret(f"{code}-owner", owner_password)}"'
            if owner_password
            else ""
        )
        files.write(
            code,
            f"""[agency]
code = "{code}"
name = "{name}"

[server]
host = "127.0.0.1"
{server_extra}

[database]
url = "{tenant_url}"
password_file = "{files.secret(f"{code}-db", tenant_password)}"

[database.migration]
url = "{owner_url}"
{owner_secret}

[keys]
dir = "keys/{code}"
passphrase_file = "{files.secret(f"{code}-passphrase", b64e(os.urandom(24)))}"

[hub]
url = "{hub_url}"
signing_key = "{hub_key.key_id}={b64e(hub_key.raw)}"
enrolment_token_file = "secrets/{code}-enrolment-token"

[[systems]]
id = "{CORE_SYSTEM}"
operations = {json.dumps(CORE_OPERATIONS)}
token_sha256 = "{token_digest(token)}"

[timing]
sweep_interval = 0.2
send_backoff = 0.2
max_backoff = 1

{files.tls_table(code, tls)}
""",
        )
    return files


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
        admin = {"Authorization": f"Bearer {files.tokens['hub_admin']}"}
        async with session(files.pki, HUB_OPERATOR) as http:
            async with http.post(
                servers["hub"].url + "/admin/v1/authorization-list",
                data=LIST_CSV.encode(),
                headers={**admin, "Content-Type": "text/csv"},
            ) as response:
                assert response.status == 201, await response.text()
            # Each agency enrols with a token of its own, handed over by the hub's operator.
            for code, _ in AGENCIES:
                async with http.post(
                    f"{servers['hub'].url}/admin/v1/agencies/{code}/enrolment-token",
                    headers=admin,
                ) as response:
                    assert response.status == 201, await response.text()
                    files.secret(f"{code}-enrolment-token", (await response.json())["token"])
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


def session(pki: NetworkPki, identity: ClientIdentity | None = None) -> aiohttp.ClientSession:
    context = pki.anonymous_context() if identity is None else pki.client_context(identity)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


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
