"""Starting and stopping real servers: the hub and gateways on loopback ports.

Used by the demo, the benchmarks, the pytest plugin and the integration tests
alike, so that what is tested is what runs.

By default everything speaks mutual TLS: :func:`start_network` creates a local
CA (:class:`~chukan.simulators.devnet.pki.NetworkPki`, in memory, for this run only) and
issues a server certificate to every server and a client certificate to every
gateway (kind ``agency``) and to the hub (kind ``hub``).  Core systems call a
gateway with :meth:`Gateway.client_ssl` (a certificate of kind ``system`` whose
roles are the operations granted).  ``tls=False`` gives plain HTTP, for a
benchmark baseline only.

Each agency holds only its own secrets: the harness, as the hub operator would,
issues the agency's enrolment token through the hub's admin API and generates
the agency's own key passphrase (:class:`AgencyCredentials`).  No gateway ever
gets the hub's admin token or key passphrase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core import db
from chukan.gateway.core.config import (
    ADMIN_OPERATIONS,
    ALL_OPERATIONS,
    OP_PERSON_LIFECYCLE,
    OP_READ_RECORDS,
    OP_REGISTER_PERSON,
    GatewayConfig,
    KokuhorenLink,
    SystemCredential,
    Timing,
    token_digest,
)
from chukan.gateway.core.identities import HUB_IDENTITY, HUB_OPERATOR, agency_host
from chukan.gateway.core.keyring import current_keys_json
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.serve import RunningServer, serve, start_gateway
from chukan.keys import PublicSigningKey
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.pki import LOOPBACK_HOSTS, NetworkPki
from chukan.simulators.hub import HUB_DATABASE, HUB_STATE, HubConfig, create_hub_app
from chukan.simulators.kokuhoren import (
    KOKUHOREN_DATABASE,
    KOKUHOREN_STATE,
    KokuhorenConfig,
    create_kokuhoren_app,
)

DEMO_AGENCIES: Final = ((CHIBA_CITY, "千葉市"), (FUNABASHI_CITY, "船橋市"))
#: 介護保険 保険者番号 of the demo agencies (6 digits, the last a check digit).
DEMO_INSURERS: Final = {CHIBA_CITY: "122010", FUNABASHI_CITY: "122044"}
CORE_SYSTEM: Final = "kaigo-system"  # 介護保険システム
#: 団体内統合宛名システム: registers people and reports their events (certificate only).
ATENA_SYSTEM: Final = "atena-system"
#: Operators' console: status, authorization-list refresh, key reload (certificate only).
OPERATOR_SYSTEM: Final = "ops-console"
#: A reporting system that may only read provision records (certificate only).
REPORTING_SYSTEM: Final = "reporting-system"


@dataclass(frozen=True, slots=True)
class AgencyCredentials:
    """One agency's own secrets: its enrolment token at the hub and its key-ring passphrase.

    Made once per agency code and reused when a gateway of that agency is added
    again (its ring on disk opens only with the same passphrase).
    """

    enrolment_token: str
    key_passphrase: bytes

    def __repr__(self) -> str:  # never print either
        return "AgencyCredentials(<secret>)"


@dataclass
class Gateway:
    server: RunningServer
    config: GatewayConfig
    token: str
    pki: NetworkPki | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def client_ssl(self, system_id: str = CORE_SYSTEM) -> ssl.SSLContext | None:
        """TLS context of one of this agency's configured core systems (None without TLS).

        The certificate's roles are the operations configured for the system.
        """
        if self.pki is None:
            return None
        system = next((s for s in self.config.systems if s.system_id == system_id), None)
        if system is None:
            raise ValueError(f"{system_id} is not a core system of {self.config.agency_code}")
        return self.pki.system_context(self.config.agency_code, system_id, system.operations)

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
    #: The run's local CA; None when the network speaks plain HTTP.
    pki: NetworkPki | None = None
    #: The 国保連 simulator (its 伝送 mailbox), when the network has one.
    kokuhoren: RunningServer | None = None
    kokuhoren_config: KokuhorenConfig | None = None
    #: Each agency's own enrolment token and key passphrase, by agency code.
    credentials: dict[str, AgencyCredentials] = field(default_factory=dict, repr=False)

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
        context = self.anonymous_ssl()
        connector = None if context is None else aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.put(
                f"{self.kokuhoren.url}/admin/v1/insurers/{number}",
                json={
                    "name": gateway.config.agency_name,
                    "agency_code": gateway.config.agency_code,
                    "token_sha256": token_digest(link.token),
                    **current_keys_json(keys),
                },
                headers={"Authorization": f"Bearer {self.kokuhoren_config.admin_token}"},
            ) as response,
        ):
            if response.status not in (200, 201):
                raise RuntimeError(f"国保連 refused the 保険者 {number}: HTTP {response.status}")

    async def issue_enrolment_token(self, code: str) -> str:
        """The hub operator issues agency ``code``'s enrolment token (rotating any earlier one).

        Done as an operator does it: ``POST /admin/v1/agencies/{code}/enrolment-token``
        with the admin token and the operator's client certificate.
        """
        context = self.hub_operator_ssl()
        connector = None if context is None else aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"{self.hub.url}/admin/v1/agencies/{code}/enrolment-token",
                headers={"Authorization": f"Bearer {self.hub_config.admin_token}"},
            ) as response,
        ):
            if response.status != 201:
                raise RuntimeError(
                    f"the hub refused an enrolment token for {code}: HTTP {response.status}"
                )
            token = (await response.json())["token"]
        assert isinstance(token, str)
        return token

    async def agency_credentials(self, code: str) -> AgencyCredentials:
        """Agency ``code``'s own secrets: issued and generated the first time, then kept."""
        known = self.credentials.get(code)
        if known is None:
            known = AgencyCredentials(
                enrolment_token=await self.issue_enrolment_token(code),
                key_passphrase=secrets.token_urlsafe(24).encode(),
            )
            self.credentials[code] = known
        return known

    async def start_kokuhoren(self) -> RunningServer:
        """Start the 国保連 simulator (again): the same database, keys and port as before."""
        assert self.kokuhoren_config is not None
        config = self.kokuhoren_config
        self.kokuhoren = await serve(
            create_kokuhoren_app(config),
            config.host,
            config.port,
            ssl_context=None if self.pki is None else self.pki.server_context("kokuhoren"),
        )
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
        hub_key: PublicSigningKey | None = None,
        insurer_number: str | None = None,
    ) -> Gateway:
        assert self.work_dir is not None
        insurer_number = insurer_number or DEMO_INSURERS.get(code)
        token = secrets.token_urlsafe(24)
        tls = (
            None
            if self.pki is None
            else self.pki.settings(
                code, ClientIdentity("agency", code), (*LOOPBACK_HOSTS, agency_host(code))
            )
        )
        admin_url = await db.ensure_database(self.server_url, database or self.gateway_database)
        await db.migrate_url(admin_url, "chukan.gateway")
        tenant_url = await db.provision_tenant(admin_url, code, name)
        credentials = await self.agency_credentials(code)
        config = GatewayConfig(
            agency_code=code,
            agency_name=name,
            database_url=tenant_url,
            migration_database_url=admin_url,
            hub_url=self.hub.url,
            hub_key=hub_key or self.hub_key,
            enrolment_token=credentials.enrolment_token,
            key_dir=self.work_dir / "keys" / code,
            key_passphrase=credentials.key_passphrase,
            systems=systems if systems is not None else default_systems(token),
            timing=timing or Timing(),
            tls=tls,
            insurer_number=insurer_number,
            kokuhoren=self._kokuhoren_link() if insurer_number else None,
        )
        gateway = await start_gateway(config)
        self.gateways[code] = Gateway(gateway, config, token, self.pki)
        await self.register_insurer(self.gateways[code])
        return self.gateways[code]

    @contextlib.asynccontextmanager
    async def gateway_stopped(self, code: str) -> AsyncIterator[Gateway]:
        """Stop one gateway for the block, then start it again (same config, keys, database).

        It listens on the same port again when it can, and re-enrols with the hub
        either way; the :class:`Gateway` object is updated in place.
        """
        gateway = self.gateways[code]
        port = int(gateway.url.rsplit(":", 1)[1])
        await gateway.server.stop()
        try:
            yield gateway
        finally:
            try:
                gateway.server = await start_gateway(dataclasses.replace(gateway.config, port=port))
            except OSError:  # the port was taken meanwhile
                gateway.server = await start_gateway(gateway.config)
            # Its keys may have been rotated meanwhile: tell the 国保連 mailbox too.
            await self.register_insurer(gateway)

    async def restart_gateway(self, code: str) -> Gateway:
        """Stop one gateway and start it again at once (see :meth:`gateway_stopped`)."""
        async with self.gateway_stopped(code) as gateway:
            pass
        return gateway

    def hub_operator_ssl(self) -> ssl.SSLContext | None:
        """The hub operator's client context (publishing lists, reading hub records)."""
        return None if self.pki is None else self.pki.client_context(HUB_OPERATOR)

    def agency_client_ssl(self, code: str) -> ssl.SSLContext | None:
        """An agency gateway's client context, as it presents it when it calls the hub."""
        if self.pki is None:
            return None
        return self.pki.client_context(ClientIdentity("agency", code))

    def anonymous_ssl(self) -> ssl.SSLContext | None:
        """Trusts the run's CA, presents no certificate (token-authenticated callers)."""
        return None if self.pki is None else self.pki.anonymous_context()

    def hub_client_ssl(self) -> ssl.SSLContext | None:
        """The hub's own client context, as the hub presents it when it calls gateways."""
        return None if self.pki is None else self.pki.client_context(HUB_IDENTITY)

    async def stop(self) -> None:
        for gateway in list(self.gateways.values()):
            await gateway.server.stop()
        self.gateways.clear()
        await self.stop_kokuhoren()
        await self.hub.stop()


def default_systems(token: str) -> tuple[SystemCredential, ...]:
    """The core systems of a demo or test gateway.

    The 介護保険システム may call the business operations, by certificate or with
    ``token``; the operators' console holds the operator operations and the
    reporting system may only read records, both by certificate only.
    """
    return (
        SystemCredential(
            CORE_SYSTEM,
            token_digest(token),
            ALL_OPERATIONS - ADMIN_OPERATIONS - {OP_PERSON_LIFECYCLE},
        ),
        SystemCredential(ATENA_SYSTEM, "", frozenset({OP_REGISTER_PERSON, OP_PERSON_LIFECYCLE})),
        SystemCredential(OPERATOR_SYSTEM, "", ADMIN_OPERATIONS),
        SystemCredential(REPORTING_SYSTEM, "", frozenset({OP_READ_RECORDS})),
    )


async def start_network(
    server_url: str,
    work_dir: Path,
    *,
    agencies: tuple[tuple[str, str], ...] = DEMO_AGENCIES,
    hub_database: str = HUB_DATABASE,
    gateway_database: str = GATEWAY_DATABASE,
    hub_overrides: dict[str, object] | None = None,
    timing: Timing | None = None,
    tls: bool = True,
    kokuhoren: bool = True,
    kokuhoren_database: str = KOKUHOREN_DATABASE,
) -> Network:
    """Start the hub (and the 国保連 simulator), then each agency's gateway.

    Gateways enrol themselves with the hub; those with a 保険者番号 are onboarded
    at the 国保連 mailbox with a token and their public keys.  With ``tls`` (the
    default) a CA is created for this run and every connection to the hub and
    between the hub and gateways is mutual TLS; ``tls=False`` is plain HTTP, for a
    benchmark baseline only.
    """
    hub_url = await db.ensure_database(server_url, hub_database)
    pki = NetworkPki.create() if tls else None
    hub_config = HubConfig(
        database_url=hub_url,
        migration_database_url=hub_url,
        key_dir=work_dir / "keys" / "hub",
        key_passphrase=secrets.token_urlsafe(24).encode(),
        admin_token=secrets.token_urlsafe(24),
        **{  # type: ignore[arg-type]
            "tls": None if pki is None else pki.settings("hub", HUB_IDENTITY),
            **(hub_overrides or {}),
        },
    )
    hub = await serve(
        create_hub_app(hub_config),
        hub_config.host,
        hub_config.port,
        ssl_context=None if hub_config.tls is None else hub_config.tls.server_context(),
    )
    network = Network(
        server_url, hub, hub_config, work_dir=work_dir, gateway_database=gateway_database, pki=pki
    )
    try:
        if kokuhoren:
            kokuhoren_url = await db.ensure_database(server_url, kokuhoren_database)
            network.kokuhoren_config = KokuhorenConfig(
                database_url=kokuhoren_url,
                migration_database_url=kokuhoren_url,
                key_dir=work_dir / "keys" / "kokuhoren",
                key_passphrase=secrets.token_urlsafe(24).encode(),
                admin_token=secrets.token_urlsafe(24),
                require_client_certificate=network.pki is not None,
            )
            await network.start_kokuhoren()
        for code, name in agencies:
            await network.add_gateway(code, name, timing=timing)
    except BaseException:
        await network.stop()
        raise
    return network
