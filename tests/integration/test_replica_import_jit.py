"""The bulk import on a PostgreSQL built with LLVM: no statement of it is JIT-compiled.

The embedded PostgreSQL has no JIT, so this runs a scratch server from the machine's own
PostgreSQL binaries (the usual distribution build, with LLVM) and reads what each statement
compiled from ``pg_stat_statements``.  Before the import turned JIT off, every batch's
statement — costed over ``jit_above_cost`` by ``enable_seqscan = off`` — was compiled anew,
0.5 s a batch for a statement of milliseconds: 1,100 instead of 11,000 items/s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pwd
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from chukan.codecs.catalog import CHIBA_CITY
from chukan.gateway.core import db
from chukan.gateway.replica.cli import EXIT_OK, EXIT_REJECTED, import_file
from chukan.simulators.devnet.ports import free_port
from chukan.simulators.devnet.replica_synthetic import synthetic_entries, write_registration

pytestmark = pytest.mark.integration

DATABASE = "chukan_jit_import"
PEOPLE = [f"3{i:014d}" for i in range(300)]
TODAY = dt.date(2025, 4, 1)


def llvm_postgres() -> Path | None:
    """The ``bin`` folder of an installed PostgreSQL with LLVM JIT and pg_stat_statements."""
    for home in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        lib = home / "lib"
        if (
            (home / "bin" / "initdb").exists()
            and (lib / "llvmjit.so").exists()
            and (lib / "pg_stat_statements.so").exists()
        ):
            return home / "bin"
    return None


def as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the distribution's user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def jit_server() -> Iterator[str]:
    """A scratch PostgreSQL with JIT available and pg_stat_statements loaded; its URL."""
    bin_dir = llvm_postgres()
    if bin_dir is None:
        pytest.skip("no PostgreSQL built with LLVM JIT is installed on this machine")
    prefix = as_server_user()
    work = Path(tempfile.mkdtemp(prefix="chukan-jit-"))
    work.chmod(0o755)
    if prefix:
        shutil.chown(work, "postgres")
    data = work / "data"
    port = free_port()
    run = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    initdb = [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    try:
        subprocess.run(  # noqa: S603 -- the installed PostgreSQL, fixed arguments
            [*initdb, "--no-sync"], check=True, capture_output=True
        )
        options = (
            f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={work}"
            " -c shared_preload_libraries=pg_stat_statements -c fsync=off"
        )
        subprocess.run(  # noqa: S603 -- the installed PostgreSQL, fixed arguments
            [*run, "-o", options, "-l", str(work / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(  # noqa: S603 -- the installed PostgreSQL, fixed arguments
            [*run, "-m", "immediate", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
async def tenant(jit_server: str) -> AsyncIterator[asyncpg.Connection]:
    """A migrated gateway database on the scratch server; a session of Chiba's tenant."""
    admin_url = await db.ensure_database(jit_server, DATABASE)
    await db.migrate_url(admin_url, "chukan.gateway")
    tenant_url = await db.provision_tenant(admin_url, CHIBA_CITY, "千葉市")
    conn = await asyncpg.connect(tenant_url)
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute(
        "INSERT INTO persons (atena_id, person_code) "
        "SELECT a, 'JIT' || a FROM unnest($1::text[]) AS a",
        PEOPLE,
    )
    yield conn
    await conn.close()


async def jit_functions(server_url: str, pattern: str) -> int:
    conn = await asyncpg.connect(server_url)
    try:
        compiled: int = await conn.fetchval(
            "SELECT coalesce(sum(jit_functions), 0) FROM pg_stat_statements WHERE query ~ $1",
            pattern,
        )
        return compiled
    finally:
        await conn.close()


async def test_the_import_compiles_no_statement(
    jit_server: str, tenant: asyncpg.Connection, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(jit_server)
    try:
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        assert await admin.fetchval("SELECT pg_jit_available()")
        await admin.execute("SELECT pg_stat_statements_reset()")
        # The server does compile what is costed over the threshold: the check can see JIT.
        await admin.execute("SET jit_above_cost = 0")
        await admin.fetchval("SELECT sum(x) FROM generate_series(1, 10) AS x")
    finally:
        await admin.close()
    assert await jit_functions(jit_server, "generate_series") > 0

    # Applied ahead, batch by batch (each batch's statement runs with enable_seqscan off).
    rng = random.Random(12)
    entries = list(synthetic_entries(PEOPLE, 2_500, rng=rng, today=TODAY, record_prefix="J"))
    path = write_registration(tmp_path / "ahead.xml", "JIT-AHEAD", entries)
    result = await import_file(tenant, path, batch_size=500)
    assert result.exit_code == EXIT_OK, result.error
    assert await tenant.fetchval("SELECT count(*) FROM replica_items") == len(entries)

    # The checked way: an unknown person makes the message go through staging and the checks.
    bad = list(synthetic_entries(PEOPLE, 1_200, rng=rng, today=TODAY, record_prefix="K"))
    bad[700] = dataclasses.replace(bad[700], atena_id="999999999999996")
    path = write_registration(tmp_path / "checked.xml", "JIT-CHECKED", bad)
    result = await import_file(tenant, path, batch_size=500)
    assert result.exit_code == EXIT_REJECTED
    assert result.outcome is not None
    assert [r["code"] for r in result.outcome.rejected] == ["person_unknown"]

    assert await jit_functions(jit_server, "replica_") == 0
