"""Connections cut mid-exchange: the work is done once and the answer still arrives.

A TCP proxy (TLS passes through it untouched) sits in front of a gateway and
drops the first response it carries — the request was processed and committed,
only the answer is lost, as when a link fails at the wrong moment. The hub
retries the same delivery; the gateway recognises the message and answers as
the first time, so nothing is provided, recorded or lost twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core.keyring import enrolment_payload
from chukan.gateway.core.state import utcnow
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


class CuttingProxy:
    """Forwards TCP both ways; drops the connection at the first ``cuts`` responses.

    TLS passes through untouched: the first two client chunks are the handshake,
    anything after is the request; the server's first bytes after the request are
    its HTTP response, and that is where the connection is cut.
    """

    def __init__(self, backend_host: str, backend_port: int, cuts: int) -> None:
        self.backend = (backend_host, backend_port)
        self.cuts = cuts
        self.cut = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._done: set[asyncio.Future[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._done, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done.add(done)
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.backend)
        self._writers.update((writer, up_writer))
        request_sent = False

        def close_both() -> None:
            writer.close()
            up_writer.close()

        async def client_to_server() -> None:
            nonlocal request_sent
            chunks = 0
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    chunks += 1
                    request_sent = request_sent or chunks >= 3
                    up_writer.write(data)
                    await up_writer.drain()
            close_both()

        async def server_to_client() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if request_sent and self.cut < self.cuts:
                        self.cut += 1
                        break  # the response is lost with the connection
                    writer.write(data)
                    await writer.drain()
            close_both()

        try:
            await asyncio.gather(client_to_server(), server_to_client())
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            done.set_result(None)


async def enrol_at(network: Any, http: Any, code: str, endpoint: str) -> None:
    """The hub operator points the registry entry of agency ``code`` at ``endpoint``
    (``POST /admin/v1/agencies`` with the agency's current keys and its enrolment token,
    as its gateway enrols)."""
    state = network.gateways[code].state
    async with http.post(
        network.hub.url + "/admin/v1/agencies",
        json=enrolment_payload(state.config, endpoint, state.ring, utcnow()),
        headers={"Authorization": f"Bearer {state.config.enrolment_token}"},
        ssl=network.hub_operator_ssl(),
    ) as response:
        assert response.status == 201, await response.text()


@contextlib.asynccontextmanager
async def proxied(network: Any, http: Any, code: str, cuts: int) -> AsyncIterator[CuttingProxy]:
    """Route the hub's calls to agency ``code`` through a cutting proxy, then restore."""
    endpoint: str = network.gateways[code].state.endpoint
    target = urlsplit(endpoint)
    assert target.hostname is not None
    assert target.port is not None
    proxy = CuttingProxy(target.hostname, target.port, cuts)
    await proxy.start()
    await enrol_at(network, http, code, f"{target.scheme}://127.0.0.1:{proxy.port}")
    try:
        yield proxy
    finally:
        await enrol_at(network, http, code, endpoint)
        await proxy.stop()


async def moved_person(
    rng: random.Random, chiba: Any, funabashi: Any
) -> tuple[SyntheticPerson, SyntheticPerson, bytes]:
    here = synthetic_person(rng, "7")
    there = SyntheticPerson(synthetic_person(rng, "8").atena_id, here.individual_number, "", 1950)
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(here.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    return here, there, item


async def _query(funabashi: Any, there: SyntheticPerson) -> str:
    status, submitted = await funabashi.query(
        there.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert status == 202
    query_id: str = submitted["query_id"]
    return query_id


async def test_a_provision_whose_answer_was_cut_is_answered_again_not_refused(
    network: Any, http: Any, chiba: Any, funabashi: Any, rng: random.Random, log_capture: Any
) -> None:
    _, there, item = await moved_person(rng, chiba, funabashi)
    async with proxied(network, http, catalog.CHIBA_CITY, cuts=1) as proxy:
        query_id = await _query(funabashi, there)
        result = await funabashi.result(query_id)
    assert proxy.cut == 1  # the first answer really was lost
    assert proxy.connections >= 2
    assert result["status"] == "answered", result
    assert result["result"].encode() == item
    provider = await chiba.gateway.state.pool.fetch(
        "SELECT outcome FROM provision_records WHERE role = 'provider' AND query_id = $1",
        query_id,
    )
    assert [r["outcome"] for r in provider] == ["provided"]  # provided and recorded once
    hub = network.hub.app[HUB_STATE]
    delivery = await hub.pool.fetchrow(
        "SELECT status, attempts FROM deliveries "
        "WHERE query_id = $1 AND kind = 'provision_request'",
        query_id,
    )
    assert (delivery["status"], delivery["attempts"]) == ("done", 2)
    assert log_capture.named("provision_answer_repeated")


async def test_an_answer_whose_acknowledgement_was_cut_is_kept_once(
    network: Any, http: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    _, there, item = await moved_person(rng, chiba, funabashi)
    async with proxied(network, http, catalog.FUNABASHI_CITY, cuts=1) as proxy:
        query_id = await _query(funabashi, there)
        result = await funabashi.result(query_id)
        hub = network.hub.app[HUB_STATE]
        for _ in range(200):  # the hub's retry of the answer delivery completes
            delivery = await hub.pool.fetchrow(
                "SELECT status, attempts FROM deliveries WHERE query_id = $1 AND kind = 'answer'",
                query_id,
            )
            if delivery is not None and delivery["status"] == "done":
                break
            await asyncio.sleep(0.05)
    assert proxy.cut == 1
    assert result["status"] == "answered"
    assert result["result"].encode() == item
    assert (delivery["status"], delivery["attempts"]) == ("done", 2)
    requester = await funabashi.gateway.state.pool.fetch(
        "SELECT outcome FROM provision_records WHERE role = 'requester' AND query_id = $1",
        query_id,
    )
    assert [r["outcome"] for r in requester] == ["provided"]
