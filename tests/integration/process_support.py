"""Servers as their own OS processes, from the TOML files an operator writes (shared helpers).

:func:`write_network` writes a CA and PEM files, secret files (mode 0600) and one
TOML file per server; :func:`start_server` runs ``python -m chukan … serve`` with
its JSON events in a log file until it logs ``server_started``.  Used by
``test_server_processes`` and ``test_workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.config import (
    ADMIN_OPERATIONS,
    ALL_OPERATIONS,
    OP_PERSON_LIFECYCLE,
    token_digest,
)
from chukan.gateway.core.identities import HUB_IDENTITY, HUB_OPERATOR, agency_host
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.tls import TlsSettings
from chukan.keys import b64e
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS, NetworkPki
from chukan.simulators.devnet.ports import free_port
from chukan.simulators.hub.config import HUB_OWNER

#: Agencies of the server-process tests only: a tenant's login role is server-wide, and
#: provisioning it again (a new password) would cut off another test's gateway of the code.
PROVIDER: Final = "129911"
REQUESTER: Final = "129929"
AGENCIES: Final = ((PROVIDER, "試験市甲"), (REQUESTER, "試験市乙"))
#: The 介護保険システム's grants: not the operators', and not the lifecycle events only the
#: 団体内統合宛名システム reports (as ``default_systems`` in simulators/devnet/network.py).
CORE_OPERATIONS: Final = sorted(ALL_OPERATIONS - ADMIN_OPERATIONS - {OP_PERSON_LIFECYCLE})
START_PATIENCE: Final = 120.0  # a loaded 2-core machine imports slowly
STOP_PATIENCE: Final = 8.0


def list_csv(pairs: tuple[tuple[str, str], ...]) -> str:
    """A hub list (CSV) by which each (requester, provider) may ask for 要介護認定情報."""
    return (
        "requester,provider,business_code,procedure_code,item_code,legal_basis,"
        "valid_from,valid_to,note\n"
    ) + "".join(
        f"{a},{b},JM00000000000132,{catalog.LTC_CERTIFICATION_PROCEDURE},"
        f"{catalog.CERTIFICATION.code},132,2017-11-13,,試験\n"
        for a, b in pairs
    )


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


async def write_network(
    root: Path,
    server_url: str,
    prefix: str,
    *,
    provision: bool,
    agencies: tuple[tuple[str, str], ...] = AGENCIES,
    tag: str = "proc",
) -> Files:
    """The files of a hub, a 国保連 simulator and a gateway of each of ``agencies``.

    With ``provision`` the databases (named ``<prefix><tag>_…``) exist and the
    gateways' tenant logins are created; without, the URLs are placeholders (for
    files refused before use).  The first agency (the provider) is reached through a
    ``public_endpoint``.
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
        await db.ensure_database(server_url, f"{prefix}{tag}_hub") if provision else server_url
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
        await db.ensure_database(server_url, f"{prefix}{tag}_kokuhoren")
        if provision
        else server_url
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
        admin_url = await db.ensure_database(server_url, f"{prefix}{tag}_gateway")
        await db.migrate_url(admin_url, "chukan.gateway")
    owner_url, owner_password = without_password(admin_url)
    for code, name in agencies:
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
        if code == agencies[0][0]:
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


def session(pki: NetworkPki, identity: ClientIdentity | None = None) -> aiohttp.ClientSession:
    context = pki.anonymous_context() if identity is None else pki.client_context(identity)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def onboard_agencies(
    files: Files,
    hub: Server,
    authorization_csv: str,
    agencies: tuple[tuple[str, str], ...] = AGENCIES,
) -> None:
    """As the hub's operator: publish the authorization list, then hand each agency an
    enrolment token of its own (written to its secret file for its gateway's TOML)."""
    admin = {"Authorization": f"Bearer {files.tokens['hub_admin']}"}
    async with session(files.pki, HUB_OPERATOR) as http:
        async with http.post(
            hub.url + "/admin/v1/authorization-list",
            data=authorization_csv.encode(),
            headers={**admin, "Content-Type": "text/csv"},
        ) as response:
            assert response.status == 201, await response.text()
        for code, _ in agencies:
            async with http.post(
                f"{hub.url}/admin/v1/agencies/{code}/enrolment-token", headers=admin
            ) as response:
                assert response.status == 201, await response.text()
                files.secret(f"{code}-enrolment-token", (await response.json())["token"])
