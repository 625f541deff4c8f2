"""The fixtures of chukan's pytest plugin (see :mod:`chukan.testing`).

:func:`chukan.testing.pytest_configure` registers this module only when pytest-asyncio
is active, because this module imports pytest-asyncio and chukan does not depend on it.
Every fixture runs on the session's event loop, where the servers run, whatever the
test suite's default loop scope is.  A fixture starts nothing until a test asks for
it (directly or through another fixture).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.simulators.devnet.network import CORE_SYSTEM, Gateway, Network, start_network
from chukan.testing import (
    ClientFactory,
    CoreSystemClient,
    LogCapture,
    SyntheticPeople,
    chosen_agencies,
)


@pytest.fixture(scope="session")
def chukan_logs() -> LogCapture:
    """The servers' structlog events (DEBUG and up) for the whole session, as JSON lines."""
    capture = LogCapture()
    configure_logging(logging.DEBUG, stream=capture)
    return capture


@pytest.fixture(scope="session")
def chukan_database_url(chukan_logs: LogCapture) -> Iterator[str]:
    """``CHUKAN_DATABASE_URL`` if set (a role with CREATEDB and CREATEROLE), else an embedded
    PostgreSQL that is stopped and removed when the session ends."""
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if url:
        yield url
        return
    # A short path: PostgreSQL's unix socket lives in the data folder (107-byte limit).
    data_dir = Path(tempfile.mkdtemp(prefix="chukan-pg-"))
    embedded = db.EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def chukan_db_prefix() -> str:
    """The prefix of this session's databases, so runs against a shared server never collide."""
    return f"chukan_t{secrets.token_hex(3)}_"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chukan_network(
    request: pytest.FixtureRequest,
    chukan_database_url: str,
    chukan_db_prefix: str,
    chukan_logs: LogCapture,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Network]:
    """The hub, the 国保連 simulator and a gateway per chosen agency, stopped at the end."""
    try:
        network = await start_network(
            chukan_database_url,
            tmp_path_factory.mktemp("network"),
            agencies=chosen_agencies(request.config),
            hub_database=f"{chukan_db_prefix}hub",
            gateway_database=f"{chukan_db_prefix}gateway",
            kokuhoren_database=f"{chukan_db_prefix}kokuhoren",
        )
    except OSError as exc:  # the URL itself is not shown: it may hold a password
        source = "CHUKAN_DATABASE_URL" if os.environ.get("CHUKAN_DATABASE_URL") else "embedded"
        pytest.fail(f"chukan_network: PostgreSQL ({source}) unreachable: {exc}", pytrace=False)
    try:
        yield network
    finally:
        await network.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chukan_http(chukan_network: Network) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that trusts the network's CA but presents no certificate of its own.

    Pass ``ssl=`` per request to present one (``network.hub_client_ssl()``, a
    gateway's ``client_ssl()``, ``network.hub_operator_ssl()``).
    """
    context = chukan_network.anonymous_ssl()
    connector = None if context is None else aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chukan_client(
    chukan_network: Network, chukan_http: aiohttp.ClientSession
) -> ClientFactory:
    """``chukan_client(code_or_gateway, system=CORE_SYSTEM)``: a core system's client.

    Takes an agency code of the network or a
    :class:`~chukan.simulators.devnet.network.Gateway` (for example, one a test
    added with ``chukan_network.add_gateway``).
    """
    loop = asyncio.get_running_loop()

    def client(gateway: str | Gateway, system: str = CORE_SYSTEM) -> CoreSystemClient:
        if isinstance(gateway, str):
            if gateway not in chukan_network.gateways:
                pytest.fail(
                    f"agency {gateway} is not in the network "
                    f"({', '.join(chukan_network.gateways)}; see --chukan-agencies)",
                    pytrace=False,
                )
            gateway = chukan_network.gateways[gateway]
        return CoreSystemClient(chukan_http, gateway, system=system, loop=loop)

    return client


@pytest.fixture(scope="session")
def chukan_agencies(
    request: pytest.FixtureRequest, chukan_client: ClientFactory
) -> dict[str, CoreSystemClient]:
    """``{agency code: client}``: the 介護保険システム of each chosen agency."""
    return {code: chukan_client(code) for code, _ in chosen_agencies(request.config)}


@pytest.fixture
def chukan_people(request: pytest.FixtureRequest) -> SyntheticPeople:
    """Synthetic people, seeded from the test's id so a failure can be replayed."""
    return SyntheticPeople(random.Random(request.node.nodeid))  # noqa: S311 -- test data, not secrets
