"""Shared fixtures: the project's names for chukan's pytest plugin (:mod:`chukan.testing`).

The real PostgreSQL (embedded unless CHUKAN_DATABASE_URL is set), the captured
structlog JSON output and the real hub, gateways and 国保連 on loopback come from
the plugin's fixtures, the same ones vendors use; the names below are the ones
this project's tests have always used.
"""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.simulators.devnet.network import Network
from chukan.testing import ClientFactory, CoreSystemClient, LogCapture

#: The project's tests call the core-system client ``Api`` (``Api(session, gateway)``).
Api = CoreSystemClient
__all__ = ["OPS_AGENCY", "ROOT_PASSWORD", "Api", "LogCapture"]


@pytest.fixture(scope="session")
def log_capture(chukan_logs: LogCapture) -> LogCapture:
    return chukan_logs


@pytest.fixture(scope="session")
def pg_server_url(chukan_database_url: str) -> str:
    return chukan_database_url


@pytest.fixture(scope="session")
def db_prefix(chukan_db_prefix: str) -> str:
    """Databases of this test session, so runs against a shared server never collide."""
    return chukan_db_prefix


@pytest.fixture(scope="session")
def network(chukan_network: Network) -> Network:
    return chukan_network


@pytest.fixture(scope="session")
def http(chukan_http: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """A client that trusts the network's CA but presents no certificate of its own.

    Pass ``ssl=`` per request to present one (``network.hub_client_ssl()``, a
    gateway's ``client_ssl()``, ``network.hub_operator_ssl()``).
    """
    return chukan_http


@pytest.fixture(scope="session")
def api(chukan_client: ClientFactory) -> ClientFactory:
    """``api(gateway)``: an :class:`Api` for any gateway of the network (e.g. one a test added)."""
    return chukan_client


@pytest.fixture(scope="session")
def chiba(chukan_client: ClientFactory) -> Api:
    return chukan_client(CHIBA_CITY)


@pytest.fixture(scope="session")
def funabashi(chukan_client: ClientFactory) -> Api:
    return chukan_client(FUNABASHI_CITY)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Synthetic data seeded per test, so a failure can be replayed."""
    return random.Random(request.node.nodeid)


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
