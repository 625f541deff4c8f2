"""Provision and query throughput, each server its own process, the load from processes of its own.

Figures, each beside a baseline measured in the same run with the same
generator processes over the same mutual TLS:

* provider side: provision requests per second at one gateway (permit and
  signature verification, 符号 lookup, replica read, sealing, durable record,
  stored signed answer), sent as the hub sends them; the gateway runs as one
  worker process pinned to one CPU (then as two workers on two CPUs); the
  baseline is a bare aiohttp echo of the same bodies pinned the same way;
* end to end: 情報照会 per second from submit to decrypted result (submit, long
  poll), through the hub, between two gateways, closed loop at the highest rate,
  then open loop at half that rate for the latencies (measured from when each
  query was due, so a stall is not hidden).

The network runs exactly as ``chukan serve`` runs it (hub, 国保連, two
gateways, one OS process each, on the embedded PostgreSQL unless
``CHUKAN_DATABASE_URL`` names a server).  The figures are printed at each
``--people`` size (how cost grows with the number of people registered).

Run:  .venv/bin/python -m bench.provision [--people 1000,10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.harness import Figure, add_json_argument, print_figures, write_json
from bench.loadgen import Call, Generators, Measured
from bench.servers import Network, cpu_seconds, echo_servers, postgres_pids, running_network
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
from chukan.gateway.core.keyring import current_keys, open_ring
from chukan.gateway.core.keystore import AgencyKeys, load_or_create_keys
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.core.tomlconfig import read_secret_file
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.permits import encode_permit, issue_permit, load_sample_list
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub.config import HUB_OWNER

PROVIDER = catalog.CHIBA_CITY
REQUESTER = catalog.FUNABASHI_CITY
#: The server under test and the generators do not share a CPU.
SERVER_CPU = 0
GENERATOR_CPU = 1


@dataclass
class People:
    """The people registered at both gateways so far (the same 個人番号 on each side)."""

    rng: random.Random = field(default_factory=random.Random)
    pairs: list[tuple[SyntheticPerson, SyntheticPerson]] = field(default_factory=list)


def _json_call(method: str, url: str, payload: object) -> Call:
    return Call(method, url, (("Content-Type", "application/json"),), json.dumps(payload).encode())


async def grow_people(network: Network, generators: Generators, people: People, size: int) -> None:
    """Register people on both sides (and the provider's 要介護認定 item) up to ``size``."""
    provider, requester = network.url(PROVIDER), network.url(REQUESTER)
    persons: dict[str, list[Call]] = {PROVIDER: [], REQUESTER: []}
    items: list[Call] = []
    today = dt.date.today()
    while len(people.pairs) < size:
        here = synthetic_person(people.rng, "1")
        there = SyntheticPerson(
            synthetic_person(people.rng, "2").atena_id, here.individual_number, here.kana_name, 1950
        )
        for code, url, person in ((PROVIDER, provider, here), (REQUESTER, requester, there)):
            persons[code].append(
                _json_call(
                    "POST",
                    url + "/internal/v1/persons",
                    {"atena_id": person.atena_id, "individual_number": person.individual_number},
                )
            )
        items.append(
            Call(
                "PUT",
                f"{provider}/internal/v1/persons/{here.atena_id}/items/{catalog.CERTIFICATION.code}",
                (("Content-Type", "application/xml"),),
                certification_item(people.rng, today),
            )
        )
        people.pairs.append((here, there))
    for code, calls in persons.items():
        await _must(generators, calls, network, code)
    await _must(generators, items, network, PROVIDER)


async def _must(generators: Generators, calls: Sequence[Call], network: Network, code: str) -> None:
    if not calls:
        return
    measured = await generators.run(calls, concurrency=32, tls=network.tls(f"{code}.{CORE_SYSTEM}"))
    if measured.errors:
        raise SystemExit(f"preparing people failed: {measured.first_error}")


async def provider_person_codes(network: Network) -> list[str]:
    """The provider's 符号 of the people registered (read, as the hub would know them)."""
    url = await db.ensure_database(network.server_url, db.COMPONENTS["gateway"].database)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT person_code FROM persons WHERE tenant = $1", PROVIDER)
    finally:
        await conn.close()
    return [r["person_code"] for r in rows]


def _keys(network: Network, owner: str) -> AgencyKeys:
    layout = network.layout
    if owner == HUB_OWNER:
        passphrase = read_secret_file(layout.secret("hub-key-passphrase"))
        return load_or_create_keys(layout.root / "keys" / "hub", HUB_OWNER, passphrase)
    passphrase = read_secret_file(layout.secret(f"{owner}-key-passphrase"))
    ring = open_ring(layout.root / "keys" / owner, owner, passphrase)
    return current_keys(ring, dt.datetime.now(dt.UTC))


def provision_calls(network: Network, codes: list[str], count: int) -> list[Call]:
    """Provision requests exactly as the hub builds and signs them, each with its own permit."""
    hub = _keys(network, HUB_OWNER)
    requester_key = _keys(network, REQUESTER).encryption.public
    now = dt.datetime.now(dt.UTC)
    authorization = load_sample_list(issued_at=now, expires_at=now + dt.timedelta(days=1))
    row = authorization.check(
        REQUESTER,
        PROVIDER,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        on=now.date(),
    )
    url = network.url(PROVIDER) + "/network/v1/messages"
    calls: list[Call] = []
    for index in range(count):
        body = ProvisionRequest(
            query_id=new_message_id(),
            requester=REQUESTER,
            provider_person_code=codes[index % len(codes)],
            business_code=row.business_code,
            procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
            item_code=catalog.CERTIFICATION.code,
            legal_basis=row.legal_basis,
            requester_key_id=requester_key.key_id,
            requester_key=requester_key.raw,
        )
        permit = issue_permit(
            row,
            query_id=body.query_id,
            provider_person_code=body.provider_person_code,
            body=encode_body_c14n(body),
            now=now,
            lifetime=dt.timedelta(minutes=30),
        )
        permit_text = encode_permit(permit, hub.signing)
        header = Header(new_message_id(), "ProvisionRequest", HUB, PROVIDER, now, permit_text)
        message = encode_message(header, body)
        headers = (
            ("Content-Type", "application/xml"),
            (SIGNATURE_HEADER, signature_header(hub.signing, message)),
        )
        calls.append(Call("POST", url, headers, message))
    return calls


def query_calls(network: Network, people: People, count: int) -> list[Call]:
    url = network.url(REQUESTER) + "/internal/v1/queries"
    return [
        _json_call(
            "POST",
            url,
            {
                "atena_id": people.pairs[index % len(people.pairs)][1].atena_id,
                "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                "item_code": catalog.CERTIFICATION.code,
                "provider": PROVIDER,
            },
        )
        for index in range(count)
    ]


def _checked(name: str, measured: Measured) -> Measured:
    if measured.errors:
        raise SystemExit(f"{name}: {measured.errors} errors, first: {measured.first_error}")
    return measured


@dataclass(frozen=True)
class Run:
    """A measured run and the CPU the server and PostgreSQL spent per request in it."""

    measured: Measured
    server_cpu_ms: float
    database_cpu_ms: float


async def measured_run(
    name: str,
    generators: Generators,
    calls: Sequence[Call],
    server_pids: list[int],
    network: Network,
    **options: Any,
) -> Run:
    """A run of ``calls``; CPU time is what the processes used, whatever else the machine ran."""
    database = postgres_pids(network.pg_dir)
    before = cpu_seconds(server_pids), cpu_seconds(database)
    measured = _checked(name, await generators.run(calls, **options))
    server = cpu_seconds(server_pids) - before[0]
    used = cpu_seconds(database) - before[1]
    count = max(1, measured.count)
    return Run(measured, server * 1000 / count, used * 1000 / count)


async def measure_provider(
    network: Network, generators: Generators, codes: list[str], args: argparse.Namespace, label: str
) -> list[Figure]:
    """Provisions/s at the provider beside the echo, with 1 and then 2 worker processes."""
    figures = []
    hub_tls = network.tls("hub")
    for workers in args.workers:
        cpus = list(range(SERVER_CPU, SERVER_CPU + workers))
        await network.set_workers(PROVIDER, workers, set(cpus))
        calls = provision_calls(network, codes, args.requests + args.warmup)
        load = {"concurrency": args.concurrency, "tls": hub_tls}
        async with echo_servers(network.server_tls(f"agency-{PROVIDER}"), workers, cpus) as echo:
            bodies = [Call("POST", echo.url + "/echo", c.headers, c.body) for c in calls]
            await generators.run(bodies[: args.warmup], **load)
            baseline = await measured_run(
                "echo", generators, bodies[args.warmup :], echo.pids, network, **load
            )
        await generators.run(calls[: args.warmup], **load)
        provided = await measured_run(
            "provisions", generators, calls[args.warmup :], network.pids(PROVIDER), network, **load
        )
        unit = "worker" if workers == 1 else "workers"
        name = f"{workers} {unit} ({workers} CPU), {label}"
        figures += [
            Figure(
                f"provisions/s, {name}",
                provided.measured.rate,
                "requests/s",
                f"bare aiohttp echo ({workers} CPU)",
                baseline.measured.rate,
                provided.measured.p50_ms,
                provided.measured.p99_ms,
            ),
            Figure(
                f"gateway CPU per provision, {name}",
                provided.server_cpu_ms,
                "ms",
                "echo CPU per request",
                baseline.server_cpu_ms,
            ),
            Figure(f"PostgreSQL CPU per provision, {name}", provided.database_cpu_ms, "ms"),
        ]
        print_figures(figures[-3:])
    await network.set_workers(PROVIDER, 1, None)
    return figures


async def measure_queries(
    network: Network, generators: Generators, people: People, args: argparse.Namespace, label: str
) -> list[Figure]:
    """Queries/s end to end (closed loop), then the latencies at half that rate (open loop)."""
    tls = network.tls(f"{REQUESTER}.{CORE_SYSTEM}")
    await generators.run(
        query_calls(network, people, args.warmup // 4),
        concurrency=args.query_concurrency,
        tls=tls,
        flow="query",
    )
    parts = {
        "hub": network.pids("hub"),
        "requester gateway": network.pids(REQUESTER),
        "provider gateway": network.pids(PROVIDER),
        "PostgreSQL": postgres_pids(network.pg_dir),
    }
    before = {name: cpu_seconds(pids) for name, pids in parts.items()}
    closed = _checked(
        "queries",
        await generators.run(
            query_calls(network, people, args.queries),
            concurrency=args.query_concurrency,
            tls=tls,
            flow="query",
        ),
    )
    cpu = {
        name: (cpu_seconds(pids) - before[name]) * 1000 / max(1, closed.count)
        for name, pids in parts.items()
    }
    half = closed.rate / 2
    opened = _checked(
        "queries at half rate",
        await generators.run(
            query_calls(network, people, max(50, int(half * args.open_seconds))),
            concurrency=args.query_concurrency,
            tls=tls,
            flow="query",
            rate=half,
        ),
    )
    # Fixed offered rates besides: latencies of two versions compared at the same load
    # (half of each one's own closed-loop rate differs when their rates do).
    fixed = []
    for rate in args.open_rates:
        measured = _checked(
            f"queries at {rate}/s",
            await generators.run(
                query_calls(network, people, max(50, int(rate * args.open_seconds))),
                concurrency=args.query_concurrency,
                tls=tls,
                flow="query",
                rate=float(rate),
            ),
        )
        fixed.append(
            Figure(
                f"queries at {rate}/s offered, open loop, {label}",
                measured.rate,
                "queries/s",
                p50_ms=measured.p50_ms,
                p99_ms=measured.p99_ms,
            )
        )
    figures = [
        Figure(
            f"queries/s end to end, closed loop, {label}",
            closed.rate,
            "queries/s",
            p50_ms=closed.p50_ms,
            p99_ms=closed.p99_ms,
        ),
        Figure(
            f"queries at half rate ({half:.0f}/s offered), open loop, {label}",
            opened.rate,
            "queries/s",
            p50_ms=opened.p50_ms,
            p99_ms=opened.p99_ms,
        ),
    ]
    figures += fixed
    figures += [
        Figure(f"{name} CPU per query, {label}", value, "ms") for name, value in cpu.items()
    ]
    print_figures(figures)
    return figures


async def bench(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    async with running_network() as network, Generators(args.generators) as generators:
        people = People()
        for size in args.people:
            label = f"{size:,} people"
            print(f"registering {size:,} people on both sides …", flush=True)
            await grow_people(network, generators, people, size)
            if not args.skip_provider:
                codes = await provider_person_codes(network)
                figures += await measure_provider(network, generators, codes, args, label)
            if not args.skip_queries:
                figures += await measure_queries(network, generators, people, args, label)
    return figures


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=_sizes, default=[1000, 10000], help="e.g. 1000,10000")
    parser.add_argument("--workers", type=_sizes, default=[1, 2], help="provider worker counts")
    parser.add_argument("--requests", type=int, default=6000, help="provisions per measurement")
    parser.add_argument("--queries", type=int, default=2000, help="queries per measurement")
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--query-concurrency", type=int, default=64)
    parser.add_argument("--open-seconds", type=float, default=10.0)
    parser.add_argument(
        "--open-rates",
        type=_sizes,
        default=[],
        help="fixed offered query rates for latencies (besides half the closed loop), e.g. 14,28",
    )
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--skip-provider", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    add_json_argument(parser)
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    figures = asyncio.run(bench(args))
    print()
    print_figures(figures)
    write_json(args.json, figures, people=args.people, workers=args.workers)


if __name__ == "__main__":
    main()
