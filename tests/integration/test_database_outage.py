"""Database outage: PostgreSQL stops under a running hub and gateways, then comes back.

Requests that need the database answer 503 ``database_unavailable`` (gateway and
hub alike), the process logs one ``database_unavailable`` event for the outage
rather than a traceback per request, ``/health`` and ``/ready`` report the
database, and once PostgreSQL answers again the pools replace their broken
connections: requests succeed without a restart and ``database_available`` is
logged once.

This test runs a PostgreSQL of its own (the session's server is shared by the
other tests and is never stopped).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import Api, LogCapture

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core import db
from chukan.gateway.core.errors import status_for
from chukan.simulators.devnet.network import Network, start_network
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration

RECOVERY_DEADLINE = 30.0


class Outage:
    """An embedded PostgreSQL that a test may stop and start again (same socket, same data)."""

    def __init__(self) -> None:
        # Short path: PostgreSQL's unix socket lives in the data folder (107-byte limit).
        self.data_dir = Path(tempfile.mkdtemp(prefix="chukan-outage-"))
        self.server = db.EmbeddedPostgres(self.data_dir)
        self.url = ""
        self.running = False

    async def start(self) -> str:
        self.url = await asyncio.to_thread(self.server.start)
        self.running = True
        return self.url

    async def stop(self) -> None:
        self.running = False
        await asyncio.to_thread(self.server.stop)  # pg_ctl stop: fast mode, sessions end


@pytest.fixture
async def outage_network(
    log_capture: LogCapture, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Outage, Network, aiohttp.ClientSession]]:
    postgres = Outage()
    network: Network | None = None
    try:
        url = await postgres.start()
        network = await start_network(
            url,
            tmp_path_factory.mktemp("outage"),
            hub_database="outage_hub",
            gateway_database="outage_gateway",
            kokuhoren=False,
        )
        assert network.pki is not None
        connector = aiohttp.TCPConnector(ssl=network.pki.anonymous_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            yield postgres, network, session
    finally:
        if network is not None:
            if not postgres.running:  # a failed test: let the servers stop cleanly
                await postgres.start()
            await network.stop()
        await postgres.stop()
        shutil.rmtree(postgres.data_dir, ignore_errors=True)


def events_since(capture: LogCapture, offset: int, name: str) -> list[dict[str, Any]]:
    return [e for e in capture.events()[offset:] if e.get("event") == name]


async def eventually(
    check: Callable[[], Awaitable[bool]], deadline: float = RECOVERY_DEADLINE
) -> None:
    """Poll ``check`` until it holds, failing after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not await check():
        assert time.monotonic() < end, f"not recovered within {deadline} s"
        await asyncio.sleep(0.1)


async def test_requests_fail_503_during_an_outage_and_succeed_after_it(
    outage_network: tuple[Outage, Network, aiohttp.ClientSession],
    log_capture: LogCapture,
    rng: Any,
) -> None:
    postgres, network, session = outage_network
    chiba = Api(session, network.gateways[catalog.CHIBA_CITY])
    funabashi = Api(session, network.gateways[catalog.FUNABASHI_CITY])
    operator = network.hub_operator_ssl()
    assert operator is not None
    hub_agencies = network.hub.url + "/network/v1/agencies"

    async def hub_get() -> tuple[int, Any]:
        async with session.get(hub_agencies, ssl=operator) as response:
            return response.status, await response.json()

    # A person known at both agencies, for a query round trip after the outage.
    person = synthetic_person(rng, "7")
    there = SyntheticPerson(synthetic_person(rng, "8").atena_id, person.individual_number, "", 1950)
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, person.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(person.atena_id, catalog.CERTIFICATION.code, item))[0] == 201

    status, health = await chiba.call("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["database"]["ok"], health
    db.note_available()  # whatever an earlier test left, the process starts this one "up"

    offset = len(log_capture.events())
    await postgres.stop()

    # -- during the outage ------------------------------------------------------------------
    for _ in range(3):
        status, body = await chiba.call("GET", "/internal/v1/records")
        assert status == 503, body
        assert body["error"]["code"] == "database_unavailable" and body["error"]["message"]
    status, body = await funabashi.query(
        there.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert (status, body["error"]["code"]) == (503, "database_unavailable"), body
    newcomer = synthetic_person(rng, "9")
    status, body = await chiba.register(newcomer.atena_id, newcomer.individual_number)
    # Registration asks the hub first: its outage comes back as the hub's code, in a 502.
    assert status in (502, 503) and body["error"]["code"] == "database_unavailable", body
    status, body = await hub_get()
    assert (status, body["error"]["code"]) == (503, "database_unavailable"), body

    status, health = await chiba.call("GET", "/health")
    assert status == 503 and health["status"] == "degraded", health
    assert health["database"]["ok"] is False
    assert health["database"]["reason"] == "database_unavailable"
    status, ready = await chiba.call("GET", "/ready")
    assert status == 503 and ready["status"] == "not_ready", ready
    assert ready["checks"]["database"]["ok"] is False
    assert ready["checks"]["database"]["reason"] == "database_unavailable"

    during = log_capture.events()[offset:]
    assert [e["event"] for e in during].count("database_unavailable") == 1, during
    failed = [e for e in during if e.get("event") == "request_failed"]
    assert failed and all(e["code"] == "database_unavailable" for e in failed), failed
    assert not [e for e in failed if "exception" in e], "a traceback per request"
    assert not [e for e in during if e.get("code") == "internal_error"]

    # -- PostgreSQL is back: the same servers recover on their own ----------------------------
    restarted = len(log_capture.events())
    assert await postgres.start() == postgres.url

    async def records_answer() -> bool:
        return (await chiba.call("GET", "/internal/v1/records"))[0] == 200

    await eventually(records_answer)
    status, health = await chiba.call("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["database"]["ok"], health
    assert (await chiba.call("GET", "/ready"))[0] == 200
    assert (await hub_get())[0] == 200
    status, submitted = await funabashi.query(
        there.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert status == 202, submitted
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "answered", result
    assert result["result"].encode() == item

    assert len(events_since(log_capture, restarted, "database_available")) == 1
    assert len(events_since(log_capture, offset, "database_unavailable")) == 1
    # Every background loop (the hub's delivery worker, the sweeps) lived through it.
    assert events_since(log_capture, offset, "background_task_failed") == []


async def test_pool_acquire_timeout_is_an_outage_and_a_bad_statement_a_bug(
    pg_server_url: str,
) -> None:
    """On the session's server, which stays up: only the classification is under test."""
    pool = await db.create_pool(pg_server_url, min_size=1, max_size=1)
    try:
        async with pool.acquire():  # the only connection is taken
            with pytest.raises(TimeoutError) as waited:
                await pool.acquire(timeout=0.05)
        assert status_for(waited.value) == (503, "database_unavailable")
        with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
            await pool.execute("SELEC 1")
        assert status_for(syntax.value) == (500, "internal_error")
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMPORARY TABLE once (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO once VALUES (1)")
            with pytest.raises(asyncpg.UniqueViolationError) as twice:
                await conn.execute("INSERT INTO once VALUES (1)")
            await conn.execute("DROP TABLE once")
        assert status_for(twice.value) == (500, "internal_error")
    finally:
        await pool.close()
