"""Running a server on a socket: the gateway's, and (through the same code) the simulators'.

The socket is bound before the application is built, so that the URL the hub
uses to reach a gateway (with an ephemeral port in tests) is known at start-up.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from aiohttp import web

from chukan.gateway.app import create_gateway_app
from chukan.gateway.core.config import GatewayConfig


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before building the app so the endpoint (with an ephemeral port) is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
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
    app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> RunningServer:
    sock = bind_socket(host, port)
    return await serve_on(app, sock, ssl_context=ssl_context)


def socket_url(sock: socket.socket, *, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def serve_on(
    app: web.Application, sock: object, *, ssl_context: ssl.SSLContext | None = None
) -> RunningServer:
    assert isinstance(sock, socket.socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    return RunningServer(runner, socket_url(sock, tls=ssl_context is not None))


async def start_gateway(config: GatewayConfig) -> RunningServer:
    sock = bind_socket(config.host, config.port)
    tls = config.tls is not None
    app = create_gateway_app(config, socket_url(sock, tls=tls))
    try:
        context = None if config.tls is None else config.tls.server_context()
        return await serve_on(app, sock, ssl_context=context)
    except BaseException:  # e.g. the hub refused enrolment: nothing is left listening
        sock.close()
        raise


async def wait_forever() -> None:
    await asyncio.Event().wait()
