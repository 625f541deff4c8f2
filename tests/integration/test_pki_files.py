"""The PKI on disk: ``chukan pki`` as an operator runs it, and real servers started from its files.

Issuing happens once, in subprocesses (``python -m chukan pki ...``); the hub is
then started twice from the same files and presents the same certificate both
times; the calls that get through are exactly the ones the identities allow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import secrets
import ssl
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.gateway.core import db
from chukan.gateway.core.config import OP_READ_RECORDS
from chukan.gateway.core.identities import HUB_IDENTITY, agency_host
from chukan.gateway.core.tls import (
    TlsSettings,
    client_context_from_files,
    identity_label,
    peer_identity,
)
from chukan.gateway.serve import RunningServer, serve
from chukan.keys.ca import CertificateAuthority, certificate_fingerprint
from chukan.keys.tls import client_context
from chukan.simulators.hub import HubConfig, create_hub_app

pytestmark = pytest.mark.integration

CA_PASSPHRASE_ENV = "TEST_PKI_CA_PASSPHRASE"
SYSTEM = "kaigo-system"


@dataclass(frozen=True)
class Pki:
    directory: Path
    key_passphrase: bytes
    #: What ``pki issue`` printed for each kind.
    issued: dict[str, dict[str, Any]]
    #: Every file's bytes right after issuing (to show nothing is rewritten later).
    snapshot: dict[str, bytes]

    def path(self, name: str) -> Path:
        return self.directory / name

    def client(self, name: str) -> ssl.SSLContext:
        return client_context_from_files(
            self.path("ca.pem"),
            self.path(f"{name}.client.pem"),
            self.path(f"{name}.client.key.pem"),
            key_passphrase=self.key_passphrase,
        )

    def settings(self, name: str) -> TlsSettings:
        return TlsSettings.from_files(
            self.path("ca.pem"),
            self.path(f"{name}.server.pem"),
            self.path(f"{name}.server.key.pem"),
            self.path(f"{name}.client.pem"),
            self.path(f"{name}.client.key.pem"),
            key_passphrase=self.key_passphrase,
        )


def _chukan(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- our own interpreter and module
        [sys.executable, "-m", "chukan", "pki", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """``pki init`` and one ``pki issue`` per kind, run once as an operator would."""
    base = tmp_path_factory.mktemp("pki-files")
    directory = base / "pki"
    key_passphrase = secrets.token_urlsafe(24).encode()
    passphrase_file = base / "key-passphrase"
    passphrase_file.write_bytes(key_passphrase + b"\n")
    passphrase_file.chmod(0o600)
    env = {**os.environ, CA_PASSPHRASE_ENV: secrets.token_urlsafe(24)}
    ca_options = ("--dir", str(directory), "--passphrase-env", CA_PASSPHRASE_ENV)
    init = _chukan(env, "init", *ca_options, "--days", "30")
    assert init.returncode == 0, init.stderr
    key_options = ("--key-passphrase-file", str(passphrase_file))
    kinds = {
        "hub": ("--kind", "hub", "--host", "127.0.0.1", "--host", "localhost"),
        "agency": ("--kind", "agency", "--agency", CHIBA_CITY, "--host", "127.0.0.1"),
        "system": (
            "--kind", "system", "--agency", CHIBA_CITY, "--system-id", SYSTEM,
            "--operation", OP_READ_RECORDS,
        ),
        "operator": ("--kind", "operator"),
    }  # fmt: skip
    issued = {}
    for kind, options in kinds.items():
        result = _chukan(env, "issue", *ca_options, *key_options, *options, "--days", "7")
        assert result.returncode == 0, result.stderr
        issued[kind] = json.loads(result.stdout)
    # A refused second init and a refused re-issue leave every file as it was.
    snapshot = {p.name: p.read_bytes() for p in directory.iterdir()}
    again = _chukan(env, "init", *ca_options)
    assert again.returncode == 1
    assert "already holds a CA" in again.stderr
    reissue = _chukan(env, "issue", *ca_options, *key_options, *kinds["hub"])
    assert reissue.returncode == 1
    assert "--force" in reissue.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == snapshot
    # A passphrase never reaches the output.
    for result in (init, again, reissue):
        assert env[CA_PASSPHRASE_ENV] not in result.stdout + result.stderr
    assert all(key_passphrase.decode() not in json.dumps(d) for d in issued.values())
    return Pki(directory, key_passphrase, issued, snapshot)


def test_files_are_private_and_keys_encrypted(pki: Pki) -> None:
    assert _mode(pki.directory) == 0o700
    names = sorted(pki.snapshot)
    assert names == sorted(
        [
            "ca.pem",
            "ca.key.pem",
            "hub.server.pem",
            "hub.server.key.pem",
            "hub.client.pem",
            "hub.client.key.pem",
            f"agency-{CHIBA_CITY}.server.pem",
            f"agency-{CHIBA_CITY}.server.key.pem",
            f"agency-{CHIBA_CITY}.client.pem",
            f"agency-{CHIBA_CITY}.client.key.pem",
            f"{CHIBA_CITY}.{SYSTEM}.client.pem",
            f"{CHIBA_CITY}.{SYSTEM}.client.key.pem",
            "hub-operator.client.pem",
            "hub-operator.client.key.pem",
        ]
    )
    for name in names:
        assert _mode(pki.path(name)) == 0o600, name
        if name.endswith(".key.pem"):
            assert pki.snapshot[name].startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    system = pki.issued["system"]["certificates"][0]
    assert system["subject"] == f"system:{CHIBA_CITY}.{SYSTEM}"
    assert system["roles"] == [OP_READ_RECORDS]


async def _start_hub(pki: Pki, config: HubConfig) -> RunningServer:
    tls = pki.settings("hub")  # read from the files at every start, as a server process does
    return await serve(
        create_hub_app(dataclasses.replace(config, tls=tls)),
        "127.0.0.1",
        0,
        ssl_context=tls.server_context(),
    )


async def _presented_fingerprint(url: str, context: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate the server presents in the handshake."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return certificate_fingerprint(der)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def hub_config(pg_server_url: str, db_prefix: str, tmp_path: Path) -> HubConfig:
    """A hub of its own (database and key folder) for one test; TLS comes from the files."""
    url = await db.ensure_database(pg_server_url, f"{db_prefix}pki_{secrets.token_hex(3)}")
    await db.migrate_url(url, "chukan.simulators", "migrations/hub")
    return HubConfig(
        database_url=url,
        key_dir=tmp_path / "hub-keys",
        key_passphrase=secrets.token_urlsafe(24).encode(),
        admin_token=secrets.token_urlsafe(24),
    )


async def _status(url: str, context: ssl.SSLContext, token: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        await response.read()
        return response.status


async def test_hub_from_the_files_admits_exactly_the_identities_issued_for_it(
    pki: Pki, hub_config: HubConfig
) -> None:
    hub = await _start_hub(pki, hub_config)
    token = hub_config.admin_token
    records = hub.url + "/admin/v1/records"
    try:
        assert await _status(records, pki.client("hub-operator"), token) == 200
        # An agency's certificate may use the network API, not the operator's.
        agency = pki.client(f"agency-{CHIBA_CITY}")
        assert await _status(hub.url + "/network/v1/hub-key", agency, token) == 200
        assert await _status(records, agency, token) == 403
        # A core system of an agency is no caller of the hub at all.
        assert await _status(records, pki.client(f"{CHIBA_CITY}.{SYSTEM}"), token) == 403
        anonymous = client_context_from_files(pki.path("ca.pem"))
        assert await _status(records, anonymous, token) == 401
        # Same identity, another CA: refused in the handshake.
        now = dt.datetime.now(dt.UTC)
        other = CertificateAuthority.create("not ours", now=now, lifetime=dt.timedelta(days=1))
        forged = other.issue_party(
            "", client=HUB_IDENTITY, now=now, lifetime=dt.timedelta(hours=1)
        ).client
        assert forged is not None
        foreign = client_context(
            pki.path("ca.pem").read_bytes(), forged.certificate_pem, forged.private_key_pem
        )
        with pytest.raises(aiohttp.ClientError):
            await _status(records, foreign, token)
    finally:
        await hub.stop()


async def test_a_restarted_hub_presents_the_same_certificate(
    pki: Pki, hub_config: HubConfig
) -> None:
    issued = {c["certificate"]: c["sha256"] for c in pki.issued["hub"]["certificates"]}
    expected = issued[str(pki.path("hub.server.pem"))]
    seen = []
    for _ in range(2):
        hub = await _start_hub(pki, hub_config)
        try:
            seen.append(await _presented_fingerprint(hub.url, pki.client("hub-operator")))
            assert (
                await _status(
                    hub.url + "/admin/v1/records",
                    pki.client("hub-operator"),
                    hub_config.admin_token,
                )
                == 200
            )
        finally:
            await hub.stop()
    assert seen == [expected, expected]
    assert {p.name: p.read_bytes() for p in pki.directory.iterdir()} == pki.snapshot


async def _whoami(request: web.Request) -> web.Response:
    identity = peer_identity(request)
    return web.Response(text="anonymous" if identity is None else identity_label(identity))


async def test_the_hub_reaches_the_agency_under_its_agency_name_only(pki: Pki) -> None:
    """The agency's server certificate carries ``agency_host(code)``, which the hub verifies;
    the hub's client certificate reads back as the hub (what the network face admits)."""
    agency_tls = pki.settings(f"agency-{CHIBA_CITY}")
    app = web.Application()
    app.router.add_get("/whoami", _whoami)
    server = await serve(app, "127.0.0.1", 0, ssl_context=agency_tls.server_context())
    hub_context = pki.settings("hub").client_context()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                server.url + "/whoami",
                ssl=hub_context,
                server_hostname=agency_host(CHIBA_CITY),
            ) as response:
                assert response.status == 200
                assert await response.text() == identity_label(HUB_IDENTITY)
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(
                    server.url + "/whoami",
                    ssl=hub_context,
                    server_hostname=agency_host(FUNABASHI_CITY),
                ) as response:
                    await response.read()
        fingerprint = await _presented_fingerprint(server.url, pki.client("hub-operator"))
        assert fingerprint == certificate_fingerprint(
            pki.path(f"agency-{CHIBA_CITY}.server.pem").read_bytes()
        )
    finally:
        await server.stop()
