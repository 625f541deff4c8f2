"""``chukan serve``: the offline network as one OS process per server, from a folder that stays.

The first run writes ``<data dir>/devnet/`` (0700) as an operator would set up
the network by hand, then starts each server with its own command:

* ``pki/``: a CA made with ``chukan pki init`` (key encrypted under
  ``secrets/ca-passphrase``) and every party's certificates made with
  ``chukan pki issue``: the hub, the 国保連 mailbox, each gateway (server and
  client), the hub operator and each agency's 介護保険システム;
* ``secrets/``: every passphrase and token, one file each (0600): the hub's
  admin token and key passphrase, the 国保連 simulator's, each agency's own key
  passphrase, enrolment token (issued by the hub's admin API), database
  password, core-system bearer token and 国保連 mailbox token;
* ``hub.toml``, ``kokuhoren.toml``, ``<code>.toml``: the files ``chukan hub|kokuhoren|gateway
  serve --config`` read; ``keys/``: each server's key ring; ``logs/``: each
  server's JSON events (appended across runs); ``devnet.json``: the ports.

Migrations are applied as ``chukan db migrate`` does and each agency's login is
made as ``chukan db tenant`` does; then ``python -m chukan hub serve`` and the
others run as child processes until Ctrl-C or SIGTERM, when each is sent
SIGTERM (graceful stop), waited for, and killed if it does not end.

A later run finds the folder and reuses it: the same CA, certificates, keys,
tokens and ports; nothing is regenerated (only missing pieces are made).  The
TOML files are rewritten when their content would differ (for example when
``CHUKAN_DATABASE_URL`` names another server).

The TLS private keys are written unencrypted (0600, in a 0700 folder): the
passphrase would have to sit in a file beside them anyway, and a curl command
line with ``--pass`` would show it to every local user in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import io
import json
import secrets
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp
import asyncpg

from chukan.gateway.cli import pki as pki_cli
from chukan.gateway.core import db
from chukan.gateway.core.aio import wait_event
from chukan.gateway.core.config import (
    ADMIN_OPERATIONS,
    ALL_OPERATIONS,
    OP_PERSON_LIFECYCLE,
    token_digest,
)
from chukan.gateway.core.db import COMPONENTS
from chukan.gateway.core.errors import ConfigFileError
from chukan.gateway.core.keyring import current_keys, current_keys_json, open_ring
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.state import utcnow
from chukan.gateway.core.tomlconfig import read_secret_file
from chukan.keys.ca import describe_certificate
from chukan.keys.tls import client_context
from chukan.simulators.devnet.errors import DevnetServeError
from chukan.simulators.devnet.network import (
    CORE_SYSTEM,
    DEMO_AGENCIES,
    DEMO_INSURERS,
    default_systems,
)
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS
from chukan.simulators.devnet.ports import free_port, port_free
from chukan.simulators.devnet.tomlfiles import (
    Database,
    KokuhorenFiles,
    TlsFiles,
    gateway_toml,
    hub_toml,
    kokuhoren_toml,
    split_password,
    write_if_changed,
    write_private,
)
from chukan.simulators.hub.config import HUB_OWNER

FOLDER: Final = "devnet"
HOST: Final = "127.0.0.1"
#: A 2-core machine under load imports and migrates slowly.
START_PATIENCE: Final = 120.0
STOP_PATIENCE: Final = 15.0
#: The 介護保険システム's grants: not the operators', and not the lifecycle events only the
#: 団体内統合宛名システム reports (as ``default_systems`` in simulators/devnet/network.py).
CORE_OPERATIONS: Final = tuple(sorted(ALL_OPERATIONS - ADMIN_OPERATIONS - {OP_PERSON_LIFECYCLE}))
PR_SET_PDEATHSIG: Final = 1
#: Nine columns each (国保連 is three double-width characters).
LABELS: Final = {"hub": "hub      ", "kokuhoren": "国保連   ", "gateway": "gateway  "}


@dataclass(frozen=True)
class Layout:
    """Where everything of one devnet folder lives (absolute paths)."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def secret(self, name: str) -> Path:
        return self.root / "secrets" / name

    def toml(self, name: str) -> Path:
        return self.root / f"{name}.toml"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def state(self) -> Path:
        return self.root / "devnet.json"

    def rel(self, path: Path) -> str:
        """``path`` relative to the folder (the TOML files' paths are)."""
        return str(path.relative_to(self.root))

    def cert(self, name: str, usage: str) -> Path:
        return self.pki / f"{name}.{usage}.pem"

    def key(self, name: str, usage: str) -> Path:
        return self.pki / f"{name}.{usage}{pki_cli.KEY_SUFFIX}"

    def tls(self, name: str, *, client: bool = True) -> TlsFiles:
        return TlsFiles(
            ca=self.rel(self.pki / pki_cli.CA_CERT),
            server_cert=self.rel(self.cert(name, "server")),
            server_key=self.rel(self.key(name, "server")),
            client_cert=self.rel(self.cert(name, "client")) if client else None,
            client_key=self.rel(self.key(name, "client")) if client else None,
        )


@dataclass
class Child:
    """One server process started by ``chukan serve``."""

    name: str
    kind: str
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


@dataclass
class Devnet:
    """The running network: its folder and its child processes."""

    layout: Layout
    children: list[Child] = field(default_factory=list)
    created: bool = False


# -- the folder -----------------------------------------------------------------------------


def _secret(layout: Layout, name: str, make: Callable[[], str] | None = None) -> str:
    """The secret file's content; made (0600) the first time when ``make`` is given."""
    path = layout.secret(name)
    if path.exists():
        try:
            return read_secret_file(path).decode("utf-8")
        except ConfigFileError as exc:  # open to others, or unreadable
            raise DevnetServeError(exc.message) from None
    if make is None:
        raise DevnetServeError(f"{path} is missing")
    value = make()
    write_private(path, (value + "\n").encode("utf-8"))
    return value


def _token() -> str:
    return secrets.token_urlsafe(32)


def _pki(layout: Layout, *arguments: str) -> None:
    """Run ``chukan pki …`` in this process (the same code as the command)."""
    parser = argparse.ArgumentParser(prog="chukan")
    pki_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pki", *arguments])
    out, err = io.StringIO(), io.StringIO()
    if pki_cli.run(args, out=out, err=err) != 0:
        raise DevnetServeError(f"chukan pki {arguments[0]}: {err.getvalue().strip()}")


def _issue(layout: Layout, name: str, usages: tuple[str, ...], *arguments: str) -> None:
    """Issue a party's certificates unless all its files exist already."""
    if all(layout.cert(name, u).exists() and layout.key(name, u).exists() for u in usages):
        return
    _pki(
        layout,
        "issue",
        "--dir",
        str(layout.pki),
        "--passphrase-file",
        str(layout.secret("ca-passphrase")),
        "--no-key-passphrase",
        "--name",
        name,
        "--force",
        *arguments,
    )


def prepare_pki(layout: Layout) -> bool:
    """The CA and every certificate; True when the CA was created now."""
    created = False
    if not (layout.pki / pki_cli.CA_CERT).exists():
        _secret(layout, "ca-passphrase", _token)
        _pki(
            layout,
            "init",
            "--dir",
            str(layout.pki),
            "--name",
            "chukan devnet CA",
            "--passphrase-file",
            str(layout.secret("ca-passphrase")),
        )
        created = True
    hosts = [arg for host in LOOPBACK_HOSTS for arg in ("--host", host)]
    _issue(layout, "hub", ("server", "client"), "--kind", "hub", *hosts)
    _issue(layout, "kokuhoren", ("server",), "--kind", "kokuhoren", *hosts)
    _issue(layout, "hub-operator", ("client",), "--kind", "operator")
    operations = [arg for op in CORE_OPERATIONS for arg in ("--operation", op)]
    for code, _ in DEMO_AGENCIES:
        _issue(layout, f"agency-{code}", ("server", "client"), "--kind", "agency",
               "--agency", code, *hosts)  # fmt: skip
        _issue(layout, f"{code}.{CORE_SYSTEM}", ("client",), "--kind", "system",
               "--agency", code, "--system-id", CORE_SYSTEM, *operations)  # fmt: skip
    return created


def prepare_ports(layout: Layout) -> dict[str, int]:
    """Each server's port: chosen the first time, then the same at every run."""
    names = ["hub", "kokuhoren", *(code for code, _ in DEMO_AGENCIES)]
    ports: dict[str, int] = {}
    if layout.state.exists():
        ports = {k: int(v) for k, v in json.loads(layout.state.read_text("utf-8"))["ports"].items()}
    for name in names:
        if name not in ports:
            ports[name] = free_port(HOST)
        elif not port_free(HOST, ports[name]):
            raise DevnetServeError(
                f"port {ports[name]} of {name} is in use (is another chukan serve running on "
                f"{layout.root}?); stop it, or edit {layout.state}"
            )
    write_if_changed(layout.state, json.dumps({"ports": ports}, indent=2) + "\n")
    return ports


def _database(layout: Layout, url: str, secret_name: str) -> Database:
    """``[database]`` for ``url``: the password, if any, in a secret file of its own."""
    bare, password = split_password(url)
    if password is None:
        return Database(bare)
    write_private(layout.secret(secret_name), (password + "\n").encode("utf-8"))
    return Database(bare, layout.rel(layout.secret(secret_name)))


async def prepare_databases(layout: Layout, server_url: str) -> dict[str, Database]:
    """Migrations (``chukan db migrate``) and each agency's login (``chukan db tenant``)."""
    urls: dict[str, str] = {}
    for name, component in COMPONENTS.items():
        urls[name] = await db.ensure_database(server_url, component.database)
        await db.migrate_url(urls[name], component.package, component.folder)
    databases = {
        "hub": _database(layout, urls["hub"], "hub-db-password"),
        "kokuhoren": _database(layout, urls["kokuhoren"], "kokuhoren-db-password"),
    }
    for code, name in DEMO_AGENCIES:
        tenant_url = await _tenant_url(layout, urls["gateway"], code, name)
        databases[code] = _database(layout, tenant_url, f"{code}-db-password")
    return databases


async def _tenant_url(layout: Layout, admin_url: str, code: str, name: str) -> str:
    """The agency's login, kept from an earlier run when it still logs in."""
    stored = layout.secret(f"{code}-db-url")
    if stored.exists():
        url = _secret(layout, f"{code}-db-url")
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(url, timeout=10)
            await conn.close()
            return url
    url = await db.provision_tenant(admin_url, code, name)
    write_private(stored, (url + "\n").encode("utf-8"))
    return url


# -- the processes --------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM the server when ``chukan serve`` dies without its clean-up (kill -9)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(child: Child, config: Path) -> None:
    """``python -m chukan <kind> serve --config FILE``; its stderr (JSON events) to its log."""
    child.log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with child.log.open("ab") as sink:
        child.process = subprocess.Popen(  # noqa: S603 -- our own command, fixed arguments
            [sys.executable, "-m", "chukan", child.kind, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            cwd=config.parent,
            preexec_fn=_die_with_parent,
        )


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])


async def wait_healthy(child: Child, context: ssl.SSLContext, limit: float) -> None:
    """Poll ``GET /health`` until it answers 200; refuse a child that exited."""
    deadline = time.monotonic() + limit
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            code = child.exited()
            if code is not None:
                raise DevnetServeError(
                    f"{child.name} exited with status {code} while starting; "
                    f"its log {child.log}:\n{_tail(child.log)}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(
                    child.url + "/health", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise DevnetServeError(f"{child.name} did not answer /health in {limit:.0f} s")
            await asyncio.sleep(0.2)


async def stop_children(children: list[Child], limit: float = STOP_PATIENCE) -> None:
    """SIGTERM every running child (gateways first), wait, then SIGKILL what is left."""
    running = [c for c in reversed(children) if c.process is not None and c.exited() is None]
    for child in running:
        assert child.process is not None
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)

    async def reap(process: subprocess.Popen[bytes]) -> None:
        try:
            await asyncio.to_thread(process.wait, limit)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    await asyncio.gather(*(reap(c.process) for c in running if c.process is not None))


def _context(layout: Layout, name: str | None) -> ssl.SSLContext:
    """A client context trusting the devnet CA, presenting ``name``'s client certificate."""
    ca = (layout.pki / pki_cli.CA_CERT).read_bytes()
    if name is None:
        return client_context(ca)
    cert = layout.cert(name, "client").read_bytes()
    return client_context(ca, cert, layout.key(name, "client").read_bytes())


async def _admin_call(
    url: str, context: ssl.SSLContext, token: str, method: str, body: Any = None
) -> Any:
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        if response.status not in (200, 201):
            text = await response.text()
            raise DevnetServeError(f"{method} {url}: HTTP {response.status} {text[:200]}")
        return await response.json()


# -- the whole run --------------------------------------------------------------------------


async def start_devnet(devnet: Devnet, server_url: str) -> None:
    """Write (or reuse) the folder, migrate, start every server and wait until each is healthy."""
    layout = devnet.layout
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.root.chmod(0o700)
    (layout.root / "keys").mkdir(exist_ok=True, mode=0o700)
    devnet.created = prepare_pki(layout)
    ports = prepare_ports(layout)
    databases = await prepare_databases(layout, server_url)
    url = {name: f"https://{HOST}:{port}" for name, port in ports.items()}

    hub_passphrase = _secret(layout, "hub-key-passphrase", _token)
    admin_token = _secret(layout, "hub-admin-token", _token)
    # The hub's keys exist before it starts, so that each gateway's file pins its key.
    hub_keys = await asyncio.to_thread(
        load_or_create_keys, layout.root / "keys" / "hub", HUB_OWNER, hub_passphrase.encode()
    )
    _secret(layout, "kokuhoren-key-passphrase", _token)
    kokuhoren_admin = _secret(layout, "kokuhoren-admin-token", _token)
    write_if_changed(
        layout.toml("hub"),
        hub_toml(
            host=HOST,
            port=ports["hub"],
            database=databases["hub"],
            key_dir="keys/hub",
            passphrase_file=layout.rel(layout.secret("hub-key-passphrase")),
            admin_token_file=layout.rel(layout.secret("hub-admin-token")),
            tls=layout.tls("hub"),
        ),
    )
    write_if_changed(
        layout.toml("kokuhoren"),
        kokuhoren_toml(
            host=HOST,
            port=ports["kokuhoren"],
            database=databases["kokuhoren"],
            key_dir="keys/kokuhoren",
            passphrase_file=layout.rel(layout.secret("kokuhoren-key-passphrase")),
            admin_token_file=layout.rel(layout.secret("kokuhoren-admin-token")),
            tls=layout.tls("kokuhoren", client=False),
        ),
    )
    operator = _context(layout, "hub-operator")
    servers = [
        (Child("hub", "hub", url["hub"], layout.log("hub")), operator),
        (Child("国保連", "kokuhoren", url["kokuhoren"], layout.log("kokuhoren")), operator),
    ]
    for child, _ in servers:
        devnet.children.append(child)
        start_child(child, layout.toml(child.kind))
    for child, context in servers:
        await wait_healthy(child, context, START_PATIENCE)

    mailbox_keys = await _admin_call(
        url["kokuhoren"] + "/mailbox/v1/keys", _context(layout, None), "", "GET"
    )
    write_if_changed(layout.root / "kokuhoren-keys.json", json.dumps(mailbox_keys, indent=2))
    gateways: list[tuple[Child, ssl.SSLContext]] = []
    for code, name in DEMO_AGENCIES:
        enrolment = layout.secret(f"{code}-enrolment-token")
        if not enrolment.exists():  # the hub's operator issues it once; it stays valid
            issued = await _admin_call(
                f"{url['hub']}/admin/v1/agencies/{code}/enrolment-token",
                operator,
                admin_token,
                "POST",
            )
            write_private(enrolment, (issued["token"] + "\n").encode("utf-8"))
        _secret(layout, f"{code}-key-passphrase", _token)
        _secret(layout, f"{code}-kokuhoren-token", _token)
        system_token = _secret(layout, f"{code}-{CORE_SYSTEM}-token", _token)
        write_if_changed(
            layout.toml(code),
            gateway_toml(
                code=code,
                name=name,
                host=HOST,
                port=ports[code],
                database=databases[code],
                key_dir=f"keys/{code}",
                passphrase_file=layout.rel(layout.secret(f"{code}-key-passphrase")),
                hub_url=url["hub"],
                hub_key=hub_keys.signing.public,
                enrolment_token_file=layout.rel(enrolment),
                systems=default_systems(system_token),
                tls=layout.tls(f"agency-{code}"),
                insurer_number=DEMO_INSURERS.get(code),
                kokuhoren=KokuhorenFiles(
                    url["kokuhoren"], f"secrets/{code}-kokuhoren-token", "kokuhoren-keys.json"
                ),
            ),
        )
        child = Child(f"{code} {name}", "gateway", url[code], layout.log(code))
        devnet.children.append(child)
        start_child(child, layout.toml(code))
        gateways.append((child, _context(layout, f"{code}.{CORE_SYSTEM}")))
    for child, context in gateways:
        await wait_healthy(child, context, START_PATIENCE)
    # Onboard each 保険者 at the 国保連 mailbox with the keys its gateway uses now.
    for code, name in DEMO_AGENCIES:
        number = DEMO_INSURERS.get(code)
        if not number:
            continue
        passphrase = _secret(layout, f"{code}-key-passphrase").encode()
        ring = await asyncio.to_thread(open_ring, layout.root / "keys" / code, code, passphrase)
        await _admin_call(
            f"{url['kokuhoren']}/admin/v1/insurers/{number}",
            _context(layout, None),
            kokuhoren_admin,
            "PUT",
            {
                "name": name,
                "agency_code": code,
                "token_sha256": token_digest(_secret(layout, f"{code}-kokuhoren-token")),
                **current_keys_json(current_keys(ring, utcnow())),
            },
        )


def curl_command(layout: Layout, code: str, gateway_url: str) -> str:
    """A request a reader can paste: GET the agency's provision records as its core system."""
    name = f"{code}.{CORE_SYSTEM}"
    return " ".join(
        [
            "curl",
            "--cacert",
            shlex.quote(str(layout.pki / pki_cli.CA_CERT)),
            "--cert",
            shlex.quote(str(layout.cert(name, "client"))),
            "--key",
            shlex.quote(str(layout.key(name, "client"))),
            shlex.quote(f"{gateway_url}/internal/v1/records"),
        ]
    )


def print_summary(devnet: Devnet, out: TextIO) -> None:
    layout = devnet.layout
    ca = describe_certificate((layout.pki / pki_cli.CA_CERT).read_bytes())
    how = "created" if devnet.created else "reused"
    print(f"folder   {layout.root} ({how})", file=out)
    print(f"CA       {layout.pki / pki_cli.CA_CERT} sha256 {ca.sha256}", file=out)
    for child in devnet.children:
        assert child.process is not None
        name = f"{child.name}  " if child.kind == "gateway" else ""
        print(f"{LABELS[child.kind]}{name}{child.url}  pid {child.process.pid}", file=out)
        if child.kind == "gateway":
            code = child.name.split()[0]
            print(f"  {curl_command(layout, code, child.url)}", file=out)
    print(f"hub admin token: {layout.secret('hub-admin-token')} (file; never printed)", file=out)
    print(f"logs     {layout.root / 'logs'}", file=out)
    print("serving; press Ctrl-C to stop", file=out, flush=True)


async def serve_devnet(data_dir: Path, server_url: str, out: TextIO) -> int:
    """Start the network, serve until SIGTERM/SIGINT or a server's exit, stop every child."""
    devnet = Devnet(Layout((data_dir / FOLDER).absolute()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    status = 0
    try:
        starting = asyncio.ensure_future(start_devnet(devnet, server_url))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            print("stopped while starting", file=out, flush=True)
            return 0
        stopping.cancel()
        starting.result()
        print_summary(devnet, out)
        while not stop.is_set():
            gone = [c for c in devnet.children if c.exited() is not None]
            if gone:
                for child in gone:
                    print(f"{child.name} exited with status {child.exited()}; see {child.log}",
                          file=out, flush=True)  # fmt: skip
                status = 1
                break
            await wait_event(stop, 0.5)
        print("stopping", file=out, flush=True)
        return status
    finally:
        await stop_children(devnet.children)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
