"""``records verify`` throughput and memory at several chain lengths, beside a bare read of the
same rows in the same run.

A fresh gateway database gets one tenant (千葉市) whose chain grows to each size in turn
(default 100,000 and 1,000,000 records; ``--sizes`` or ``--ten-million`` for more).  The
records are written the way the product writes them: ``INSERT INTO provision_records (content
columns) SELECT … FROM generate_series`` as the tenant's own role, so the chain trigger numbers
and hashes every row exactly as for a provision (tenant, seq, recorded_at and hashes are the
database's).  Rows vary like real ones: both roles, four outcomes, NULL permit ids, provided_at
and reason codes, non-disclosure flags, distinct 宛名番号 and query ids.

At each size:

* ``verify`` — :func:`chukan.gateway.records.verify.verify_chain`, the function ``chukan records
  verify`` and ``GET /staff/v1/records/verify`` call, over the whole chain with its signed
  checkpoint (every record's hash recomputed in Python), in records per second;
* ``peak memory`` — the same walk again under :mod:`tracemalloc` (its peak allocation, in MiB),
  which must not grow with the chain;
* baseline ``bare read`` — the same columns of the same rows, in the same order and format
  (``COPY (SELECT …) TO STDOUT``, text), read by the same asyncpg client into a sink that only
  counts bytes: what moving the rows costs without decoding or hashing them, rows per second.

Records are loaded 1,000 per ``INSERT … SELECT`` (each its own transaction) at a few thousand
per second: the chain trigger is the bound (about 4 minutes per million records here).

Run:  .venv/bin/python -m bench.records_verify [--sizes 100000,1000000] [--ten-million]
      [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import logging
import time
import tracemalloc

import asyncpg

from bench.harness import Figure, add_json_argument, database_server, print_figures, write_json
from chukan.codecs import catalog
from chukan.gateway.cli.admin import tenant_connection
from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.core.settings import DEFAULT_CHECKPOINT_EVERY
from chukan.gateway.records.chain import checkpoint_message
from chukan.gateway.records.verify import COPY_COLUMNS, verify_chain
from chukan.keys import SigningKeyPair, generate_signing_key

DATABASE = "chukan_bench_records"
TENANT = catalog.CHIBA_CITY
#: Rows per INSERT … SELECT (one transaction each): the chain head is one row updated per
#: record, so long transactions make the trigger's head lookup walk many row versions
#: (20,000 rows per transaction load at a fifth of the rate of 1,000).
LOAD_BATCH = 1_000
CHECKPOINT_EVERY = DEFAULT_CHECKPOINT_EVERY

LOAD_SQL = """INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
        business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
        provided_at, outcome, reason_code, non_disclosure)
    SELECT CASE WHEN i % 3 = 0 THEN 'requester' ELSE 'provider' END,
           'bench-' || i,
           CASE WHEN i % 5 = 0 THEN NULL ELSE 'permit-' || (i * 7919) END,
           CASE WHEN i % 3 = 0 THEN $3 ELSE '122041' END,
           CASE WHEN i % 3 = 0 THEN '122041' ELSE $3 END,
           $4, $5, $6,
           CASE WHEN i % 11 = 0 THEN NULL ELSE 132 END,
           lpad((100000000000000 + i % 250000)::text, 15, '0'),
           $7::timestamptz + make_interval(secs => i * 0.037),
           CASE WHEN i % 4 = 1 THEN NULL
                ELSE $7::timestamptz + make_interval(secs => i * 0.037 + 0.0123) END,
           (ARRAY['provided', 'refused', 'held', 'provided'])[i % 4 + 1],
           CASE WHEN i % 4 = 1 THEN 'item_not_found' ELSE NULL END,
           i % 97 = 0
    FROM generate_series($1::bigint, $2::bigint) AS i"""


async def grow(tenant_url: str, start: int, stop: int) -> float:
    """Records ``start`` .. ``stop - 1`` written through the chain trigger; seconds taken."""
    conn = await asyncpg.connect(tenant_url)
    began = time.perf_counter()
    try:
        since = dt.datetime(2025, 4, 1, tzinfo=dt.UTC)
        for low in range(start, stop, LOAD_BATCH):
            high = min(stop, low + LOAD_BATCH) - 1
            await conn.execute(
                LOAD_SQL,
                low,
                high,
                TENANT,
                catalog.LTC_BUSINESS,
                catalog.LTC_CERTIFICATION_PROCEDURE,
                catalog.CERTIFICATION.code,
                since,
            )
    finally:
        await conn.close()
    return time.perf_counter() - began


async def sign_checkpoints(
    conn: asyncpg.Connection, signer: SigningKeyPair, after: int, upto: int
) -> None:
    """Signed checkpoints every ``CHECKPOINT_EVERY`` records and at the head, as the gateway's
    checkpointer leaves them (its default: one per 1,000 records)."""
    heads = await conn.fetch(
        "SELECT seq, hash FROM provision_records WHERE tenant = $1 AND seq > $2 AND seq <= $3 "
        "AND (seq % $4 = 0 OR seq = $3) ORDER BY seq",
        TENANT,
        after,
        upto,
        CHECKPOINT_EVERY,
    )
    signed_at = dt.datetime.now(dt.UTC)
    await conn.executemany(
        """INSERT INTO record_checkpoints (tenant, seq, hash, signed_at, key_id, public_key,
                                           signature)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [
            (
                TENANT,
                head["seq"],
                head["hash"],
                signed_at,
                signer.key_id,
                signer.public.raw,
                signer.sign(checkpoint_message(TENANT, head["seq"], head["hash"], signed_at)),
            )
            for head in heads
        ],
    )


async def bare_read(conn: asyncpg.Connection) -> tuple[float, int]:
    """Rows per second of the bare read of the rows the walk reads (COPY out to a byte
    counter), and the row count."""
    total = 0

    async def sink(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
        began = time.perf_counter()
        status = await conn.copy_from_query(
            f"SELECT {COPY_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed columns
            "WHERE tenant = $1 ORDER BY seq, id",
            TENANT,
            output=sink,
        )
        seconds = time.perf_counter() - began
    rows = int(status.split()[-1])
    return rows / seconds, rows


async def timed_verify(conn: asyncpg.Connection, trusted: dict[str, object]) -> tuple[float, int]:
    began = time.perf_counter()
    report = await verify_chain(conn, TENANT, trusted)  # type: ignore[arg-type]
    seconds = time.perf_counter() - began
    assert report.ok, report.issues[:5]
    return report.records / seconds, report.records


async def peak_memory(conn: asyncpg.Connection, trusted: dict[str, object]) -> float:
    """MiB: the tracemalloc peak of one whole walk."""
    gc.collect()
    tracemalloc.start()
    try:
        report = await verify_chain(conn, TENANT, trusted)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok
    return peak / 2**20


async def bench(sizes: list[int], memory: bool) -> list[Figure]:
    figures: list[Figure] = []
    async with database_server("chukan-bench-verify-") as server:
        await db.drop_database(server.url, DATABASE)
        admin_url = await db.ensure_database(server.url, DATABASE)
        await db.migrate_url(admin_url, "chukan.gateway")
        tenant_url = await db.provision_tenant(admin_url, TENANT, "千葉市")
        signer = generate_signing_key(TENANT)
        trusted: dict[str, object] = {signer.key_id: signer.public}
        have = have_signed = 0
        for size in sorted(sizes):
            seconds = await grow(tenant_url, have + 1, size + 1)
            print(
                f"loaded records {have + 1:,}..{size:,} through the chain trigger in "
                f"{seconds:.1f} s ({(size - have) / seconds:,.0f}/s)",
                flush=True,
            )
            have = size
            conn = await tenant_connection(admin_url, TENANT)
            try:
                await sign_checkpoints(conn, signer, have_signed, size)
                have_signed = size
                await bare_read(conn)  # warm the cache
                baseline, rows = await bare_read(conn)
                assert rows == size
                rate, records = await timed_verify(conn, trusted)
                assert records == size
                peak = await peak_memory(conn, trusted) if memory else None
            finally:
                await conn.close()
            figures.append(
                Figure(
                    f"records verify, {size:,} records",
                    rate,
                    "records/s",
                    "bare read (COPY out)",
                    baseline,
                )
            )
            if peak is not None:
                figures.append(Figure(f"verify peak memory, {size:,} records", peak, "MiB"))
            print_figures(figures[-2 if peak is not None else -1 :])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="100000,1000000",
        help="chain lengths, comma-separated (default 100000,1000000)",
    )
    parser.add_argument("--ten-million", action="store_true", help="add 10,000,000 records")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the tracemalloc pass (it is slower)"
    )
    add_json_argument(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.ten_million:
        sizes.append(10_000_000)
    configure_logging(logging.WARNING)
    figures = asyncio.run(bench(sizes, not args.no_memory))
    print()
    print_figures(figures)
    write_json(args.json, figures, sizes=sizes)


if __name__ == "__main__":
    main()
