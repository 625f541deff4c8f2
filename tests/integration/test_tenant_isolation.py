"""Tenant isolation is enforced by PostgreSQL itself (row-level security on the session's role)."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import pytest

from chukan.codecs import catalog
from chukan.simulators.devnet.synthetic import synthetic_person

pytestmark = pytest.mark.integration

TENANT_TABLES = (
    "provision_answers",
    "persons",
    "replica_items",
    "queries",
    "used_permits",
    "seen_messages",
    "provision_records",
    "access_refusals",
    "record_chain_heads",
    "record_checkpoints",
    "staff_accounts",
    "staff_sessions",
    "audit_trail",
    "replica_review_flags",
    "replica_messages",
    "review_queue",
)


async def test_a_tenant_session_reads_nothing_of_another_tenant(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "1")
    assert (await funabashi.register(person.atena_id, person.individual_number))[0] == 201
    own = synthetic_person(rng, "2")
    assert (await chiba.register(own.atena_id, own.individual_number))[0] == 201
    conn = await asyncpg.connect(chiba.gateway.config.database_url)
    try:
        # A crafted filter naming the other tenant, and one that tries to escape the policy.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM persons WHERE tenant = $1", catalog.FUNABASHI_CITY
            )
            == 0
        )
        assert await conn.fetchval(
            "SELECT count(*) FROM persons WHERE atena_id = $1 OR true", person.atena_id
        ) == await conn.fetchval("SELECT count(*) FROM persons")
        for table in TENANT_TABLES:
            tenants = await conn.fetch(f"SELECT DISTINCT tenant FROM {table}")  # noqa: S608
            assert {r["tenant"] for r in tenants} <= {catalog.CHIBA_CITY}, table
        # The session cannot pretend to be the other tenant.
        await conn.execute("SET chukan.tenant = '122041'")
        assert await conn.fetchval("SELECT chukan_tenant()") == catalog.CHIBA_CITY
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET ROLE chukan_tenant_122041")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM tenants")
        # Nor write rows into it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO persons (tenant, atena_id, person_code) VALUES ($1, '1', 'x')",
                catalog.FUNABASHI_CITY,
            )
        # Its own writes stay its own.
        updated = await conn.execute(
            "UPDATE persons SET registered_at = now() WHERE tenant = $1", catalog.FUNABASHI_CITY
        )
        assert updated == "UPDATE 0"
    finally:
        await conn.close()
    # The owner (superuser) sees both tenants: the rows exist, RLS hid them.
    admin = await asyncpg.connect(chiba.gateway.config.migration_database_url)
    try:
        tenants = await admin.fetch("SELECT DISTINCT tenant FROM persons")
        assert {catalog.CHIBA_CITY, catalog.FUNABASHI_CITY} <= {r["tenant"] for r in tenants}
    finally:
        await admin.close()


async def test_every_gateway_table_is_isolated(chiba: Any) -> None:
    """A table added without the policy would silently share data: refuse that."""
    admin = await asyncpg.connect(chiba.gateway.config.migration_database_url)
    try:
        rows = await admin.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant'
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                 AND c.relname <> 'tenants' AND NOT c.relispartition"""
        )
        assert rows
        for row in rows:
            assert row["relrowsecurity"] and row["relforcerowsecurity"], row["relname"]
            assert row["has_policy"], row["relname"]
        unprotected = await admin.fetch(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                 AND c.relname NOT IN ('tenants', 'schema_migrations')
                 AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                 WHERE a.attrelid = c.oid AND a.attname = 'tenant')"""
        )
        assert [r["relname"] for r in unprotected] == []
    finally:
        await admin.close()


async def test_record_partitions_are_reached_only_through_their_isolated_parent(
    chiba: Any,
) -> None:
    """Policies of a partitioned table apply through the parent only: a partition must
    give tenant roles no privilege at all, and carries the policy besides."""
    admin = await asyncpg.connect(chiba.gateway.config.migration_database_url)
    try:
        rows = await admin.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      has_table_privilege('chukan_app', c.oid,
                                          'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') AS open
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'provision_records'::regclass"""
        )
        assert len(rows) >= 5  # default + this month + three ahead
        for row in rows:
            assert not row["open"], row["relname"]
            assert row["relrowsecurity"] and row["relforcerowsecurity"], row["relname"]
    finally:
        await admin.close()
