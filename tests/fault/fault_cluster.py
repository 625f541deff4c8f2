"""The fault suite's cluster: its own PostgreSQL, the hub and two gateways as OS processes.

The test process is the operator.  It creates the run's CA and every
configuration, writes each server's TOML file, certificates and secret files
(0600) as an operator would, and starts each server with its own command
(``python -m chukan hub serve --config hub.toml``, ``python -m chukan gateway
serve --config requester.toml`` …) on a fixed loopback port.  It can then kill
(SIGKILL), pause (SIGSTOP/SIGCONT) and restart any server with the same files,
keys and database, stop and start PostgreSQL on the same port and data folder,
and slow down the provider's database traffic through a :class:`DelayProxy`.

Nothing here replaces a component of ours: the servers are the product's own
commands, started from the files they read in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import pwd
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core import db
from chukan.gateway.core.config import GatewayConfig, Timing
from chukan.gateway.core.db import COMPONENTS
from chukan.gateway.core.identities import HUB_IDENTITY, HUB_OPERATOR, agency_host
from chukan.gateway.core.keystore import load_or_create_keys
from chukan.gateway.core.tls import TlsSettings
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM, default_systems
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS, NetworkPki
from chukan.simulators.devnet.ports import free_port
from chukan.simulators.devnet.tomlfiles import (
    Database,
    TlsFiles,
    gateway_toml,
    hub_toml,
    split_password,
    write_private,
)
from chukan.simulators.hub import HUB_DATABASE, HubConfig
from chukan.simulators.hub.config import HUB_OWNER

REQUESTER: Final = CHIBA_CITY  # 千葉市
PROVIDER: Final = FUNABASHI_CITY  # 船橋市
AGENCY_NAMES: Final = {CHIBA_CITY: "千葉市", FUNABASHI_CITY: "船橋市"}

#: Short timings, so that every fault resolves in seconds: backoff capped at 1 s.
#: Fields a checkout does not have yet are left out (see :func:`known_fields`).
GATEWAY_TIMING: Final[dict[str, Any]] = {
    "http_timeout": 2.0,
    "send_backoff": 0.2,
    "max_backoff": 1.0,
    "sweep_interval": 0.5,
}
HUB_TIMING: Final[dict[str, Any]] = {
    "delivery_timeout": 2.0,
    "delivery_backoff": 0.2,
    "delivery_max_backoff": 1.0,
}
#: The system user pgserver runs PostgreSQL as when the tests run as root.
PGSERVER_USER: Final = "pgserver"
PR_SET_PDEATHSIG: Final = 1


def known_fields(cls: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to the fields ``cls`` has (settings land while the suite exists)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def with_port(url: str, port: int) -> str:
    """The same PostgreSQL URL (credentials, database) at another loopback port."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


async def until(
    condition: Callable[[], Awaitable[bool]], limit: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``condition`` until it holds; raise TimeoutError after ``limit`` seconds.

    Returns the seconds it took.
    """
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > limit:
            raise TimeoutError(f"{what}: not within {limit:.0f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def exited(process: subprocess.Popen[bytes], limit: float) -> bool:
    """Wait (polling) until ``process`` has exited and is reaped; False after ``limit`` s."""

    async def gone() -> bool:
        return process.poll() is not None

    try:
        await until(gone, limit, f"exit of pid {process.pid}", interval=0.02)
    except TimeoutError:
        return False
    return True


def spawn(command: list[str], output: Path, **options: Any) -> subprocess.Popen[bytes]:
    """Start a child process whose stdout and stderr are appended to ``output``."""
    with output.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 -- our own script or PostgreSQL, fixed arguments
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **options
        )


class ServerDiedError(RuntimeError):
    """A server process exited when it should have been starting or running."""


# -- PostgreSQL ---------------------------------------------------------------------------


def _postgres_bin() -> Path:
    import importlib

    commands: Any = importlib.import_module("pgserver._commands")  # untyped package
    path: Path = commands.POSTGRES_BIN_PATH
    return path


class Postgres:
    """A PostgreSQL of the suite's own on a fixed loopback port (TCP only), started at will.

    The data folder is initialised once through :class:`chukan.gateway.core.db.EmbeddedPostgres`
    (pgserver: ``initdb``, and as root a ``pgserver`` system user owning the folder);
    afterwards the ``postgres`` binary runs as a child of the test process, so that it
    can be stopped (fast or immediate shutdown) and started again on the same port.
    """

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def initialise(self) -> None:
        def init() -> None:
            embedded = db.EmbeddedPostgres(self.data_dir)
            embedded.start()
            embedded.stop()

        await asyncio.to_thread(init)

    async def start(self, limit: float = 30.0) -> float:
        """Start and wait until it accepts sessions; returns the seconds that took."""
        assert not self.running
        user: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            entry = pwd.getpwnam(PGSERVER_USER)
            user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        # Immediate shut-down if the test process dies without its teardown (util-linux).
        setpriv = shutil.which("setpriv")
        guard = [setpriv, "--pdeathsig", "QUIT", "--"] if setpriv else []
        command = [
            *guard,
            str(_postgres_bin() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        self.process = spawn(command, self.log_path, **user)
        return await until(self._accepts, limit, f"PostgreSQL on port {self.port}")

    async def _accepts(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise ServerDiedError(f"PostgreSQL exited:\n{tail(self.log_path)}")
        try:
            conn = await asyncpg.connect(self.url, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    async def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: sessions are cut, clean shut-down) or ``immediate`` (SIGQUIT:
        no checkpoint, crash recovery at the next start)."""
        process = self.process
        if process is None:
            return
        signum = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        if process.poll() is None:
            process.send_signal(signum)
        if not await exited(process, 30):
            process.kill()
            await exited(process, 10)
        self.process = None


# -- a slow link in front of PostgreSQL -----------------------------------------------------


class DelayProxy:
    """A loopback TCP proxy, in a thread with its own event loop, that can delay answers.

    Every chunk the backend sends is held back ``delay`` seconds (order kept, no
    throughput limit): each database round trip of the proxied client then takes
    that much longer — a provider slowed down by its database, not paused.  The
    proxy runs in its own thread so that it forwards whatever the test's own event
    loop is doing (a blocking call, a pause between tests).
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.port = 0
        #: Seconds added to each backend→client chunk; set from the test thread.
        self.delay = 0.0
        self.delayed_chunks = 0
        self.connections = 0
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fault-db-proxy", daemon=True)
        self._thread.start()
        if not self._listening.wait(10):
            raise RuntimeError(f"the database proxy did not start: {self._failure!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() or the test's checks
            self._failure = exc
            self._listening.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._handle(reader, writer)
            finally:
                handlers.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._listening.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.backend_port)
            except OSError:
                return  # PostgreSQL is down: the client sees its connection closed
            self._writers.add(upstream)
            await asyncio.gather(
                self._pipe(reader, upstream, delayed=False),
                self._pipe(up_reader, writer, delayed=True),
            )
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
                    with contextlib.suppress(OSError, ConnectionError):
                        await w.wait_closed()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def pump() -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    due = time.monotonic() + (self.delay if delayed else 0.0)
                    queue.put_nowait((due, data))
            queue.put_nowait(None)

        pumping = asyncio.create_task(pump())
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                hold = due - time.monotonic()
                if hold > 0:  # the injected latency itself, not a synchronisation
                    self.delayed_chunks += 1
                    await asyncio.sleep(hold)
                sink.write(data)
                await sink.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
            sink.close()  # the other direction ends too


# -- server processes -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process ends, however it ends."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ServerProcess:
    """One server (``hub`` or ``gateway``): ``python -m chukan KIND serve --config NAME.toml``.

    ``config`` is what the TOML file says, as values (the checks read the key
    folder and passphrase from it); ``toml`` the file's text, written at each start.
    """

    name: str
    kind: str
    folder: Path
    config: HubConfig | GatewayConfig
    toml: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    paused: bool = False

    @property
    def config_file(self) -> Path:
        return self.folder / f"{self.name}.toml"

    @property
    def log_file(self) -> Path:
        """stderr: structlog JSON events (and anything else), appended across restarts."""
        return self.folder / f"{self.name}.log"

    @property
    def stderr_file(self) -> Path:
        return self.log_file

    @property
    def url(self) -> str:
        return f"https://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, limit: float = 60.0) -> float:
        """Start (again) from the same file; the seconds until it logged ``server_started``."""
        assert not self.running, f"{self.name} is not stopped"
        self.config_file.write_text(self.toml, encoding="utf-8")
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        command = [
            sys.executable, "-m", "chukan", self.kind, "serve", "--config", str(self.config_file),
        ]  # fmt: skip
        self.process = spawn(command, self.log_file, cwd=self.folder, preexec_fn=_die_with_parent)
        self.starts += 1
        self.paused = False

        async def started() -> bool:
            return self._started_since(offset)

        return await until(started, limit, f"start of {self.name}", interval=0.05)

    def _started_since(self, offset: int) -> bool:
        assert self.process is not None
        with self.log_file.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
        for line in text.splitlines():
            if '"server_started"' in line:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "server_started" and event.get("pid") == self.pid:
                        return True
        if self.process.poll() is not None:
            raise ServerDiedError(
                f"{self.name} exited with status {self.process.returncode} before it was "
                f"ready; log:\n{tail(self.log_file)}"
            )
        return False

    async def kill(self) -> None:
        """kill -9, and reap it."""
        assert self.process is not None and self.running, f"{self.name} is not running"
        self.process.kill()
        if not await exited(self.process, 10):
            raise RuntimeError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        self.kills += 1
        self.paused = False

    async def restart(self) -> float:
        await self.kill()
        return await self.start()

    def pause(self) -> None:
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    async def terminate(self) -> None:
        """SIGTERM (after SIGCONT if paused); SIGKILL if it has not exited within 15 s."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            if not await exited(process, 15):
                process.kill()
                await exited(process, 10)
        self.paused = False

    def check_alive(self) -> None:
        if not self.running:
            code = None if self.process is None else self.process.returncode
            raise ServerDiedError(
                f"{self.name} is not running (exit status {code}); stderr:\n"
                f"{tail(self.stderr_file)}"
            )


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    """PostgreSQL, the hub, the requester (千葉市) and the provider (船橋市) gateways."""

    folder: Path
    pki: NetworkPki
    postgres: Postgres
    proxy: DelayProxy
    hub: ServerProcess
    gateways: dict[str, ServerProcess]
    admin_token: str
    key_passphrase: bytes  # the hub's; each gateway's own is in its config
    gateway_admin_url: str
    hub_database_url: str
    session: aiohttp.ClientSession
    contexts: dict[str, ssl.SSLContext]

    @property
    def requester(self) -> ServerProcess:
        return self.gateways[REQUESTER]

    @property
    def provider(self) -> ServerProcess:
        return self.gateways[PROVIDER]

    @property
    def servers(self) -> list[ServerProcess]:
        return [self.hub, *self.gateways.values()]

    def gateway_config(self, code: str) -> GatewayConfig:
        config = self.gateways[code].config
        assert isinstance(config, GatewayConfig)
        return config

    async def call(
        self,
        code: str,
        method: str,
        path: str,
        *,
        seconds: float = 10.0,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """Call gateway ``code``'s internal API as its 介護保険システム (client certificate)."""
        async with self.session.request(
            method,
            self.gateways[code].url + path,
            ssl=self.contexts[code],
            timeout=aiohttp.ClientTimeout(total=seconds),
            **kwargs,
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    async def hub_records(self) -> list[dict[str, Any]]:
        """The hub's 情報提供等記録, as its operator reads them (certificate and token)."""
        async with self.session.get(
            self.hub.url + "/admin/v1/records",
            ssl=self.contexts["hub-operator"],
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            body = await response.json()
            assert response.status == 200, body
            records: list[dict[str, Any]] = body["records"]
            return records

    async def verify_records(self, code: str) -> tuple[int, str]:
        """``chukan records verify`` for one agency, as an operator runs it (a subprocess)."""
        config = self.gateway_config(code)
        env = {**os.environ, "CHUKAN_KEY_PASSPHRASE": config.key_passphrase.decode()}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chukan",
            "records",
            "verify",
            "--database-url",
            self.gateway_admin_url,
            "--tenant",
            code,
            "--key-dir",
            str(config.key_dir),
            "--actor",
            "fault-suite",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return process.returncode, out.decode("utf-8", errors="replace")

    def check_alive(self) -> None:
        for server in self.servers:
            server.check_alive()
        if not self.postgres.running:
            raise ServerDiedError(f"PostgreSQL is not running:\n{tail(self.postgres.log_path)}")

    def describe(self) -> str:
        """Each process's state, with the end of its log: for a failure message."""
        parts = [f"PostgreSQL: {'running' if self.postgres.running else 'DOWN'}"]
        for server in self.servers:
            process = server.process
            state = (
                "not started"
                if process is None
                else "PAUSED"
                if server.paused
                else "running"
                if process.poll() is None
                else f"EXITED {process.returncode}"
            )
            parts.append(
                f"{server.name} ({state}, {server.starts} starts, {server.kills} kills); "
                f"log {server.log_file}, last events:\n{tail(server.log_file, 8)}"
            )
            if process is not None and process.poll() is not None:
                parts.append(f"{server.name} stderr:\n{tail(server.stderr_file, 15)}")
        return "\n".join(parts)

    async def heal(self) -> None:
        """Undo any fault a failed scenario left: the next scenario starts whole."""
        self.proxy.delay = 0.0
        if not self.postgres.running:
            await self.postgres.start()
        for server in self.servers:
            if server.paused:
                server.resume()
            if not server.running:
                await server.start()


async def _issue_enrolment_token(hub_url: str, admin_token: str, pki: NetworkPki, code: str) -> str:
    """The hub operator issues agency ``code``'s own enrolment token (admin API)."""
    connector = aiohttp.TCPConnector(ssl=pki.client_context(HUB_OPERATOR))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"{hub_url}/admin/v1/agencies/{code}/enrolment-token",
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        token: str = body["token"]
        return token


def _tls_identity(pki: NetworkPki, code: str) -> TlsSettings:
    """An agency gateway's certificates, its server one naming the agency (as the hub checks)."""
    return pki.settings(code, ClientIdentity("agency", code), (*LOOPBACK_HOSTS, agency_host(code)))


def _secret(folder: Path, name: str, value: str | bytes) -> str:
    """Write a secret file (0600) as an operator would; its path relative to the TOML files."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    write_private(folder / "secrets" / name, data + b"\n")
    return f"secrets/{name}"


def _tls_files(folder: Path, name: str, settings: TlsSettings) -> TlsFiles:
    """The PEM files of one server (keys 0600), as the ``[tls]`` table names them."""
    tls = folder / "tls"
    tls.mkdir(exist_ok=True, mode=0o700)
    (tls / "ca.pem").write_bytes(settings.ca_pem)
    files = {
        f"{name}-server.crt": settings.server_cert_pem,
        f"{name}-client.crt": settings.client_cert_pem,
    }
    for file_name, data in files.items():
        (tls / file_name).write_bytes(data)
    write_private(tls / f"{name}-server.key", settings.server_key_pem)
    write_private(tls / f"{name}-client.key", settings.client_key_pem)
    return TlsFiles(
        "tls/ca.pem",
        f"tls/{name}-server.crt",
        f"tls/{name}-server.key",
        f"tls/{name}-client.crt",
        f"tls/{name}-client.key",
    )


def _database(folder: Path, url: str, secret_name: str) -> Database:
    bare, password = split_password(url)
    if password is None:
        return Database(bare)
    return Database(bare, _secret(folder, secret_name, password))


@contextlib.asynccontextmanager
async def running_cluster(folder: Path) -> AsyncIterator[Cluster]:
    """Start everything; on exit terminate every process started, whatever happened."""
    async with contextlib.AsyncExitStack() as stack:
        postgres = Postgres(folder / "pg", free_port(), folder / "postgres.log")
        await postgres.initialise()
        stack.push_async_callback(postgres.stop)
        await postgres.start()

        # The databases' lifecycle, as `chukan db migrate` and `chukan db tenant` do it.
        hub_url = await db.ensure_database(postgres.url, HUB_DATABASE)
        await db.migrate_url(hub_url, COMPONENTS["hub"].package, COMPONENTS["hub"].folder)
        admin_url = await db.ensure_database(postgres.url, GATEWAY_DATABASE)
        await db.migrate_url(admin_url, "chukan.gateway")
        tenant_urls = {
            code: await db.provision_tenant(admin_url, code, name)
            for code, name in AGENCY_NAMES.items()
        }

        pki = NetworkPki.create()
        passphrase = secrets.token_urlsafe(24).encode()
        admin_token = secrets.token_urlsafe(24)
        hub_config = HubConfig(
            database_url=hub_url,
            key_dir=folder / "keys" / "hub",
            key_passphrase=passphrase,
            admin_token=admin_token,
            port=free_port(),  # fixed: a restarted hub comes back at the same URL
            tls=pki.settings("hub", HUB_IDENTITY),
        )
        hub_timing = known_fields(HubConfig, HUB_TIMING)
        hub_config = dataclasses.replace(hub_config, **hub_timing)
        # The hub's keys exist before it starts, so that the gateways' files pin its key.
        hub_key = load_or_create_keys(hub_config.key_dir, HUB_OWNER, passphrase).signing.public
        assert hub_config.tls is not None
        hub_file = hub_toml(
            host=hub_config.host,
            port=hub_config.port,
            database=_database(folder, hub_url, "hub-db-password"),
            key_dir=str(hub_config.key_dir),
            passphrase_file=_secret(folder, "hub-key-passphrase", passphrase),
            admin_token_file=_secret(folder, "hub-admin-token", admin_token),
            tls=_tls_files(folder, "hub", hub_config.tls),
            timing=hub_timing,
        )
        hub = ServerProcess("hub", "hub", folder, hub_config, hub_file)
        stack.push_async_callback(hub.terminate)
        await hub.start()

        # The provider reaches PostgreSQL through the proxy (scenario e slows it down).
        proxy = DelayProxy(postgres.port)
        proxy.start()
        stack.callback(proxy.stop)

        gateway_timing = known_fields(Timing, GATEWAY_TIMING)
        timing = dataclasses.replace(Timing(), **gateway_timing)
        gateways: dict[str, ServerProcess] = {}
        tokens: dict[str, str] = {}
        for code, name in AGENCY_NAMES.items():
            tokens[code] = secrets.token_urlsafe(24)
            database_url = tenant_urls[code]
            if code == PROVIDER:
                database_url = with_port(database_url, proxy.port)
            enrolment_token = await _issue_enrolment_token(hub.url, admin_token, pki, code)
            config = GatewayConfig(
                agency_code=code,
                agency_name=name,
                database_url=database_url,
                hub_url=hub.url,
                hub_key=hub_key,
                enrolment_token=enrolment_token,
                key_dir=folder / "keys" / code,
                key_passphrase=secrets.token_urlsafe(24).encode(),  # its own, never the hub's
                systems=default_systems(tokens[code]),
                port=free_port(),
                timing=timing,
                tls=_tls_identity(pki, code),
            )
            assert config.tls is not None
            role = "requester" if code == REQUESTER else "provider"
            gateway_file = gateway_toml(
                code=code,
                name=name,
                host=config.host,
                port=config.port,
                database=_database(folder, database_url, f"{code}-db-password"),
                key_dir=str(config.key_dir),
                passphrase_file=_secret(folder, f"{code}-key-passphrase", config.key_passphrase),
                hub_url=hub.url,
                hub_key=hub_key,
                enrolment_token_file=_secret(folder, f"{code}-enrolment-token", enrolment_token),
                systems=config.systems,
                tls=_tls_files(folder, code, config.tls),
                timing=gateway_timing,
            )
            gateways[code] = ServerProcess(role, "gateway", folder, config, gateway_file)
            stack.push_async_callback(gateways[code].terminate)
        await asyncio.gather(*(gateway.start() for gateway in gateways.values()))

        contexts: dict[str, ssl.SSLContext] = {"hub-operator": pki.client_context(HUB_OPERATOR)}
        for code, gateway in gateways.items():
            assert isinstance(gateway.config, GatewayConfig)
            core = next(s for s in gateway.config.systems if s.system_id == CORE_SYSTEM)
            contexts[code] = pki.system_context(code, CORE_SYSTEM, core.operations)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
        )
        yield Cluster(
            folder=folder,
            pki=pki,
            postgres=postgres,
            proxy=proxy,
            hub=hub,
            gateways=gateways,
            admin_token=admin_token,
            key_passphrase=passphrase,
            gateway_admin_url=admin_url,
            hub_database_url=hub_url,
            session=session,
            contexts=contexts,
        )
