"""Provision throughput, measured beside a bare aiohttp echo server in the same run.

Two figures, each with its baseline and ratio:

* provider side: provision requests per second at one gateway (permit
  verification, 符号 lookup, replica read, sealing, durable record), sent as the
  hub would send them;
* end to end: queries per second from submit to decrypted result, through the
  hub, between two gateways.

The baseline is a bare aiohttp server echoing the same request bodies with the
same client, concurrency and transport (mutual TLS by default, as the network
runs; ``--plain-http`` runs everything over plain HTTP), so the ratio shows what
the work costs over the transport alone.  Servers and the load generator share
one process and event loop (as in the integration tests); absolute numbers are
for comparison within a run.

Run:  .venv/bin/python bench/provision.py [--requests 2000] [--concurrency 16] [--plain-http]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import random
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from chukan.codecs import catalog
from chukan.codecs.envelope import (
    HUB,
    Header,
    ProvisionRequest,
    encode_body_c14n,
    encode_message,
    new_message_id,
)
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.gateway.serve import serve
from chukan.permits import encode_permit, issue_permit
from chukan.simulators.devnet.network import Gateway, Network, start_network
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE


async def run_load(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``count`` calls with ``concurrency`` workers; returns calls per second."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def _ssl(context: ssl.SSLContext | None) -> ssl.SSLContext | bool:
    """``ssl=`` for a request: the caller's client context, or the default over plain HTTP."""
    return True if context is None else context


async def echo_baseline(
    session: aiohttp.ClientSession, network: Network, bodies: list[bytes], concurrency: int
) -> float:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/xml")

    app = web.Application()
    app.router.add_post("/echo", echo)
    chiba = network.gateways[catalog.CHIBA_CITY]
    tls = chiba.config.tls
    server = await serve(
        app, "127.0.0.1", 0, ssl_context=None if tls is None else tls.server_context()
    )
    client = _ssl(network.hub_client_ssl())
    try:

        async def one(index: int) -> None:
            async with session.post(
                server.url + "/echo", data=bodies[index % len(bodies)], ssl=client
            ) as r:
                await r.read()
                assert r.status == 200

        await run_load(min(200, len(bodies)), concurrency, one)  # warm-up
        return await run_load(len(bodies), concurrency, one)
    finally:
        await server.stop()


def _auth(gateway: Gateway) -> dict[str, str]:
    """Core systems present a client certificate; over plain HTTP they send the bearer token."""
    return gateway.auth if gateway.pki is None else {}


async def prepare_people(
    session: aiohttp.ClientSession, chiba: Gateway, funabashi: Gateway, count: int
) -> list[tuple[SyntheticPerson, SyntheticPerson]]:
    rng = random.Random(7)
    pairs: list[tuple[SyntheticPerson, SyntheticPerson]] = []
    for _ in range(count):
        here = synthetic_person(rng, "1")
        there = SyntheticPerson(
            synthetic_person(rng, "2").atena_id, here.individual_number, here.kana_name, 1950
        )
        for gateway, person in ((chiba, here), (funabashi, there)):
            async with session.post(
                gateway.url + "/internal/v1/persons",
                headers=_auth(gateway),
                json={"atena_id": person.atena_id, "individual_number": person.individual_number},
                ssl=_ssl(gateway.client_ssl()),
            ) as response:
                assert response.status == 201, await response.text()
        async with session.put(
            f"{chiba.url}/internal/v1/persons/{here.atena_id}/items/{catalog.CERTIFICATION.code}",
            headers={**_auth(chiba), "Content-Type": "application/xml"},
            data=certification_item(rng, dt.date.today()),
            ssl=_ssl(chiba.client_ssl()),
        ) as response:
            assert response.status == 201
        pairs.append((here, there))
    return pairs


async def provider_messages(network: Network, codes: list[str], count: int) -> list[bytes]:
    """Provision requests exactly as the hub builds them, each with its own permit."""
    hub = network.hub.app[HUB_STATE]
    requester = network.gateways[catalog.FUNABASHI_CITY].state.keys.encryption.public
    messages: list[bytes] = []
    now = dt.datetime.now(dt.UTC)
    row = hub.authorization_list.check(
        catalog.FUNABASHI_CITY,
        catalog.CHIBA_CITY,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        on=now.date(),
    )
    for index in range(count):
        body = ProvisionRequest(
            query_id=new_message_id(),
            requester=catalog.FUNABASHI_CITY,
            provider_person_code=codes[index % len(codes)],
            business_code=row.business_code,
            procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
            item_code=catalog.CERTIFICATION.code,
            legal_basis=row.legal_basis,
            requester_key_id=requester.key_id,
            requester_key=requester.raw,
        )
        permit = issue_permit(
            row,
            query_id=body.query_id,
            provider_person_code=body.provider_person_code,
            body=encode_body_c14n(body),
            now=now,
            lifetime=dt.timedelta(minutes=30),
        )
        header = Header(
            new_message_id(),
            "ProvisionRequest",
            HUB,
            catalog.CHIBA_CITY,
            now,
            encode_permit(permit, hub.keys.signing),
        )
        messages.append(encode_message(header, body))
    return messages


async def bench(
    requests: int, concurrency: int, people: int, queries: int, *, tls: bool = True
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="chukan-bench-"))
    embedded = None
    server_url = os.environ.get("CHUKAN_DATABASE_URL")
    if not server_url:
        embedded = db.EmbeddedPostgres(data_dir / "pg")
        server_url = embedded.start()
    try:
        for name in ("chukan_bench_hub", "chukan_bench_gateway"):
            await db.drop_database(server_url, name)
        network = await start_network(
            server_url,
            data_dir,
            hub_database="chukan_bench_hub",
            gateway_database="chukan_bench_gateway",
            tls=tls,
            kokuhoren=False,
        )
        try:
            await measure(network, requests, concurrency, people, queries)
        finally:
            await network.stop()
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def measure(
    network: Network, requests: int, concurrency: int, people: int, queries: int
) -> None:
    chiba = network.gateways[catalog.CHIBA_CITY]
    funabashi = network.gateways[catalog.FUNABASHI_CITY]
    hub = network.hub.app[HUB_STATE]
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        print(f"preparing {people} people on both sides …", flush=True)
        pairs = await prepare_people(session, chiba, funabashi, people)
        codes = [
            r["person_code"]
            for r in await chiba.state.pool.fetch("SELECT person_code FROM persons")
        ]
        messages = await provider_messages(network, codes, requests + 200)
        baseline = await echo_baseline(session, network, messages[:requests], concurrency)
        hub_tls = _ssl(network.hub_client_ssl())

        async def provide(index: int) -> None:
            message = messages[index]
            async with session.post(
                chiba.url + "/network/v1/messages",
                data=message,
                headers={
                    "Content-Type": "application/xml",
                    SIGNATURE_HEADER: signature_header(hub.keys.signing, message),
                },
                ssl=hub_tls,
            ) as response:
                await response.read()
                assert response.status == 200, response.status

        await run_load(200, concurrency, lambda i: provide(requests + i))  # warm-up
        provisions = await run_load(requests, concurrency, provide)
        report("provider-side provisions/s", provisions, baseline)

        async def query(index: int) -> None:
            there = pairs[index % len(pairs)][1]
            async with session.post(
                funabashi.url + "/internal/v1/queries",
                headers=_auth(funabashi),
                ssl=_ssl(funabashi.client_ssl()),
                json={
                    "atena_id": there.atena_id,
                    "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                    "item_code": catalog.CERTIFICATION.code,
                    "provider": catalog.CHIBA_CITY,
                },
            ) as response:
                query_id = (await response.json())["query_id"]
            async with session.get(
                f"{funabashi.url}/internal/v1/queries/{query_id}?wait=30",
                headers=_auth(funabashi),
                ssl=_ssl(funabashi.client_ssl()),
            ) as response:
                result = await response.json()
                assert result["status"] == "answered", result

        end_to_end = await run_load(queries, concurrency, query)
        report("end-to-end queries/s", end_to_end, baseline)


def report(name: str, value: float, baseline: float) -> None:
    print(
        f"{name:30s} {value:9.1f}/s   bare aiohttp echo {baseline:9.1f}/s   "
        f"ratio {value / baseline:6.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--plain-http", action="store_true", help="no TLS anywhere (a baseline, not a deployment)"
    )
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    asyncio.run(
        bench(args.requests, args.concurrency, args.people, args.queries, tls=not args.plain_http)
    )


if __name__ == "__main__":
    main()
