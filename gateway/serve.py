"""Running a server on a socket: the gateway's, and (through the same code) the simulators'.

The socket is bound before the application is built, so that the URL the hub
uses to reach a gateway (with an ephemeral port in tests) is known at start-up.

:func:`serve_command` is what ``chukan gateway serve``, ``chukan hub serve`` and
``chukan kokuhoren serve`` share: read the TOML file, start, log
``server_started`` with the URL, and on SIGTERM or SIGINT stop gracefully
(:func:`run_until_signal`): stop accepting, let in-flight requests finish for up
to ``--shutdown-timeout`` seconds (long-polls answer at once with the state as
it is), run the application's cleanup (background tasks, pools, sessions), and
exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import structlog
import uvloop
from aiohttp import web

from chukan.gateway.app import create_gateway_app
from chukan.gateway.core import db
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.core.tls import TlsSettings

log = structlog.get_logger("chukan.serve")

#: The levels ``--log-level`` accepts (any other is refused, exit status 2).
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: A server's level when neither ``chukan --log-level`` nor the command's is given.
DEFAULT_SERVER_LOG_LEVEL: Final = "INFO"
#: aiohttp's own default: how long in-flight requests may run once a stop has begun.
RUNNER_SHUTDOWN_TIMEOUT: Final = 60.0
#: The servers' commands wait less: an orchestrator's grace period is often 30 s.
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
#: The event loops a server may run on (``serve --event-loop``).  uvloop (libuv, with its
#: own TLS transport) took 10-20 % less CPU per query than asyncio's own loop in every
#: server of the end-to-end bench (docs/performance.md); asyncio's stays available, e.g.
#: to rule uvloop out when diagnosing.
EVENT_LOOPS: Final[dict[str, Callable[[], asyncio.AbstractEventLoop]]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
DEFAULT_EVENT_LOOP: Final = "uvloop"
#: Exit statuses of the servers' commands.
EXIT_CONFIG: Final = 2
EXIT_START_FAILED: Final = 1

C = TypeVar("C")


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind before building the app so the endpoint (with an ephemeral port) is known.

    ``reuse_port``: ``SO_REUSEPORT``, so that several worker processes of one agency
    bind the same port and the kernel spreads the connections over them (each
    process must set it; a process without it is refused the port).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise OSError("reuse_port: this system has no SO_REUSEPORT")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:  # e.g. the port is taken: no socket is left open
        sock.close()
        raise
    return sock


@dataclass
class RunningServer:
    runner: web.AppRunner
    url: str

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = RUNNER_SHUTDOWN_TIMEOUT,
) -> RunningServer:
    sock = bind_socket(host, port)
    try:
        return await serve_on(app, sock, ssl_context=ssl_context, shutdown_timeout=shutdown_timeout)
    except BaseException:  # a failed start leaves nothing listening
        sock.close()
        raise


def socket_url(sock: socket.socket, *, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def serve_on(
    app: web.Application,
    sock: object,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = RUNNER_SHUTDOWN_TIMEOUT,
) -> RunningServer:
    assert isinstance(sock, socket.socket)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    return RunningServer(runner, socket_url(sock, tls=ssl_context is not None))


async def start_gateway(
    config: GatewayConfig, *, shutdown_timeout: float = RUNNER_SHUTDOWN_TIMEOUT
) -> RunningServer:
    """Start one gateway process's server; it enrols ``config.public_endpoint`` if set."""
    sock = bind_socket(config.host, config.port, reuse_port=config.reuse_port)
    tls = config.tls is not None
    app = create_gateway_app(config, socket_url(sock, tls=tls))
    try:
        context = None if config.tls is None else config.tls.server_context()
        return await serve_on(app, sock, ssl_context=context, shutdown_timeout=shutdown_timeout)
    except BaseException:  # e.g. the hub refused enrolment: nothing is left listening
        sock.close()
        raise


async def wait_forever() -> None:
    await asyncio.Event().wait()


# -- one server per process: the servers' commands ------------------------------------------


def log_level(name: str) -> str:
    """``--log-level``'s type: any case; argparse's ``choices`` then refuses unknown levels."""
    return name.upper()


def add_serve_command(
    commands: Any,
    command: str,
    *,
    what: str,
    group_help: str,
    serve_help: str,
    description: str,
    migrate_help: str,
) -> Any:
    """Add ``chukan <command> serve`` with the options every server takes (in its ``--help``);
    returns the command's sub-parsers, for its other actions."""
    group = commands.add_parser(command, help=group_help)
    actions = group.add_subparsers(dest="action", required=True)
    parser = actions.add_parser("serve", help=serve_help, description=description)
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE.toml",
        help=f"the {what}'s TOML configuration file (README: 'Running each server on its own')",
    )
    parser.add_argument(
        "--migrate",
        action="store_true",
        help=migrate_help,
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help=f"events at this level and above, as JSON lines on stderr "
        f"(default: chukan --log-level, else {DEFAULT_SERVER_LOG_LEVEL})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may still run before they are "
        f"cancelled (default {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--event-loop",
        choices=sorted(EVENT_LOOPS),
        default=DEFAULT_EVENT_LOOP,
        help=f"the event loop to run on (default {DEFAULT_EVENT_LOOP})",
    )
    return actions


async def run_until_signal(start: Callable[[], Awaitable[RunningServer]], *, name: str) -> None:
    """Start a server, serve until SIGTERM or SIGINT, then stop it gracefully.

    A signal during start-up (a gateway waiting for its hub) cancels the start,
    which releases what it had opened.  The stop drains in-flight requests (the
    runner's shutdown timeout) and runs the application's cleanup.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        starting = asyncio.ensure_future(start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("server_start_abandoned", server=name)
            return
        stopping.cancel()
        server = starting.result()
        log.info("server_started", server=name, url=server.url, pid=os.getpid())
        await stop.wait()
        log.info("server_stopping", server=name, url=server.url)
        await server.stop()
        log.info("server_stopped", server=name)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


class ServedConfig(Protocol):
    """What a server's configuration says about where and how it listens."""

    @property
    def database_url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> TlsSettings | None: ...


S = TypeVar("S", bound=ServedConfig)


def app_starter(
    create_app: Callable[[S], web.Application], component: str
) -> Callable[[S, argparse.Namespace], Awaitable[RunningServer]]:
    """How ``serve`` starts a server whose app is ``create_app(config)``: with ``--migrate``
    the ``component``'s migrations (``db.COMPONENTS``) are applied through its database first."""

    async def start(config: S, args: argparse.Namespace) -> RunningServer:
        if args.migrate:
            known = db.COMPONENTS[component]
            await db.migrate_url(config.database_url, known.package, known.folder)
        return await serve(
            create_app(config),
            config.host,
            config.port,
            ssl_context=None if config.tls is None else config.tls.server_context(),
            shutdown_timeout=args.shutdown_timeout,
        )

    return start


def serve_command(
    args: argparse.Namespace,
    name: str,
    load: Callable[[Path], C],
    start: Callable[[C, argparse.Namespace], Awaitable[RunningServer]],
) -> int:
    """``chukan <name> serve``: load the file, run until a signal; the process's exit status.

    A configuration the reader refuses exits 2 with its message (file, table,
    key); a start that fails (database, hub, keys) exits 1; a graceful stop 0.
    """
    level = getattr(args, "log_level", None) or DEFAULT_SERVER_LOG_LEVEL
    configure_logging(logging.getLevelNamesMapping()[level], cache=True)
    try:
        config = load(args.config)
    except GatewayError as exc:  # ConfigFileError and its kinds
        print(f"chukan {name} serve: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        loop_factory = EVENT_LOOPS[getattr(args, "event_loop", DEFAULT_EVENT_LOOP)]
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run_until_signal(lambda: start(config, args), name=name))
    except Exception as exc:  # database, hub, keys, port in use: one line, exit status 1
        text = exc.message if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
        log.error("server_start_failed", server=name, error=text, kind=type(exc).__name__)
        print(f"chukan {name} serve: cannot start: {text}", file=sys.stderr)
        return EXIT_START_FAILED
    return 0
