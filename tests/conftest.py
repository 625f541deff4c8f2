"""Shared fixtures: a real PostgreSQL (embedded unless CHUKAN_DATABASE_URL is set),
captured structlog JSON output, and the real hub and gateways on loopback."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging


class LogCapture(io.StringIO):
    """Every structlog event of the session, as the JSON lines a deployment would write."""

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]


@pytest.fixture(scope="session")
def log_capture() -> LogCapture:
    capture = LogCapture()
    configure_logging(logging.DEBUG, stream=capture)
    return capture


@pytest.fixture(scope="session")
def pg_server_url(log_capture: LogCapture) -> Iterator[str]:
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if url:
        yield url
        return
    # Short path: PostgreSQL's unix socket lives in the data folder (107-byte limit).
    data_dir = Path(tempfile.mkdtemp(prefix="chukan-pg-"))
    embedded = db.EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def db_prefix() -> str:
    """Databases of this test session, so runs against a shared server never collide."""
    return f"chukan_t{secrets.token_hex(3)}_"


@pytest.fixture(scope="session")
async def network(
    pg_server_url: str,
    db_prefix: str,
    log_capture: LogCapture,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Any]:
    from chukan.simulators.devnet.network import start_network

    net = await start_network(
        pg_server_url,
        tmp_path_factory.mktemp("network"),
        hub_database=f"{db_prefix}hub",
        gateway_database=f"{db_prefix}gateway",
        kokuhoren_database=f"{db_prefix}kokuhoren",
    )
    try:
        yield net
    finally:
        await net.stop()


class Api:
    """Calls a gateway's internal API as its core system does, over real mutual TLS.

    By default the call presents the 介護保険システム's client certificate
    (``system=`` picks another configured system of that gateway); with ``token=``
    it presents no certificate and sends the bearer token instead.  An explicit
    ``ssl=`` context wins over both.
    """

    def __init__(self, session: Any, gateway: Any) -> None:
        self.session = session
        self.gateway = gateway

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        from chukan.simulators.devnet.network import CORE_SYSTEM

        headers = dict(kwargs.pop("headers", {}))
        if isinstance(kwargs.get("data"), bytes) and len(kwargs["data"]) > 512 * 1024:
            kwargs["data"] = io.BytesIO(kwargs["data"])  # aiohttp warns on big raw bodies
        context = None if token is not None else self.gateway.client_ssl(system or CORE_SYSTEM)
        if context is None:  # a bearer-token caller, or a plain-HTTP network
            headers.setdefault("Authorization", f"Bearer {token or self.gateway.token}")
        else:
            kwargs.setdefault("ssl", context)
        async with self.session.request(
            method, self.gateway.url + path, headers=headers, **kwargs
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    async def register(self, atena_id: str, number: str) -> tuple[int, Any]:
        return await self.call(
            "POST", "/internal/v1/persons", json={"atena_id": atena_id, "individual_number": number}
        )

    async def store(
        self, atena_id: str, item_code: str, xml: bytes, *, manual_review: bool = False
    ) -> tuple[int, Any]:
        return await self.call(
            "PUT",
            f"/internal/v1/persons/{atena_id}/items/{item_code}"
            + ("?manual_review=true" if manual_review else ""),
            data=xml,
            headers={"Content-Type": "application/xml"},
        )

    async def query(
        self, atena_id: str, procedure: str, item_code: str, provider: str, **extra: Any
    ) -> tuple[int, Any]:
        return await self.call(
            "POST",
            "/internal/v1/queries",
            json={
                "atena_id": atena_id,
                "procedure_code": procedure,
                "item_code": item_code,
                "provider": provider,
                **extra,
            },
        )

    async def result(self, query_id: str, wait: float = 20) -> dict[str, Any]:
        status, body = await self.call("GET", f"/internal/v1/queries/{query_id}?wait={wait}")
        assert status == 200, body
        assert isinstance(body, dict)
        return body


@pytest.fixture(scope="session")
async def http(network: Any) -> AsyncIterator[Any]:
    """A client that trusts the network's CA but presents no certificate of its own.

    Pass ``ssl=`` per request to present one (``network.hub_client_ssl()``, a
    gateway's ``client_ssl()``, ``network.hub_operator_ssl()``).
    """
    import aiohttp

    connector = (
        aiohttp.TCPConnector(ssl=network.pki.anonymous_context())
        if network.pki is not None
        else None
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture(scope="session")
def api(http: Any) -> Any:
    """``api(gateway)``: an :class:`Api` for any gateway of the network (e.g. one a test added)."""
    return lambda gateway: Api(http, gateway)


@pytest.fixture(scope="session")
def chiba(network: Any, http: Any) -> Api:
    from chukan.codecs.catalog import CHIBA_CITY

    return Api(http, network.gateways[CHIBA_CITY])


@pytest.fixture(scope="session")
def funabashi(network: Any, http: Any) -> Api:
    from chukan.codecs.catalog import FUNABASHI_CITY

    return Api(http, network.gateways[FUNABASHI_CITY])


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> Any:
    """Synthetic data seeded per test, so a failure can be replayed."""
    import random

    return random.Random(request.node.nodeid)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """On failure, show the session's recent log events: the servers run in-process."""
    if call.excinfo is None or call.when != "call":
        return
    capture = item.funcargs.get("log_capture") if hasattr(item, "funcargs") else None
    if isinstance(capture, LogCapture):
        tail = "\n".join(capture.getvalue().splitlines()[-40:])
        item.add_report_section("call", "structlog events", tail)


#: An agency of the test network whose gateway runs with short timeouts and fast hashing,
#: for the staff, records and operations tests (no other test uses it).
OPS_AGENCY = "129992"
ROOT_PASSWORD = "initial-Admin-passw0rd"


@pytest.fixture(scope="session")
async def ops_gateway(network: Any, http: Any) -> Api:
    """A gateway of :data:`OPS_AGENCY` restarted with test settings (a real server)."""
    import dataclasses
    import datetime as dt

    from chukan.gateway.core.settings import InitialAdmin, OpsConfig, RecordsConfig, StaffConfig
    from chukan.gateway.serve import start_gateway
    from chukan.gateway.staff.passwords import hash_password
    from chukan.simulators.devnet.network import Gateway

    first = await network.add_gateway(OPS_AGENCY, "試験市")
    await first.server.stop()
    config = dataclasses.replace(
        first.config,
        staff=StaffConfig(
            idle_timeout=dt.timedelta(seconds=1),
            max_failed_logins=3,
            lockout=dt.timedelta(minutes=5),
            scrypt_n=2**10,
            initial_admin=InitialAdmin("root", hash_password(ROOT_PASSWORD, n=2**10, r=8, p=1)),
        ),
        # /ready's first look at the key ring opens it (an scrypt): room for a busy machine.
        ops=OpsConfig(purge_interval=dt.timedelta(seconds=0.3), ready_timeout=5.0),
        records=RecordsConfig(
            checkpoint_every=5,
            checkpoint_interval=dt.timedelta(seconds=0.3),
            checkpoint_poll=0.05,
            partition_check=dt.timedelta(seconds=0.3),
        ),
    )
    server = await start_gateway(config)
    network.gateways[OPS_AGENCY] = Gateway(server, config, first.token, first.pki)
    return Api(http, network.gateways[OPS_AGENCY])
