"""Migrations: ordered, recorded, idempotent, tamper-refusing, safe under concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chukan.gateway.core import db

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch_url(pg_server_url: str, db_prefix: str) -> AsyncIterator[str]:
    name = f"{db_prefix}scratch"
    await db.drop_database(pg_server_url, name)
    url = await db.ensure_database(pg_server_url, name)
    try:
        yield url
    finally:
        await db.drop_database(pg_server_url, name)


async def test_migrations_apply_once_in_order(scratch_url: str) -> None:
    migrations = db.load_migrations("chukan.gateway")
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].version == 1
    conn = await asyncpg.connect(scratch_url)
    try:
        applied = await db.migrate(conn, migrations)
        assert applied == [m.version for m in migrations]
        assert await db.migrate(conn, migrations) == []  # re-running is a no-op
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in migrations
        ]
    finally:
        await conn.close()


async def test_an_edited_migration_is_refused(scratch_url: str) -> None:
    migrations = db.load_migrations("chukan.gateway")
    conn = await asyncpg.connect(scratch_url)
    try:
        await db.migrate(conn, migrations)
        edited = [dataclasses.replace(migrations[0], sql=migrations[0].sql + "\n-- edited")]
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            await db.migrate(conn, edited + migrations[1:])
    finally:
        await conn.close()


async def test_concurrent_starts_apply_each_migration_once(scratch_url: str) -> None:
    results = await asyncio.gather(
        *(db.migrate_url(scratch_url, "chukan.gateway") for _ in range(3))
    )
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in db.load_migrations("chukan.gateway")]


async def test_a_failing_migration_leaves_nothing_behind(scratch_url: str) -> None:
    broken = [
        db.Migration(1, "good", "CREATE TABLE a (x int)"),
        db.Migration(2, "bad", "CREATE TABLE b (x int); SELECT no_such_function()"),
    ]
    conn = await asyncpg.connect(scratch_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await db.migrate(conn, broken)
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in versions] == [1]
        assert await conn.fetchval("SELECT to_regclass('b')") is None
    finally:
        await conn.close()


def test_database_names_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid database name"):
        db.with_database("postgresql://u@h/x", 'x"; DROP DATABASE y; --')
    assert db.with_database("postgresql://u:p@h:5432/x?sslmode=require", "chukan_hub") == (
        "postgresql://u:p@h:5432/chukan_hub?sslmode=require"
    )
    assert db.with_credentials("postgresql://u:p@h:5432/x", "r", "p w") == (
        "postgresql://r:p%20w@h:5432/x"
    )
