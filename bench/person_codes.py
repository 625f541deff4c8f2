"""符号 at scale: the hub's 符号 conversion and the gateway's 符号 → 宛名番号 lookup, p50/p99
per lookup at several table sizes, beside a bare primary-key lookup of the same data.

Hub (default 100,000 and 1,000,000 people; ``--hub-sizes``, ``--ten-million`` adds 10,000,000):
the hub's tables (its migrations applied) hold that many people (``persons``), each known to
two agencies — every fourth to three — by a random 24-character 符号 each (``person_codes``),
over 60 agencies.  Measured: :func:`chukan.simulators.hub.codes.provider_person_code`, the
function the hub's query routing calls (requester's 符号 → the provider's), on a pool as the
hub uses it, for random people and agency pairs.  Baseline: ``SELECT 1 FROM person_codes
WHERE agency_code = $1 AND person_id = $2`` (its primary key) on the same pool.

Gateway (default 10,000 / 100,000 / 1,000,000 mappings; ``--gateway-sizes``): one tenant's
``persons`` table (宛名番号 ↔ 符号) filled as the tenant's role (row-level security on),
then the provider's lookup as ``PROVISION_SQL`` makes it (``LEFT JOIN persons p ON
p.person_code = $4``, the same statement shape, prepared, as the tenant) for random 符号.
Baseline: ``SELECT 1 FROM persons WHERE tenant = $1 AND atena_id = $2`` (its primary key).

Rows are generated in the database (``INSERT … SELECT … FROM generate_series``) into the
real tables.  For the hub, the random-key indexes of ``persons`` and ``person_codes`` (and the
foreign keys that lean on them) are dropped before the load and added back after it with
the migration's names and definitions, so the schema is the migration's and the foreign
keys are checked as they are added (inserting tens of millions of random keys into those
B-trees one by one took well over 20 minutes here); the agencies' foreign key is skipped
during the load when the login may (the rows are consistent by construction).  Latencies
are client round trips (asyncpg, one lookup at a time), in milliseconds.

Run:  .venv/bin/python -m bench.person_codes [--hub-sizes 100000,1000000] [--ten-million]
      [--gateway-sizes 10000,100000,1000000] [--lookups 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.harness import (
    Figure,
    add_json_argument,
    database_server,
    percentile,
    print_figures,
    write_json,
)
from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.simulators.hub.codes import provider_person_code

HUB_DATABASE = "chukan_bench_hub_codes"
GATEWAY_DATABASE = "chukan_bench_persons"
AGENCIES = [f"{100000 + 17 * n:06d}" for n in range(60)]
#: People per INSERT … SELECT when loading.
LOAD_BATCH = 500_000

#: The k-th 符号 of person i: 24 URL-safe characters (like secrets.token_urlsafe(18)),
#: the same in SQL and in Python so the bench can pick random existing ones.
CODE_SQL = (
    "translate(substr(encode(sha256(convert_to('c' || {i} || ':' || {k}, 'UTF8')), "
    "'base64'), 1, 24), '+/', '-_')"
)


def code_of(i: int, k: int) -> str:
    digest = hashlib.sha256(f"c{i}:{k}".encode()).digest()
    return base64.b64encode(digest).decode()[:24].replace("+", "-").replace("/", "_")


def agency_of(i: int, k: int) -> str:
    """The k-th agency that knows person i (k < 3: distinct)."""
    return AGENCIES[(i + 17 * k) % len(AGENCIES)]


def known_by(i: int) -> int:
    return 3 if i % 4 == 0 else 2


HUB_PERSONS_SQL = """INSERT INTO persons (person_id, number_digest)
    SELECT md5('p' || i)::uuid, sha256(int8send(i)) FROM generate_series($1::bigint, $2) AS i"""
HUB_CODES_SQL = f"""INSERT INTO person_codes (agency_code, person_id, person_code)
    SELECT ($3::text[])[((i + 17 * k) % {len(AGENCIES)}) + 1], md5('p' || i)::uuid,
           {CODE_SQL.format(i="i", k="k")}
    FROM generate_series($1::bigint, $2) AS i
    CROSS JOIN LATERAL generate_series(0, CASE WHEN i % 4 = 0 THEN 2 ELSE 1 END) AS k"""  # noqa: S608
GATEWAY_PERSONS_SQL = f"""INSERT INTO persons (atena_id, person_code)
    SELECT lpad(i::text, 15, '0'), {CODE_SQL.format(i="i", k="0")}
    FROM generate_series($1::bigint, $2) AS i"""  # noqa: S608
#: The hub's random-key indexes, dropped for the bulk load and built after it with the
#: names and definitions of hub migration 0001 (the foreign keys on persons with them).
DROP_KEYS_SQL = """
    ALTER TABLE acquisition_numbers DROP CONSTRAINT acquisition_numbers_person_id_fkey;
    ALTER TABLE person_codes DROP CONSTRAINT person_codes_person_id_fkey,
        DROP CONSTRAINT person_codes_pkey, DROP CONSTRAINT person_codes_person_code_key;
    ALTER TABLE persons DROP CONSTRAINT persons_pkey,
        DROP CONSTRAINT persons_number_digest_key"""
ADD_KEYS_SQL = """
    ALTER TABLE persons ADD CONSTRAINT persons_pkey PRIMARY KEY (person_id),
        ADD CONSTRAINT persons_number_digest_key UNIQUE (number_digest);
    ALTER TABLE person_codes ADD CONSTRAINT person_codes_pkey
            PRIMARY KEY (agency_code, person_id),
        ADD CONSTRAINT person_codes_person_code_key UNIQUE (person_code),
        ADD CONSTRAINT person_codes_person_id_fkey
            FOREIGN KEY (person_id) REFERENCES persons (person_id);
    ALTER TABLE acquisition_numbers ADD CONSTRAINT acquisition_numbers_person_id_fkey
        FOREIGN KEY (person_id) REFERENCES persons (person_id)"""
#: The provider's 符号 → 宛名番号 lookup, shaped as in replica.PROVISION_SQL.
GATEWAY_LOOKUP_SQL = """SELECT p.atena_id FROM (SELECT 1) AS one
    LEFT JOIN persons p ON p.person_code = $1"""


async def timed(
    count: int, lookup: Callable[[int], Awaitable[Any]], rng: random.Random, people: int
) -> list[float]:
    """Milliseconds of ``count`` lookups of random people (after a warm-up)."""
    for _ in range(min(1000, count)):
        await lookup(rng.randrange(people))
    times = []
    for _ in range(count):
        person = rng.randrange(people)
        began = time.perf_counter()
        await lookup(person)
        times.append((time.perf_counter() - began) * 1000)
    return times


def figures_of(name: str, times: list[float], base_name: str, base: list[float]) -> list[Figure]:
    """Lookups per second (one at a time) with p50/p99, the baseline's rate beside it; then
    the baseline's own line (its p50/p99)."""
    rate, base_rate = len(times) / (sum(times) / 1000), len(base) / (sum(base) / 1000)
    return [
        Figure(
            name,
            rate,
            "lookups/s",
            base_name,
            base_rate,
            p50_ms=percentile(times, 0.50),
            p99_ms=percentile(times, 0.99),
        ),
        Figure(
            f"  {base_name} (baseline)",
            base_rate,
            "lookups/s",
            p50_ms=percentile(base, 0.50),
            p99_ms=percentile(base, 0.99),
        ),
    ]


async def hub_bench(server_url: str, sizes: list[int], lookups: int) -> list[Figure]:
    await db.drop_database(server_url, HUB_DATABASE)
    url = await db.ensure_database(server_url, HUB_DATABASE)
    hub = db.COMPONENTS["hub"]
    await db.migrate_url(url, hub.package, hub.folder)
    figures: list[Figure] = []
    admin = await asyncpg.connect(url)
    pool = await db.create_pool(url)
    rng = random.Random(12)
    try:
        await admin.executemany(
            "INSERT INTO agencies (code, name, endpoint, signing_key_id, signing_key, "
            "encryption_key_id, encryption_key) VALUES ($1, $1, 'https://127.0.0.1:1', "
            "$1 || '.sig', '\\x00', $1 || '.enc', '\\x00')",
            [(code,) for code in AGENCIES],
        )
        have = 0
        for size in sorted(sizes):
            began = time.perf_counter()
            async with admin.transaction():
                if await admin.fetchval(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                ):
                    await admin.execute("SET LOCAL session_replication_role = replica")
                # person_codes' two indexes (random keys) are built once the rows are in,
                # under the names and definitions of the migration: the same schema.
                await admin.execute(DROP_KEYS_SQL)
                for low in range(have + 1, size + 1, LOAD_BATCH):
                    high = min(size, low + LOAD_BATCH - 1)
                    await admin.execute(HUB_PERSONS_SQL, low, high)
                    await admin.execute(HUB_CODES_SQL, low, high, AGENCIES)
                await admin.execute("SET LOCAL maintenance_work_mem = '512MB'")
                await admin.execute(ADD_KEYS_SQL)
            await admin.execute("ANALYZE persons; ANALYZE person_codes")
            codes = await admin.fetchval("SELECT count(*) FROM person_codes")
            seconds = time.perf_counter() - began
            print(f"hub: {size:,} people ({codes:,} 符号) loaded in {seconds:.0f} s", flush=True)
            figures.append(Figure(f"hub load to {size:,} people ({codes:,} 符号)", seconds, "s"))
            have = size

            async def convert(index: int) -> None:
                person = index + 1
                requester, provider = agency_of(person, 0), agency_of(person, 1)
                code = await provider_person_code(pool, requester, code_of(person, 0), provider)
                assert code == code_of(person, 1)

            async def bare(index: int) -> None:
                person = index + 1
                found = await pool.fetchval(
                    "SELECT 1 FROM person_codes WHERE agency_code = $1 AND person_id = $2",
                    agency_of(person, 1),
                    person_uuid(person),
                )
                assert found == 1

            measured = await timed(lookups, convert, rng, size)
            base = await timed(lookups, bare, rng, size)
            figures += figures_of(
                f"hub 符号 conversion, {size:,} people", measured, "bare PK lookup", base
            )
            print_figures(figures[-2:])
    finally:
        await pool.close()
        await admin.close()
        await db.drop_database(server_url, HUB_DATABASE)
    return figures


def person_uuid(person: int) -> uuid.UUID:
    """The person_id the load gave person ``person`` (md5('p' || i)::uuid)."""
    return uuid.UUID(hashlib.md5(f"p{person}".encode()).hexdigest())  # noqa: S324


async def gateway_bench(server_url: str, sizes: list[int], lookups: int) -> list[Figure]:
    await db.drop_database(server_url, GATEWAY_DATABASE)
    admin_url = await db.ensure_database(server_url, GATEWAY_DATABASE)
    await db.migrate_url(admin_url, "chukan.gateway")
    tenant_url = await db.provision_tenant(admin_url, catalog.CHIBA_CITY, "千葉市")
    figures: list[Figure] = []
    tenant = await asyncpg.connect(tenant_url)
    admin = await asyncpg.connect(admin_url)
    rng = random.Random(13)
    try:
        have = 0
        for size in sorted(sizes):
            began = time.perf_counter()
            for low in range(have + 1, size + 1, LOAD_BATCH):
                await tenant.execute(GATEWAY_PERSONS_SQL, low, min(size, low + LOAD_BATCH - 1))
            await admin.execute("ANALYZE persons")
            print(
                f"gateway: {size:,} mappings loaded in {time.perf_counter() - began:.0f} s",
                flush=True,
            )
            have = size
            lookup_stmt = await tenant.prepare(GATEWAY_LOOKUP_SQL)
            bare_stmt = await admin.prepare(
                "SELECT 1 FROM persons WHERE tenant = $1 AND atena_id = $2"
            )

            async def lookup(index: int, stmt: Any = lookup_stmt) -> None:
                atena = await stmt.fetchval(code_of(index + 1, 0))
                assert atena == f"{index + 1:015d}", atena

            async def bare(index: int, stmt: Any = bare_stmt) -> None:
                assert await stmt.fetchval(catalog.CHIBA_CITY, f"{index + 1:015d}") == 1

            measured = await timed(lookups, lookup, rng, size)
            base = await timed(lookups, bare, rng, size)
            figures += figures_of(
                f"gateway 符号 → 宛名番号, {size:,} mappings", measured, "bare PK lookup", base
            )
            print_figures(figures[-2:])
        plan = await tenant.fetch("EXPLAIN " + GATEWAY_LOOKUP_SQL.replace("$1", "'x'"))
        print("gateway lookup plan:", " / ".join(r[0].strip() for r in plan), flush=True)
    finally:
        await tenant.close()
        await admin.close()
        await db.drop_database(server_url, GATEWAY_DATABASE)
    return figures


async def bench(hub_sizes: list[int], gateway_sizes: list[int], lookups: int) -> list[Figure]:
    async with database_server("chukan-bench-codes-") as server:
        figures = await gateway_bench(server.url, gateway_sizes, lookups) if gateway_sizes else []
        if hub_sizes:
            figures += await hub_bench(server.url, hub_sizes, lookups)
        return figures


def sizes_of(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hub-sizes", default="100000,1000000", help="people, comma-separated")
    parser.add_argument("--ten-million", action="store_true", help="add 10,000,000 hub people")
    parser.add_argument(
        "--gateway-sizes", default="10000,100000,1000000", help="mappings, comma-separated"
    )
    parser.add_argument("--lookups", type=int, default=20_000, help="timed lookups per size")
    add_json_argument(parser)
    args = parser.parse_args()
    hub_sizes = sizes_of(args.hub_sizes)
    if args.ten_million:
        hub_sizes.append(10_000_000)
    configure_logging(logging.WARNING)
    figures = asyncio.run(bench(hub_sizes, sizes_of(args.gateway_sizes), args.lookups))
    print()
    print_figures(figures)
    write_json(
        args.json,
        figures,
        hub_sizes=hub_sizes,
        gateway_sizes=sizes_of(args.gateway_sizes),
        lookups=args.lookups,
    )


if __name__ == "__main__":
    main()
