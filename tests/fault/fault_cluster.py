"""The fault suite's cluster: its own PostgreSQL, the hub and two gateways as OS processes.

The test process is the operator.  It creates the run's CA and every
configuration, writes each server's configuration to a file and starts it with
``fault_serve.py`` (one OS process per server; a fixed loopback port once the
first start picked one), and can then kill (SIGKILL), pause (SIGSTOP/SIGCONT)
and restart any server with the same configuration, keys and database, stop
and start PostgreSQL on the same port and data folder, and slow down the
provider's database traffic through a :class:`DelayProxy`.

Nothing here replaces a component of ours: the servers are the product's own
``start_gateway`` and hub application, only launched from a test-side script
until they have commands of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pickle
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core import db
from chukan.gateway.core.config import GatewayConfig, Timing
from chukan.gateway.core.identities import HUB_IDENTITY, HUB_OPERATOR, agency_host
from chukan.gateway.core.tls import TlsSettings
from chukan.keys import PublicSigningKey, b64d
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.network import CORE_SYSTEM, default_systems
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS, NetworkPki
from chukan.simulators.hub import HUB_DATABASE, HubConfig

SERVE_SCRIPT: Final = Path(__file__).resolve().parent / "fault_serve.py"
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


def known_fields(cls: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to the fields ``cls`` has (settings land while the suite exists)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@dataclass
class ServerProcess:
    """One server (``hub`` or ``gateway``) run by ``fault_serve.py`` as its own OS process."""

    name: str
    kind: str
    folder: Path
    config: HubConfig | GatewayConfig
    process: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    starts: int = 0
    kills: int = 0
    paused: bool = False

    @property
    def config_file(self) -> Path:
        return self.folder / f"{self.name}.config"

    @property
    def ready_file(self) -> Path:
        return self.folder / f"{self.name}.ready"

    @property
    def log_file(self) -> Path:
        """structlog JSON events, appended across restarts."""
        return self.folder / f"{self.name}.log"

    @property
    def stderr_file(self) -> Path:
        return self.folder / f"{self.name}.stderr"

    @property
    def url(self) -> str:
        url: str = self.ready["url"]
        return url

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, limit: float = 60.0) -> float:
        """Start (again) with the same configuration; returns the seconds until ready."""
        assert not self.running, f"{self.name} is already running"
        self.config_file.write_bytes(pickle.dumps(self.config))
        self.ready_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            str(SERVE_SCRIPT),
            self.kind,
            str(self.config_file),
            str(self.ready_file),
            str(self.log_file),
            str(os.getpid()),
        ]
        self.process = spawn(command, self.stderr_file, cwd=self.folder)
        self.starts += 1
        self.paused = False
        took = await until(self._is_ready, limit, f"start of {self.name}", interval=0.05)
        self.ready = json.loads(self.ready_file.read_text(encoding="utf-8"))
        if self.config.port == 0:  # keep the port: a restart comes back at the same URL
            port = int(self.url.rsplit(":", 1)[1])
            self.config = dataclasses.replace(self.config, port=port)
        return took

    async def _is_ready(self) -> bool:
        if self.ready_file.exists():
            return True
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServerDiedError(
                f"{self.name} exited with status {self.process.returncode} before it was "
                f"ready; stderr:\n{tail(self.stderr_file)}\nlog:\n{tail(self.log_file, 10)}"
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


@contextlib.asynccontextmanager
async def running_cluster(folder: Path) -> AsyncIterator[Cluster]:
    """Start everything; on exit terminate every process started, whatever happened."""
    async with contextlib.AsyncExitStack() as stack:
        postgres = Postgres(folder / "pg", free_port(), folder / "postgres.log")
        await postgres.initialise()
        stack.push_async_callback(postgres.stop)
        await postgres.start()

        hub_url = await db.ensure_database(postgres.url, HUB_DATABASE)
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
            migration_database_url=hub_url,
            key_dir=folder / "keys" / "hub",
            key_passphrase=passphrase,
            admin_token=admin_token,
            tls=pki.settings("hub", HUB_IDENTITY),
        )
        hub_config = dataclasses.replace(hub_config, **known_fields(HubConfig, HUB_TIMING))
        hub = ServerProcess("hub", "hub", folder, hub_config)
        stack.push_async_callback(hub.terminate)
        await hub.start()
        hub_key = PublicSigningKey(
            hub.ready["hub_key"]["key_id"], b64d(hub.ready["hub_key"]["raw"])
        )

        # The provider reaches PostgreSQL through the proxy (scenario e slows it down).
        proxy = DelayProxy(postgres.port)
        proxy.start()
        stack.callback(proxy.stop)

        timing = dataclasses.replace(Timing(), **known_fields(Timing, GATEWAY_TIMING))
        gateways: dict[str, ServerProcess] = {}
        tokens: dict[str, str] = {}
        for code, name in AGENCY_NAMES.items():
            tokens[code] = secrets.token_urlsafe(24)
            database_url = tenant_urls[code]
            if code == PROVIDER:
                database_url = with_port(database_url, proxy.port)
            config = GatewayConfig(
                agency_code=code,
                agency_name=name,
                database_url=database_url,
                migration_database_url=admin_url,
                hub_url=hub.url,
                hub_key=hub_key,
                enrolment_token=await _issue_enrolment_token(hub.url, admin_token, pki, code),
                key_dir=folder / "keys" / code,
                key_passphrase=secrets.token_urlsafe(24).encode(),  # its own, never the hub's
                systems=default_systems(tokens[code]),
                timing=timing,
                tls=_tls_identity(pki, code),
            )
            role = "requester" if code == REQUESTER else "provider"
            gateways[code] = ServerProcess(role, "gateway", folder, config)
            stack.push_async_callback(gateways[code].terminate)
        # One at a time: both would apply the (already applied) migrations at once.
        for gateway in gateways.values():
            await gateway.start()

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
