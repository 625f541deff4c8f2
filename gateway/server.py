"""Starting and stopping real servers: the hub and gateways on loopback ports.

Used by the demo, ``chukan serve``, the benchmarks and the integration tests
alike, so that what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.keys import PublicSigningKey
from chukan.simulators.hub import HUB_DATABASE, HUB_STATE, HubConfig, create_hub_app

from . import db
from .app import bind_socket, create_gateway_app
from .config import ALL_OPERATIONS, GatewayConfig, SystemCredential, Timing, token_digest
from .state import GATEWAY_STATE, GatewayState

DEMO_AGENCIES: Final = ((CHIBA_CITY, "千葉市"), (FUNABASHI_CITY, "船橋市"))
CORE_SYSTEM: Final = "kaigo-system"  # 介護保険システム
GATEWAY_DATABASE: Final = "chukan_gateway"


@dataclass
class RunningServer:
    runner: web.AppRunner
    url: str

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, host: str, port: int) -> RunningServer:
    sock = bind_socket(host, port)
    return await serve_on(app, sock)


async def serve_on(app: web.Application, sock: object) -> RunningServer:
    import socket as _socket

    assert isinstance(sock, _socket.socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(runner, f"http://{shown}:{port}")


@dataclass
class Gateway:
    server: RunningServer
    config: GatewayConfig
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> GatewayState:
        return self.server.app[GATEWAY_STATE]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Network:
    """The whole offline network: a hub and one gateway per agency, on one PostgreSQL."""

    server_url: str
    hub: RunningServer
    hub_config: HubConfig
    gateways: dict[str, Gateway] = field(default_factory=dict)
    work_dir: Path | None = None
    #: One database for every agency's gateway: tenants are isolated by row-level security.
    gateway_database: str = GATEWAY_DATABASE

    @property
    def hub_key(self) -> PublicSigningKey:
        return self.hub.app[HUB_STATE].keys.signing.public

    async def add_gateway(
        self,
        code: str,
        name: str,
        *,
        timing: Timing | None = None,
        systems: tuple[SystemCredential, ...] | None = None,
        database: str | None = None,
    ) -> Gateway:
        assert self.work_dir is not None
        token = secrets.token_urlsafe(24)
        admin_url = await db.ensure_database(self.server_url, database or self.gateway_database)
        await db.migrate_url(admin_url, "chukan.gateway")
        tenant_url = await db.provision_tenant(admin_url, code, name)
        config = GatewayConfig(
            agency_code=code,
            agency_name=name,
            database_url=tenant_url,
            migration_database_url=admin_url,
            hub_url=self.hub.url,
            hub_key=self.hub_key,
            enrolment_token=self.hub_config.admin_token,
            key_dir=self.work_dir / "keys" / code,
            key_passphrase=self.hub_config.key_passphrase,
            systems=systems
            if systems is not None
            else (SystemCredential(CORE_SYSTEM, token_digest(token), ALL_OPERATIONS),),
            timing=timing or Timing(),
        )
        gateway = await start_gateway(config)
        self.gateways[code] = Gateway(gateway, config, token)
        return self.gateways[code]

    async def stop(self) -> None:
        for gateway in list(self.gateways.values()):
            await gateway.server.stop()
        self.gateways.clear()
        await self.hub.stop()


async def start_gateway(config: GatewayConfig) -> RunningServer:
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_gateway_app(config, f"http://{shown}:{port}")
    return await serve_on(app, sock)


async def start_network(
    server_url: str,
    work_dir: Path,
    *,
    agencies: tuple[tuple[str, str], ...] = DEMO_AGENCIES,
    hub_database: str = HUB_DATABASE,
    gateway_database: str = GATEWAY_DATABASE,
    hub_overrides: dict[str, object] | None = None,
    timing: Timing | None = None,
) -> Network:
    """Start the hub, then each agency's gateway (which enrols itself with the hub)."""
    hub_url = await db.ensure_database(server_url, hub_database)
    hub_config = HubConfig(
        database_url=hub_url,
        key_dir=work_dir / "keys" / "hub",
        key_passphrase=secrets.token_urlsafe(24).encode(),
        admin_token=secrets.token_urlsafe(24),
        **(hub_overrides or {}),  # type: ignore[arg-type]
    )
    hub = await serve(create_hub_app(hub_config), hub_config.host, hub_config.port)
    network = Network(
        server_url, hub, hub_config, work_dir=work_dir, gateway_database=gateway_database
    )
    try:
        for code, name in agencies:
            await network.add_gateway(code, name, timing=timing)
    except BaseException:
        await network.stop()
        raise
    return network


async def wait_forever() -> None:
    await asyncio.Event().wait()
