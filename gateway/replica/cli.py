"""``chukan replica …``: bulk import, export and reconciliation of the replica (副本).

``chukan replica import FILE… --tenant CODE``
    Applies IF_DBM_20113_R01 registration messages of any size: each FILE is one
    message, applied whole or not at all exactly as through the internal API
    (same checks, same MSGID idempotency, every rejected entry listed), streamed
    with constant memory, validated in a process pool (``--workers``; 0 validates
    in one thread), ``COPY``-ed into PostgreSQL and applied with one set-based
    ``INSERT … SELECT`` in the same transaction. A progress bar goes to stderr, a
    summary with items/s to stdout. Each file is recorded as a job
    (``replica.import``).

``chukan replica export --tenant CODE --item-code TM… [--history] [-o FILE]``
    The replica of one item as CSV (the format of ``chukan.gateway.replica.reconcile``).

``chukan replica diff EXPORT ORIGINALS``
    Missing, extra and differing records; exit 0 identical, 1 differences, 2 bad
    input. Needs no database.

**Database access.** The import works directly on the gateway database (``COPY``)
as the tenant's own login role, so row-level security applies exactly as for the
tenant's gateway:

* ``--database-url URL`` (or ``CHUKAN_TENANT_DATABASE_URL``): a URL that logs in as
  the tenant role (``chukan_tenant_<code>``, what the gateway of that agency uses);
* otherwise the server of ``CHUKAN_DATABASE_URL`` (or the embedded PostgreSQL in
  ``--data-dir``) with the owner's credentials, database ``--database`` (default
  ``chukan_gateway``), and the session switches to the tenant role with ``SET
  ROLE`` (the owner — CREATEDB and CREATEROLE, no superuser — is a member of every
  tenant role it provisioned; the tenant's password is never reset, so running
  gateways are not disturbed).

Either way the session's tenant must be ``--tenant``. The database must have been
migrated (``chukan db migrate``); a pending migration is refused. Exit codes of ``import``: 0 every
message applied (or answered from a previous run), 1 some message rejected or
refused, 2 bad invocation or database not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg

from chukan.codecs.catalog import ITEM_CODE_PATTERN
from chukan.codecs.errors import CodecError
from chukan.gateway.core import db, jobs
from chukan.gateway.core.errors import MigrationsPendingError
from chukan.gateway.replica.decoding import DecodedBatch, warm_worker
from chukan.gateway.replica.errors import (
    MessageIdReusedError,
    ReconcileInputError,
    ReplicaCommandError,
)
from chukan.gateway.replica.items import EXPORT_COLUMNS, csv_text, export_batches
from chukan.gateway.replica.reconcile import diff, read_file
from chukan.gateway.replica.registration import (
    DEFAULT_BATCH,
    RegistrationOutcome,
    RegistrationSource,
    apply_registration,
)

GATEWAY_DATABASE: Final = "chukan_gateway"
JOB_KIND: Final = "replica.import"
EXIT_OK: Final = 0
EXIT_REJECTED: Final = 1
EXIT_USAGE: Final = 2


# -- progress ------------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, lines otherwise."""

    WIDTH: Final = 24

    def __init__(self, total_bytes: int, stream: TextIO, *, enabled: bool = True) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else 2.0
        self.started = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def _line(self, consumed: int, entries: int) -> str:
        fraction = min(consumed / self.total, 1.0)
        filled = int(fraction * self.WIDTH)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (
            f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {fraction:4.0%} "
            f"{consumed / 1e6:8.1f}/{self.total / 1e6:.1f} MB {entries:>9,} entries "
            f"{entries / elapsed:>8,.0f}/s"
        )

    def update(self, consumed: int, entries: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self._line(consumed, entries))
        else:
            self.stream.write(self._line(consumed, entries) + "\n")
        self.stream.flush()
        self.shown = True

    def finish(self, entries: int) -> None:
        if not self.enabled:
            return
        self.update(self.total, entries, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- database ------------------------------------------------------------------------------


async def connect_tenant(
    tenant: str, *, database_url: str | None, server_url: str | None, database: str
) -> asyncpg.Connection:
    """A session whose tenant (row-level security) is ``tenant``."""
    try:
        role = db.tenant_role(tenant)
    except ValueError:
        raise ReplicaCommandError(
            f"--tenant must be an agency code of 6 or 16 digits, not {tenant!r}"
        ) from None
    try:
        if database_url:
            conn = await asyncpg.connect(database_url)
        else:
            assert server_url is not None
            conn = await asyncpg.connect(db.with_database(server_url, database))
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.close()
                raise ReplicaCommandError(
                    f"tenant {tenant} is not provisioned in database {database}"
                )
            try:
                # `role` matched a strict pattern (tenant_role); names cannot be parameters.
                await conn.execute(f"SET ROLE {role}")
            except asyncpg.InsufficientPrivilegeError:
                await conn.close()
                raise ReplicaCommandError(
                    f"this login is not a member of {role}: use the owner that provisioned "
                    "the tenant, or give the tenant's own URL with --database-url"
                ) from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise ReplicaCommandError(f"cannot connect to the gateway database: {exc}") from None
    await conn.execute("SET TIME ZONE 'UTC'")
    try:
        await db.require_migrations(conn, "gateway", db.load_migrations("chukan.gateway"))
        session_tenant = await conn.fetchval("SELECT chukan_tenant()")
    except MigrationsPendingError as exc:
        await conn.close()
        raise ReplicaCommandError(exc.message) from None
    except asyncpg.UndefinedFunctionError:
        await conn.close()
        raise ReplicaCommandError("the database is not a migrated gateway database") from None
    if session_tenant != tenant:
        await conn.close()
        raise ReplicaCommandError(
            f"the database session belongs to tenant {session_tenant!r}, not {tenant}"
        )
    return conn


# -- import --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: Path
    job_id: int
    exit_code: int
    outcome: RegistrationOutcome | None
    error: str | None
    seconds: float

    @property
    def entries(self) -> int:
        return int(self.outcome.body.get("entries", 0)) if self.outcome else 0


def _file_facts(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file (the digest identifies the message for replays)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def default_workers(cpus: int | None = None) -> int:
    """Validation processes worth starting: measured (bench/replica_import.py), a pool
    only pays when cores are left beside the splitting thread and PostgreSQL."""
    cpus = cpus or os.cpu_count() or 1
    return 0 if cpus <= 2 else cpus - 1


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """Validation workers: spawned (never forked from a process with threads), warmed."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=warm_worker,
    )


async def import_file(
    conn: asyncpg.Connection,
    path: Path,
    *,
    pool: concurrent.futures.Executor | None = None,
    workers: int = 0,
    batch_size: int = DEFAULT_BATCH,
    stored_by: str = "replica-import",
    progress: TextIO | None = None,
) -> ImportResult:
    """Import one message file as one job; never raises for a bad file."""
    size, digest = await asyncio.to_thread(_file_facts, path)
    job_id = await jobs.create_job(conn, JOB_KIND, subject=path.name[:200], created_by=stored_by)
    await jobs.start_job(conn, job_id)
    bar = Progress(size, progress or sys.stderr, enabled=progress is not None)
    entries_seen = 0

    def on_batch(batch: DecodedBatch, entries: int) -> None:
        nonlocal entries_seen
        entries_seen = entries
        bar.update(batch.consumed, entries)

    started = time.perf_counter()
    try:
        with path.open("rb") as stream:
            async with RegistrationSource(
                stream,
                pool=pool,
                batch_size=batch_size,
                depth=2 * workers + 2 if pool is not None else 4,
                split=True,
            ) as source:
                outcome = await apply_registration(
                    conn,
                    source,
                    body_sha256=digest,
                    stored_by=stored_by,
                    job_id=job_id,
                    on_batch=on_batch,
                    apply_ahead=True,
                )
    except (CodecError, MessageIdReusedError) as exc:
        seconds = time.perf_counter() - started
        bar.finish(entries_seen)
        code = getattr(exc, "code", "error")
        error = f"{code}: {exc}"
        await jobs.fail_job(conn, job_id, error, counts={"entries": entries_seen})
        return ImportResult(path, job_id, EXIT_REJECTED, None, error, seconds)
    seconds = time.perf_counter() - started
    bar.finish(int(outcome.body.get("entries", entries_seen)))
    body = outcome.body
    counts = {
        "entries": int(body.get("entries", 0)),
        "registered": int(body.get("registered", 0)),
        "deleted": int(body.get("deleted", 0)),
        "rejected": len(outcome.rejected),
        "replayed": int(outcome.replayed),
    }
    if outcome.outcome in ("accepted", "validated"):
        await jobs.finish_job(conn, job_id, counts)
        return ImportResult(path, job_id, EXIT_OK, outcome, None, seconds)
    error = f"{len(outcome.rejected)} of {counts['entries']} entries rejected; nothing was stored"
    await jobs.fail_job(conn, job_id, error, counts=counts)
    return ImportResult(path, job_id, EXIT_REJECTED, outcome, error, seconds)


def report(result: ImportResult, out: TextIO) -> None:
    """Summary (and every rejected entry) of one file, on ``out``."""
    rate = result.entries / result.seconds if result.seconds > 0 else 0.0
    outcome = result.outcome
    if outcome is None:
        print(f"{result.path}: refused ({result.error}) [job {result.job_id}]", file=out)
        return
    body = outcome.body
    head = f"{result.path}: message {body.get('message_id')}"
    replay = (
        " (already received: first result repeated, nothing applied)" if outcome.replayed else ""
    )
    if outcome.outcome in ("accepted", "validated"):
        print(
            f"{head} {outcome.outcome}{replay}: {result.entries:,} entries "
            f"({body.get('registered', 0):,} registered, {body.get('deleted', 0):,} deleted) "
            f"in {result.seconds:.2f} s = {rate:,.0f} items/s "
            f"[reception {body.get('reception_number')}, job {result.job_id}]",
            file=out,
        )
        return
    print(f"{head} rejected{replay}: {result.error} [job {result.job_id}]", file=out)
    print("rejected\tposition\trecord_id\tcode\tmessage\twhere", file=out)
    for rejected in outcome.rejected:
        print(
            "rejected\t{position}\t{record_id}\t{code}\t{message}\t{where}".format(
                **{k: "" if v is None else v for k, v in rejected.items()}
            ),
            file=out,
        )


async def run_import(
    files: list[Path],
    conn: asyncpg.Connection,
    *,
    workers: int,
    batch_size: int = DEFAULT_BATCH,
    stored_by: str = "replica-import",
    progress: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Import every file in order; the worst exit code."""
    out = out or sys.stdout
    pool = process_pool(workers) if workers > 0 else None
    worst = EXIT_OK
    try:
        for path in files:
            result = await import_file(
                conn,
                path,
                pool=pool,
                workers=workers,
                batch_size=batch_size,
                stored_by=stored_by,
                progress=progress,
            )
            report(result, out)
            worst = max(worst, result.exit_code)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return worst


# -- export --------------------------------------------------------------------------------


async def run_export(conn: asyncpg.Connection, item_code: str, history: bool, out: TextIO) -> int:
    rows = 0
    out.write(csv_text([list(EXPORT_COLUMNS)]))
    async with conn.transaction(readonly=True):
        async for batch in export_batches(conn, item_code, history=history):
            rows += len(batch)
            out.write(csv_text(batch))
    out.flush()
    print(f"exported {rows:,} rows of {item_code}", file=sys.stderr)
    return EXIT_OK


# -- diff ----------------------------------------------------------------------------------


def run_diff(export: Path, originals: Path, out: TextIO) -> int:
    try:
        replica = read_file(export, version_required=True)
        original = read_file(originals)
    except ReconcileInputError as exc:
        print(f"bad input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    differences = diff(replica, original)
    for difference in differences:
        print(difference.line(), file=out)
    kinds = {kind: sum(d.kind == kind for d in differences) for kind in ("missing", "extra")}
    print(
        f"{len(replica):,} replica records, {len(original):,} originals: "
        f"{kinds['missing']:,} missing, {kinds['extra']:,} extra, "
        f"{len(differences) - sum(kinds.values()):,} differing",
        file=sys.stderr,
    )
    return EXIT_REJECTED if differences else EXIT_OK


# -- command line --------------------------------------------------------------------------


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, help="agency code (6 or 16 digits)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHUKAN_TENANT_DATABASE_URL"),
        help="URL logging in as the tenant's role (default $CHUKAN_TENANT_DATABASE_URL)",
    )
    parser.add_argument(
        "--database",
        default=GATEWAY_DATABASE,
        help=f"gateway database on the server of $CHUKAN_DATABASE_URL (default {GATEWAY_DATABASE})",
    )


def add_parser(commands: Any) -> None:
    """Add ``replica`` and its subcommands to the ``chukan`` command line."""
    replica = commands.add_parser("replica", help="副本: bulk import, export, reconciliation")
    sub = replica.add_subparsers(dest="replica_command", required=True)
    importer = sub.add_parser("import", help="apply registration message files (IF_DBM_20113_R01)")
    importer.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _database_options(importer)
    importer.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="validation processes (0: validate in one thread; default: CPU count - 1, "
        "or 0 on two cores or fewer)",
    )
    importer.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="entries per batch")
    importer.add_argument("--stored-by", default="replica-import", help="recorded as the writer")
    importer.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    exporter = sub.add_parser("export", help="the replica of one item as CSV")
    _database_options(exporter)
    exporter.add_argument("--item-code", required=True)
    exporter.add_argument("--history", action="store_true", help="every version, not only current")
    exporter.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")
    differ = sub.add_parser("diff", help="compare an export with the core system's originals")
    differ.add_argument("export", type=Path)
    differ.add_argument("originals", type=Path)


async def _with_connection(args: argparse.Namespace, server_url: str | None) -> int:
    conn = await connect_tenant(
        args.tenant,
        database_url=args.database_url,
        server_url=server_url,
        database=args.database,
    )
    try:
        if args.replica_command == "import":
            missing = [str(p) for p in args.files if not p.is_file()]
            if missing:
                raise ReplicaCommandError(f"no such file: {', '.join(missing)}")
            if args.workers < 0 or args.batch < 1:
                raise ReplicaCommandError("--workers must be >= 0 and --batch >= 1")
            return await run_import(
                args.files,
                conn,
                workers=args.workers,
                batch_size=args.batch,
                stored_by=args.stored_by,
                progress=None if args.no_progress else sys.stderr,
            )
        if not ITEM_CODE_PATTERN.match(args.item_code):
            raise ReplicaCommandError("--item-code must be TM followed by 14 digits")
        if args.output is not None:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                return await run_export(conn, args.item_code, args.history, out)
        return await run_export(conn, args.item_code, args.history, sys.stdout)
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``chukan replica …`` (after argument parsing)."""
    if args.replica_command == "diff":
        return run_diff(args.export, args.originals, sys.stdout)
    embedded: db.EmbeddedPostgres | None = None
    try:
        server_url = None
        if not args.database_url:
            server_url, embedded = db.server_url(args.data_dir)
        return asyncio.run(_with_connection(args, server_url))
    except ReplicaCommandError as exc:
        print(f"chukan replica {args.replica_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if embedded is not None:
            embedded.stop()
