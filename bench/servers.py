"""Servers for the HTTP benches, each its own OS process: the offline network and a bare echo.

:func:`running_network` starts the network exactly as ``chukan serve`` does (one
process per server, from the files an operator writes) in a fresh folder, on the
embedded PostgreSQL unless ``CHUKAN_DATABASE_URL`` names one.  A gateway can be
restarted as several worker processes on one port (``reuse_port``), and any
server can be pinned to one CPU, so that "one core" means one core.

:func:`echo_servers` is the baseline: a bare aiohttp application that answers
each request with its body, over the same mutual TLS (the same server
certificate, the same client verification).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bench.harness import database_server
from bench.loadgen import TlsFiles
from chukan.gateway.cli.pki import CA_CERT
from chukan.keys.tls import server_context
from chukan.simulators.devnet.ports import free_port
from chukan.simulators.devnet.serve import (
    Child,
    Devnet,
    Layout,
    start_child,
    start_devnet,
    stop_children,
    wait_healthy,
)


@dataclass
class Network:
    """The running network's folder and processes."""

    devnet: Devnet
    server_url: str
    #: the embedded PostgreSQL's data folder (None: a server named by CHUKAN_DATABASE_URL)
    pg_dir: Path | None = None

    @property
    def layout(self) -> Layout:
        return self.devnet.layout

    def tls(self, name: str) -> TlsFiles:
        """A client identity's PEM files (``hub``, ``<code>.kaigo-system``)."""
        layout = self.layout
        return TlsFiles(
            str(layout.pki / CA_CERT),
            str(layout.cert(name, "client")),
            str(layout.key(name, "client")),
        )

    def server_tls(self, name: str) -> tuple[str, str, str]:
        layout = self.layout
        return (
            str(layout.pki / CA_CERT),
            str(layout.cert(name, "server")),
            str(layout.key(name, "server")),
        )

    def gateway(self, code: str) -> list[Child]:
        return [c for c in self.devnet.children if c.kind == "gateway" and c.name.startswith(code)]

    def pids(self, name: str) -> list[int]:
        """The processes of ``name``: an agency code's gateway workers, or ``hub``."""
        children = (
            [c for c in self.devnet.children if c.kind == "hub"]
            if name == "hub"
            else self.gateway(name)
        )
        return [c.process.pid for c in children if c.process is not None]

    def url(self, code: str) -> str:
        return self.gateway(code)[0].url

    async def set_workers(self, code: str, workers: int, cpus: set[int] | None) -> None:
        """Run ``code``'s gateway as ``workers`` processes sharing its port, on ``cpus``."""
        children = self.gateway(code)
        await stop_children(children)
        for child in children:
            self.devnet.children.remove(child)
        config = self.layout.toml(code)
        text = config.read_text(encoding="utf-8")
        if "reuse_port" not in text:
            text = text.replace("[server]\n", "[server]\nreuse_port = true\n", 1)
            config.write_text(text, encoding="utf-8")
        first = children[0]
        context = self.tls(f"{code}.kaigo-system").context()
        for index in range(workers):
            child = Child(f"{first.name} #{index + 1}", "gateway", first.url, self.layout.log(code))
            start_child(child, config)
            self.devnet.children.append(child)
            assert child.process is not None
            if cpus is not None:
                os.sched_setaffinity(child.process.pid, cpus)
            await wait_healthy(child, context, 120)


@asynccontextmanager
async def running_network() -> AsyncIterator[Network]:
    async with database_server("chukan-bench-") as server:
        devnet = Devnet(Layout(server.work / "devnet"))
        try:
            await start_devnet(devnet, server.url)
            yield Network(devnet, server.url, server.data_dir)
        finally:
            await stop_children(devnet.children)


# -- the bare echo ------------------------------------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/xml")


def _serve_echo(port: int, tls: tuple[str, str, str], cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ca, cert, key = (Path(p).read_bytes() for p in tls)
    app = web.Application()
    app.router.add_post("/{tail:.*}", _echo)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app, sock=sock, ssl_context=server_context(ca, cert, key), print=None)


@dataclass(frozen=True)
class Echo:
    url: str
    pids: list[int]


@asynccontextmanager
async def echo_servers(
    tls: tuple[str, str, str], processes: int = 1, cpus: list[int] | None = None
) -> AsyncIterator[Echo]:
    """``processes`` echo servers sharing one port."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_serve_echo, args=(port, tls, None if cpus is None else cpus[i % len(cpus)])
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        for _ in range(200):  # listening?
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                writer.close()
                break
        await asyncio.sleep(0.5)  # every process has bound the port
        yield Echo(f"https://localhost:{port}", [c.pid for c in children if c.pid is not None])
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(10)


# -- CPU accounting -----------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used (Linux ``/proc``); 0 for one gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def postgres_pids(data_dir: Path | None) -> list[int]:
    """The embedded PostgreSQL's processes (postmaster and children); none for another server."""
    if data_dir is None:
        return []
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = (entry / "stat").read_text().rpartition(")")[2].split()[1]
        except (OSError, IndexError):
            continue
        if int(parent) == postmaster:
            pids.append(int(entry.name))
    return pids
