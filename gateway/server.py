"""Starting and stopping real servers: the hub and gateways on loopback ports.

Used by the demo, ``chukan serve``, the benchmarks and the integration tests
alike, so that what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.keys import PublicSigningKey, b64e
from chukan.simulators.hub import HUB_DATABASE, HUB_STATE, HubConfig, create_hub_app
from chukan.simulators.kokuhoren import (
    KOKUHOREN_DATABASE,
    KOKUHOREN_STATE,
    KokuhorenConfig,
    create_kokuhoren_app,
)

from . import db
from .app import bind_socket, create_gateway_app
from .config import (
    ALL_OPERATIONS,
    GatewayConfig,
    KokuhorenLink,
    SystemCredential,
    Timing,
    token_digest,
)
from .state import GATEWAY_STATE, GatewayState

DEMO_AGENCIES: Final = ((CHIBA_CITY, "千葉市"), (FUNABASHI_CITY, "船橋市"))
#: 介護保険 保険者番号 of the demo agencies (6 digits, the last a check digit).
DEMO_INSURERS: Final = {CHIBA_CITY: "122010", FUNABASHI_CITY: "122044"}
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
    #: The 国保連 simulator (its 伝送 mailbox), when the network has one.
    kokuhoren: RunningServer | None = None
    kokuhoren_config: KokuhorenConfig | None = None

    @property
    def hub_key(self) -> PublicSigningKey:
        return self.hub.app[HUB_STATE].keys.signing.public

    def _kokuhoren_link(self) -> KokuhorenLink | None:
        if self.kokuhoren is None:
            return None
        keys = self.kokuhoren.app[KOKUHOREN_STATE].keys
        return KokuhorenLink(
            url=self.kokuhoren.url,
            token=secrets.token_urlsafe(24),
            encryption_key=keys.encryption.public,
            signing_key=keys.signing.public,
        )

    async def register_insurer(self, gateway: Gateway) -> None:
        """Onboard a gateway's 保険者 at the 国保連 mailbox (token digest and public keys)."""
        link, number = gateway.config.kokuhoren, gateway.config.insurer_number
        if self.kokuhoren is None or self.kokuhoren_config is None or link is None or not number:
            return
        keys = gateway.state.keys
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"{self.kokuhoren.url}/admin/v1/insurers/{number}",
                json={
                    "name": gateway.config.agency_name,
                    "token_sha256": token_digest(link.token),
                    "signing_key": {
                        "key_id": keys.signing.key_id,
                        "public": b64e(keys.signing.public.raw),
                    },
                    "encryption_key": {
                        "key_id": keys.encryption.key_id,
                        "public": b64e(keys.encryption.public.raw),
                    },
                },
                headers={"Authorization": f"Bearer {self.kokuhoren_config.admin_token}"},
            ) as response,
        ):
            if response.status not in (200, 201):
                raise RuntimeError(f"国保連 refused the 保険者 {number}: HTTP {response.status}")

    async def start_kokuhoren(self) -> RunningServer:
        """Start the 国保連 simulator (again): the same database, keys and port as before."""
        assert self.kokuhoren_config is not None
        config = self.kokuhoren_config
        self.kokuhoren = await serve(create_kokuhoren_app(config), config.host, config.port)
        if config.port == 0:  # keep the port, so gateways reach it after a restart
            port = int(self.kokuhoren.url.rsplit(":", 1)[1])
            self.kokuhoren_config = dataclasses.replace(config, port=port)
        return self.kokuhoren

    async def stop_kokuhoren(self) -> None:
        """Stop the 国保連 simulator (its mailbox goes down); gateways keep running."""
        if self.kokuhoren is not None:
            await self.kokuhoren.stop()
            self.kokuhoren = None

    async def add_gateway(
        self,
        code: str,
        name: str,
        *,
        timing: Timing | None = None,
        systems: tuple[SystemCredential, ...] | None = None,
        database: str | None = None,
        insurer_number: str | None = None,
    ) -> Gateway:
        assert self.work_dir is not None
        insurer_number = insurer_number or DEMO_INSURERS.get(code)
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
            insurer_number=insurer_number,
            kokuhoren=self._kokuhoren_link() if insurer_number else None,
        )
        gateway = await start_gateway(config)
        self.gateways[code] = Gateway(gateway, config, token)
        await self.register_insurer(self.gateways[code])
        return self.gateways[code]

    async def stop(self) -> None:
        for gateway in list(self.gateways.values()):
            await gateway.server.stop()
        self.gateways.clear()
        await self.stop_kokuhoren()
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
    kokuhoren: bool = True,
    kokuhoren_database: str = KOKUHOREN_DATABASE,
) -> Network:
    """Start the hub (and the 国保連 simulator), then each agency's gateway.

    Gateways enrol themselves with the hub; those with a 保険者番号 are onboarded
    at the 国保連 mailbox with a token and their public keys.
    """
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
        if kokuhoren:
            network.kokuhoren_config = KokuhorenConfig(
                database_url=await db.ensure_database(server_url, kokuhoren_database),
                key_dir=work_dir / "keys" / "kokuhoren",
                key_passphrase=secrets.token_urlsafe(24).encode(),
                admin_token=secrets.token_urlsafe(24),
            )
            await network.start_kokuhoren()
        for code, name in agencies:
            await network.add_gateway(code, name, timing=timing)
    except BaseException:
        await network.stop()
        raise
    return network


async def wait_forever() -> None:
    await asyncio.Event().wait()
