"""Bulk replica import throughput, measured beside a bare COPY of the same rows in the same run.

One synthetic IF_DBM_20113_R01 message of ``--entries`` registrations (default
100,000, over 20,000 people and five item codes) is imported into a fresh gateway
database as tenant 千葉市, exactly as ``chukan replica import`` does it: streaming
parse, XSD validation of every entry and item, canonical re-encoding, ``COPY`` into
a staging table, the set-based checks and one ``INSERT … SELECT``, all in one
transaction. It runs twice — validation in one thread (``--workers 0``) and in a
process pool — after a decode-only pass of each (no database) that shows where the
time goes.

The baseline is a bare ``COPY`` of the same rows (宛名番号, item, record key,
version, validity, canonical content, digest) into a plain table, with the same
asyncpg client, so the ratio shows what validation and the checks cost over
moving the bytes alone.

Run:  .venv/bin/python bench/replica_import.py [--entries 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.replica.cli import import_file, process_pool
from chukan.gateway.replica.registration import RegistrationSource
from chukan.simulators.devnet.replica_synthetic import synthetic_entries, write_registration

DATABASE = "chukan_bench_replica"
TODAY = dt.date(2025, 4, 1)


async def decode_only(path: Path, workers: int) -> float:
    """Entries per second through the decoding pipeline alone (no database)."""
    pool = process_pool(workers) if workers else None
    try:
        if pool is not None:  # start and warm the workers outside the measurement
            await asyncio.gather(
                *(asyncio.wrap_future(pool.submit(len, "")) for _ in range(workers))
            )
        started = time.perf_counter()
        entries = 0
        with path.open("rb") as stream:
            async with RegistrationSource(
                stream, pool=pool, depth=2 * workers + 2 if pool else 4
            ) as source:
                await source.header()
                async for batch in source.batches():
                    entries += batch.entries
        return entries / (time.perf_counter() - started)
    finally:
        if pool is not None:
            pool.shutdown()


async def validated_import(
    admin: asyncpg.Connection, tenant_url: str, path: Path, workers: int
) -> tuple[float, int]:
    """Items per second of a whole import (file to commit); returns (rate, entries)."""
    await admin.execute("TRUNCATE replica_items, replica_messages")
    pool = process_pool(workers) if workers else None
    conn = await asyncpg.connect(tenant_url)
    try:
        if pool is not None:
            await asyncio.gather(
                *(asyncio.wrap_future(pool.submit(len, "")) for _ in range(workers))
            )
        started = time.perf_counter()
        result = await import_file(conn, path, pool=pool, workers=workers)
        seconds = time.perf_counter() - started
        assert result.exit_code == 0, result.error or result.outcome
        stored = await conn.fetchval("SELECT count(*) FROM replica_items")
        assert stored == result.entries, (stored, result.entries)
        return result.entries / seconds, result.entries
    finally:
        await conn.close()
        if pool is not None:
            pool.shutdown()


async def bare_copy(admin: asyncpg.Connection, rows: list[tuple[object, ...]]) -> float:
    """Rows per second of COPY into a plain table with the replica's columns."""
    await admin.execute(
        """DROP TABLE IF EXISTS bench_copy;
           CREATE TABLE bench_copy (atena_id text, item_code text, record_key text,
               version integer, valid_from date, valid_to date, content bytea, digest text)"""
    )
    started = time.perf_counter()
    async with admin.transaction():
        await admin.copy_records_to_table(
            "bench_copy",
            records=rows,
            columns=(
                "atena_id",
                "item_code",
                "record_key",
                "version",
                "valid_from",
                "valid_to",
                "content",
                "digest",
            ),
        )
    rate = len(rows) / (time.perf_counter() - started)
    await admin.execute("DROP TABLE bench_copy")
    return rate


async def bench(entries: int, people: int, workers: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="chukan-bench-"))
    embedded = None
    server_url = os.environ.get("CHUKAN_DATABASE_URL")
    if not server_url:
        embedded = db.EmbeddedPostgres(work / "pg")
        server_url = embedded.start()
    try:
        await db.drop_database(server_url, DATABASE)
        admin_url = await db.ensure_database(server_url, DATABASE)
        await db.migrate_url(admin_url, "chukan.gateway")
        tenant_url = await db.provision_tenant(admin_url, catalog.CHIBA_CITY, "千葉市")
        atena_ids = [f"1{i:014d}" for i in range(people)]
        print(f"generating {entries:,} entries over {people:,} people …", flush=True)
        rng = random.Random(3)
        message = list(synthetic_entries(atena_ids, entries, rng=rng, today=TODAY))
        path = write_registration(work / "message.xml", "BENCH-0001", message)
        print(f"message of {path.stat().st_size / 1e6:.1f} MB", flush=True)
        conn = await asyncpg.connect(tenant_url)
        try:
            await conn.execute(
                "INSERT INTO persons (atena_id, person_code) "
                "SELECT a, 'BENCH' || a FROM unnest($1::text[]) AS a",
                atena_ids,
            )
        finally:
            await conn.close()
        admin = await asyncpg.connect(admin_url)
        try:
            rows: list[tuple[object, ...]] = []
            for entry in message:
                assert entry.item is not None
                rows.append(
                    (
                        entry.atena_id,
                        entry.item_code,
                        entry.record_key,
                        1,
                        entry.valid_from,
                        entry.valid_to,
                        entry.item,
                        hashlib.sha256(entry.item).hexdigest(),
                    )
                )
            del message
            await bare_copy(admin, rows[: min(len(rows), 5000)])  # warm-up
            baseline = await bare_copy(admin, rows)
            del rows
            for count in (0, workers):
                label = "1 thread" if count == 0 else f"{count} processes"
                decode = await decode_only(path, count)
                report(f"decode + validate only, {label}", decode, baseline)
                rate, _ = await validated_import(admin, tenant_url, path, count)
                report(f"validated import, {label}", rate, baseline)
        finally:
            await admin.close()
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(name: str, value: float, baseline: float) -> None:
    print(
        f"{name:38s} {value:10,.0f} items/s   bare COPY {baseline:10,.0f} rows/s   "
        f"ratio {value / baseline:6.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    asyncio.run(bench(args.entries, args.people, args.workers))


if __name__ == "__main__":
    main()
