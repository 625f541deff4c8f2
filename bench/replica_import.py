"""Validated replica import (``chukan replica import``) beside a bare COPY of the same rows, at
several message sizes, in one thread and in a process pool.

For each size (``--sizes``, default 10,000 and 100,000 entries; up to ≈ 950,000, above which
the message passes the 1 GiB a message may have, ``StreamLimits.max_bytes``) a fresh
gateway database gets tenant 千葉市, ``entries / 5`` registered people and one synthetic
IF_DBM_20113_R01 message of that many registrations (five item codes per person, ≈ 1.1 kB
an entry), written to a file.  The message is then imported exactly as ``chukan replica
import`` does it (:func:`chukan.gateway.replica.cli.import_file` on a tenant session):
hardened streaming parse, XSD validation of every entry and every item, canonical
re-encoding of every item, ``COPY`` into a staging table, the set-based checks and one
``INSERT … SELECT``, all in one transaction, recorded as a job.  It runs once validating in
one thread (``--workers 0``) and once in a pool of ``--workers`` processes (default 2); the
pool is started and warmed before the clock starts (its start-up is printed apart: a
``chukan replica import`` of several files pays it once).

Baseline: a bare ``COPY`` of the same rows (宛名番号, item code, record key, version,
validity, the canonical item bytes, their SHA-256) into a plain table, with the same asyncpg
client in one transaction — moving the bytes alone; measured before and after the imports,
the better of the two kept.

Figures: ``validated import, 1 thread, <size> entries`` and ``validated import, N processes,
<size> entries`` in items/s, each with ratio to the bare COPY; the phases of each import
(stage = parse + validate + COPY, pipelined; check; apply; commit) are printed beside.

Run:  .venv/bin/python -m bench.replica_import [--sizes 10000,100000,500000] [--workers 2]
      [--no-thread] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench.harness import (
    Figure,
    Server,
    add_json_argument,
    database_server,
    print_figures,
    write_json,
)
from bench.servers import cpu_seconds, postgres_pids
from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.logs import configure_logging
from chukan.gateway.replica.cli import import_file, process_pool
from chukan.simulators.devnet.replica_synthetic import (
    SyntheticEntry,
    synthetic_entries,
    write_registration,
)

DATABASE = "chukan_bench_replica"
TODAY = dt.date(2025, 4, 1)
#: Rows handed to one ``copy_records_to_table`` call of the baseline (bounds its memory).
BASELINE_CHUNK = 50_000
BASELINE_COLUMNS = (
    "atena_id",
    "item_code",
    "record_key",
    "version",
    "valid_from",
    "valid_to",
    "content",
    "digest",
)


def message_entries(entries: int, people: int) -> Iterator[SyntheticEntry]:
    """The bench's message, the same every time it is asked for (fixed seed)."""
    atena_ids = [f"1{i:014d}" for i in range(people)]
    return synthetic_entries(atena_ids, entries, rng=random.Random(3), today=TODAY)


def baseline_rows(entries: int, people: int) -> Iterator[list[tuple[object, ...]]]:
    """The rows the import stores (canonical item bytes and their digest), in chunks."""
    chunk: list[tuple[object, ...]] = []
    for entry in message_entries(entries, people):
        assert entry.item is not None  # synthetic items are already canonical
        chunk.append(
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
        if len(chunk) >= BASELINE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def bare_copy(admin: asyncpg.Connection, entries: int, people: int) -> float:
    """Rows per second of COPY of the import's rows into a plain table (copy time only)."""
    await admin.execute(
        """DROP TABLE IF EXISTS bench_copy;
           CREATE TABLE bench_copy (atena_id text, item_code text, record_key text,
               version integer, valid_from date, valid_to date, content bytea, digest text)"""
    )
    seconds = 0.0
    rows = 0
    async with admin.transaction():
        for chunk in baseline_rows(entries, people):
            started = time.perf_counter()
            await admin.copy_records_to_table("bench_copy", records=chunk, columns=BASELINE_COLUMNS)
            seconds += time.perf_counter() - started
            rows += len(chunk)
    await admin.execute("DROP TABLE bench_copy")
    return rows / seconds


async def start_pool(workers: int) -> tuple[concurrent.futures.ProcessPoolExecutor, float]:
    """A warmed validation pool (every worker started) and the seconds it took."""
    started = time.perf_counter()
    pool = process_pool(workers)
    # One task per worker that waits a little, so that every worker is started and warmed.
    await asyncio.gather(
        *(asyncio.wrap_future(pool.submit(time.sleep, 0.05)) for _ in range(workers))
    )
    return pool, time.perf_counter() - started


async def validated_import(
    admin: asyncpg.Connection, tenant_url: str, path: Path, workers: int, data_dir: Path | None
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Items per second of one whole import (file to commit), its phases in seconds and its
    CPU per entry in µs: this process, the pool's workers, the embedded PostgreSQL (read
    from ``/proc``: steadier than a rate on a shared machine, as it leaves out waiting)."""
    await admin.execute("TRUNCATE replica_items, replica_messages")
    await admin.execute("VACUUM ANALYZE replica_items")
    pool = None
    conn = await asyncpg.connect(tenant_url)
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        if workers:
            pool, pool_seconds = await start_pool(workers)
            print(f"  pool of {workers} processes started in {pool_seconds:.2f} s", flush=True)
        parts: dict[str, list[int]] = {
            "main": [os.getpid()],
            "workers": []
            if pool is None
            else [p.pid for p in pool._processes.values() if p.pid is not None],
            "PostgreSQL": postgres_pids(data_dir),
        }
        before = {name: cpu_seconds(pids) for name, pids in parts.items()}
        started = time.perf_counter()
        result = await import_file(conn, path, pool=pool, workers=workers)
        seconds = time.perf_counter() - started
        used = {name: cpu_seconds(pids) - before[name] for name, pids in parts.items()}
        assert result.exit_code == 0, result.error or result.outcome
        assert result.outcome is not None
        stored = await conn.fetchval("SELECT count(*) FROM replica_items")
        assert stored == result.entries, (stored, result.entries)
        cpu = {name: value * 1e6 / result.entries for name, value in used.items()}
        return result.entries / seconds, result.outcome.timings, cpu
    finally:
        await conn.close()
        if pool is not None:
            pool.shutdown()


async def prepare(server_url: str, work: Path, entries: int, people: int) -> tuple[str, str, Path]:
    """A fresh migrated database with the tenant and its people; the message file."""
    await db.drop_database(server_url, DATABASE)
    admin_url = await db.ensure_database(server_url, DATABASE)
    await db.migrate_url(admin_url, "chukan.gateway")
    tenant_url = await db.provision_tenant(admin_url, catalog.CHIBA_CITY, "千葉市")
    conn = await asyncpg.connect(tenant_url)
    try:
        await conn.execute(
            "INSERT INTO persons (atena_id, person_code) "
            "SELECT a, 'BENCH' || a FROM unnest($1::text[]) AS a",
            [f"1{i:014d}" for i in range(people)],
        )
    finally:
        await conn.close()
    path = write_registration(
        work / f"message-{entries}.xml", f"BENCH-{entries}", message_entries(entries, people)
    )
    return admin_url, tenant_url, path


def size_label(entries: int) -> str:
    if entries >= 1_000_000 and entries % 1_000_000 == 0:
        return f"{entries // 1_000_000}M"
    if entries >= 1_000 and entries % 1_000 == 0:
        return f"{entries // 1_000}k"
    return f"{entries:,}"


def phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{name[:-3]} {seconds:.2f} s" for name, seconds in timings.items())


def cpu_split(cpu: dict[str, float]) -> str:
    parts = " + ".join(f"{name} {value:.0f}" for name, value in cpu.items())
    return f"CPU per entry {parts} = {sum(cpu.values()):.0f} µs"


async def bench_size(
    server: Server, entries: int, workers: int, *, thread: bool = True
) -> list[Figure]:
    server_url, work = server.url, server.work
    people = max(1, entries // 5)
    print(f"{size_label(entries)} entries over {people:,} people …", flush=True)
    admin_url, tenant_url, path = await prepare(server_url, work, entries, people)
    print(f"  message of {path.stat().st_size / 1e6:.1f} MB", flush=True)
    admin = await asyncpg.connect(admin_url)
    figures: list[Figure] = []
    try:
        await bare_copy(admin, min(entries, 5_000), people)  # warm-up
        baseline = await bare_copy(admin, entries, people)
        print(f"  bare COPY {baseline:,.0f} rows/s", flush=True)
        rates: list[tuple[str, float]] = []
        cpus: list[tuple[str, dict[str, float]]] = []
        counts = ([0] if thread or not workers else []) + ([workers] if workers else [])
        for count in counts:
            label = "1 thread" if count == 0 else f"{count} processes"
            rate, timings, cpu = await validated_import(
                admin, tenant_url, path, count, server.data_dir
            )
            print(f"  {label}: {rate:,.0f} items/s ({phases(timings)})", flush=True)
            print(f"    {cpu_split(cpu)}", flush=True)
            rates.append((label, rate))
            cpus.append((label, cpu))
        again = await bare_copy(admin, entries, people)
        print(f"  bare COPY again {again:,.0f} rows/s", flush=True)
        baseline = max(baseline, again)
        for label, rate in rates:
            figures.append(
                Figure(
                    f"validated import, {label}, {size_label(entries)} entries",
                    rate,
                    "items/s",
                    baseline_name="bare COPY",
                    baseline=baseline,
                )
            )
        for label, cpu in cpus:
            for name, value in cpu.items():
                figures.append(
                    Figure(f"{name} CPU per entry, {label}, {size_label(entries)}", value, "µs")
                )
    finally:
        await admin.close()
        path.unlink()
    return figures


async def bench(sizes: list[int], workers: int, *, thread: bool = True) -> list[Figure]:
    async with database_server("chukan-bench-import-") as server:
        figures: list[Figure] = []
        for entries in sizes:
            figures += await bench_size(server, entries, workers, thread=thread)
        await db.drop_database(server.url, DATABASE)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="entries per message, comma-separated (default 10000,100000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="validation processes of the pool run (0: only the one-thread run; default 2)",
    )
    parser.add_argument(
        "--no-thread",
        action="store_true",
        help="skip the one-thread run (e.g. for the largest sizes)",
    )
    add_json_argument(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or args.workers < 0:
        parser.error("--sizes needs positive numbers and --workers must be >= 0")
    configure_logging(logging.WARNING)
    figures = asyncio.run(bench(sizes, args.workers, thread=not args.no_thread))
    print()
    print_figures(figures)
    write_json(args.json, figures, sizes=sizes, workers=args.workers)


if __name__ == "__main__":
    main()
