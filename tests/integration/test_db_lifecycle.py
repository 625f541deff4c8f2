"""The database lifecycle with an owner that is NOT a superuser (issue 11, item 3).

On the session's PostgreSQL a role with only LOGIN, CREATEDB and CREATEROLE owns
fresh databases: ``chukan db migrate`` and ``chukan db status`` (real ``python -m
chukan`` processes) for the gateway, the hub and the 国保連 simulator; a tenant
provisioned by ``chukan db tenant``; the records, staff and replica commands acting
as that tenant through ``SET ROLE``; servers that refuse to start on a pending
migration; and a tenant's login that cannot ``SET ROLE`` to another tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.db import COMPONENTS
from chukan.gateway.core.errors import MigrationsPendingError
from chukan.gateway.serve import start_gateway
from chukan.keys.ring import KeyRing
from chukan.simulators.hub import HubConfig, create_hub_app
from chukan.simulators.kokuhoren import KokuhorenConfig, create_kokuhoren_app

pytestmark = pytest.mark.integration

ITEM = "TM00000000000001"


@dataclass
class Owner:
    """A non-superuser owner login and what the tests made with it (removed afterwards)."""

    name: str
    password: str
    server_url: str  # the owner's login, on the server's maintenance database
    prefix: str
    databases: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)

    def database(self, label: str) -> str:
        name = f"{self.prefix}lc_{label}"
        self.databases.append(name)
        return name

    def url(self, database: str) -> str:
        return db.with_database(self.server_url, database)

    def tenant_code(self) -> str:
        code = f"98{secrets.randbelow(10**4):04d}"
        self.tenants.append(code)
        return code


@pytest.fixture(scope="module")
async def owner(pg_server_url: str, db_prefix: str) -> AsyncIterator[Owner]:
    superuser = await asyncpg.connect(pg_server_url)
    try:
        if not await superuser.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ):
            pytest.skip("creating the owner role needs the session server's superuser")
        name = f"chukan_owner_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(18)
        statement = await superuser.fetchval(
            f"SELECT format('CREATE ROLE {name} LOGIN CREATEDB CREATEROLE NOSUPERUSER "
            "PASSWORD %L', $1::text)",
            password,
        )
        await superuser.execute(statement)
        # chukan_app is one role for the whole server: when another login created it
        # (here: earlier tests, as the superuser), the owner needs it WITH ADMIN OPTION
        # to grant it to tenants — the step the README documents.
        if await superuser.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'chukan_app'"):
            await superuser.execute(f"GRANT chukan_app TO {name} WITH ADMIN OPTION")
    finally:
        await superuser.close()
    made = Owner(
        name=name,
        password=password,
        server_url=db.with_credentials(pg_server_url, name, password),
        prefix=db_prefix,
    )
    try:
        yield made
    finally:
        for database in made.databases:
            await db.drop_database(pg_server_url, database)
        superuser = await asyncpg.connect(pg_server_url)
        try:
            for code in made.tenants:
                await superuser.execute(f"DROP ROLE IF EXISTS {db.tenant_role(code)}")
            await superuser.execute(f"DROP OWNED BY {name}")
            await superuser.execute(f"DROP ROLE {name}")
        finally:
            await superuser.close()


async def chukan(
    owner: Owner, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``python -m chukan ARGV`` in its own process, on the owner's server by default."""
    environment = {
        **os.environ,
        "CHUKAN_DATABASE_URL": owner.server_url,
        "CHUKAN_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chukan",
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def labels(component: str) -> list[str]:
    return [db.migration_label(m) for m in COMPONENTS[component].migrations()]


async def test_the_owner_is_not_a_superuser(owner: Owner) -> None:
    conn = await asyncpg.connect(owner.server_url)
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    assert row is not None
    assert dict(row) == {
        "rolsuper": False,
        "rolcreatedb": True,
        "rolcreaterole": True,
        "rolbypassrls": False,
    }


async def test_db_migrate_and_status_for_each_component(owner: Owner, tmp_path: Path) -> None:
    names = {component: owner.database(component) for component in COMPONENTS}
    # Each step runs for the three components at once (separate processes and databases).
    before = await asyncio.gather(
        *(
            chukan(owner, "db", "status", "--component", component, "--database", name)
            for component, name in names.items()
        )
    )
    for component, (code, out, err) in zip(names, before, strict=True):
        assert code == 1, err
        report = json.loads(out)
        assert report["up_to_date"] is False
        entry = report["components"][component]
        assert entry["exists"] is False
        assert entry["applied"] == [] and entry["pending"] == labels(component)

    # The owner's URL three ways: a variable, a 0600 file, the default server + --database.
    url_file = tmp_path / "hub-owner.url"
    url_file.write_text(owner.url(names["hub"]) + "\n")
    url_file.chmod(0o600)
    sources = {
        "gateway": (["--url-env", "OWNER_URL"], {"OWNER_URL": owner.url(names["gateway"])}),
        "hub": (["--url-file", str(url_file)], {}),
        "kokuhoren": (["--database", names["kokuhoren"]], {}),
    }
    migrated = await asyncio.gather(
        *(
            chukan(owner, "db", "migrate", "--component", component, *options, env=env)
            for component, (options, env) in sources.items()
        )
    )
    for component, (code, out, err) in zip(sources, migrated, strict=True):
        assert code == 0, err
        result = json.loads(out)
        assert result["applied"] == labels(component), component
        assert result["database"] == names[component]

    after = await asyncio.gather(
        *(
            chukan(owner, "db", "status", "--component", component, *options, env=env)
            for component, (options, env) in sources.items()
        )
    )
    for component, (code, out, err) in zip(sources, after, strict=True):
        assert code == 0, (component, err)
        entry = json.loads(out)["components"][component]
        assert entry["up_to_date"] is True and entry["pending"] == []
        assert entry["applied"] == labels(component)

    # The owner made and owns each database; the tables are its own.
    conn = await asyncpg.connect(owner.url(names["gateway"]))
    try:
        owners = await conn.fetch(
            "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        )
        assert {r["owner"] for r in owners} == {owner.name}
    finally:
        await conn.close()

    # A URL file others may read is refused, and so is a missing variable.
    url_file.chmod(0o644)
    code, _, err = await chukan(
        owner, "db", "status", "--component", "hub", "--url-file", str(url_file)
    )
    assert code == 2 and "chmod 600" in err
    code, _, err = await chukan(
        owner, "db", "migrate", "--component", "hub", "--url-env", "NO_SUCH_VARIABLE_SET"
    )
    assert code == 2 and "NO_SUCH_VARIABLE_SET is not set" in err


async def test_admin_commands_act_as_a_tenant_without_a_superuser(
    owner: Owner, tmp_path: Path
) -> None:
    name = owner.database("admin")
    code, _, err = await chukan(
        owner, "db", "migrate", "--component", "gateway", "--database", name
    )
    assert code == 0, err
    tenant, other = owner.tenant_code(), owner.tenant_code()
    urls: dict[str, str] = {}
    for agency in (tenant, other):
        url_file = tmp_path / f"{agency}.url"
        code, out, err = await chukan(
            owner,
            "db",
            "tenant",
            "--tenant",
            agency,
            "--name",
            f"試験{agency}",
            "--write-url",
            str(url_file),
            "--database",
            name,
        )
        assert code == 0, err
        assert json.loads(out)["role"] == db.tenant_role(agency)
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        urls[agency] = url_file.read_text().strip()
        password = urls[agency].split("@")[0].rsplit(":", 1)[1]
        assert password and password not in out and password not in err

    # Some rows of the tenant, written by its own login (the gateway's).
    own = await asyncpg.connect(urls[tenant])
    try:
        assert await own.fetchval("SELECT chukan_tenant()") == tenant
        for n in range(3):
            await own.execute(
                "INSERT INTO provision_records (role, query_id, requester, provider, "
                "business_code, procedure_code, item_code, requested_at, outcome) "
                "VALUES ('requester', $1, $2, '122041', 'JM01', 'P001', $3, $4, 'refused')",
                f"q-{n}",
                tenant,
                ITEM,
                dt.datetime.now(dt.UTC),
            )
    finally:
        await own.close()

    # The commands, each its own process, all at once.
    verified, verified_other, admin, export, jobs, partitions = await asyncio.gather(
        chukan(
            owner, "records", "verify", "--tenant", tenant, "--database", name,
            "--actor", "auditor",
        ),
        chukan(owner, "records", "verify", "--tenant", other, "--database", name),
        chukan(
            owner, "staff", "create-admin", "--tenant", tenant, "--username", "kanri01",
            "--database", name,
        ),
        chukan(
            owner, "replica", "export", "--tenant", tenant, "--item-code", ITEM,
            "--database", name,
        ),
        chukan(owner, "ops", "jobs", "--tenant", tenant, "--database", name),
        chukan(owner, "records", "partitions", "--database", name),
    )  # fmt: skip
    for code, _, err in (verified, verified_other, admin, export, jobs, partitions):
        assert code == 0, err
    report = json.loads(verified[1])
    assert report["ok"] is True and report["records"] == 3 and report["head_seq"] == 3
    assert json.loads(verified_other[1])["records"] == 0  # none of the other tenant's rows
    assert json.loads(admin[1])["roles"] == ["admin"]
    assert export[1].splitlines()[0].startswith("item_code,")
    assert "jobs" in json.loads(jobs[1])
    assert "created" in json.loads(partitions[1])

    # What the commands wrote belongs to the tenant, as if its gateway had written it.
    own = await asyncpg.connect(urls[tenant])
    try:
        assert await own.fetchval("SELECT count(*) FROM staff_accounts") == 1
        actions = {r["action"] for r in await own.fetch("SELECT action FROM audit_trail")}
        assert {"records.verify", "staff.account.create"} <= actions
        # A tenant's login cannot become another tenant, nor see its rows.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await own.execute(f"SET ROLE {db.tenant_role(other)}")
        await own.execute("SET ROLE chukan_app")  # the one role it may take: no tenant's
        assert await own.fetchval("SELECT chukan_tenant()") == tenant
        await own.execute("RESET ROLE")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await own.execute(f"GRANT {db.tenant_role(other)} TO {db.tenant_role(tenant)}")
    finally:
        await own.close()
    theirs = await asyncpg.connect(urls[other])
    try:
        assert await theirs.fetchval("SELECT count(*) FROM provision_records") == 0
        assert await theirs.fetchval("SELECT count(*) FROM staff_accounts") == 0
        # Its trail holds only its own verification (the command run as it, above).
        trail = await theirs.fetch("SELECT action FROM audit_trail")
        assert [r["action"] for r in trail] == ["records.verify"]
    finally:
        await theirs.close()
    # Nor can the owner's session without SET ROLE read a tenant's rows.
    conn = await asyncpg.connect(owner.url(name))
    try:
        assert await conn.fetchval("SELECT chukan_tenant()") is None
        assert await conn.fetchval("SELECT count(*) FROM provision_records") == 0
    finally:
        await conn.close()

    # A tenant never provisioned is refused clearly.
    code, _, err = await chukan(
        owner, "records", "verify", "--tenant", owner.tenant_code(), "--database", name
    )
    assert code == 2 and "no login role" in err


async def test_commands_refuse_a_database_with_pending_migrations(owner: Owner) -> None:
    name = owner.database("partial")
    url = await db.ensure_database(owner.server_url, name)
    migrations = COMPONENTS["gateway"].migrations()
    conn = await asyncpg.connect(url)
    try:
        await db.migrate(conn, migrations[:-1])
    finally:
        await conn.close()
    code, _, err = await chukan(
        owner, "records", "verify", "--tenant", "123456", "--database", name
    )
    assert code == 2
    assert db.migration_label(migrations[-1]) in err and "chukan db migrate" in err


async def test_servers_refuse_to_start_with_migrations_pending(
    owner: Owner, tmp_path: Path
) -> None:
    # The hub on a database nothing was applied to, then on one missing its newest.
    hub_url = await db.ensure_database(owner.server_url, owner.database("hub_start"))
    config = HubConfig(
        database_url=hub_url,
        key_dir=tmp_path / "hub",
        key_passphrase=secrets.token_urlsafe(18).encode(),
        admin_token=secrets.token_urlsafe(18),
    )
    with pytest.raises(MigrationsPendingError) as refused:
        await start(create_hub_app(config))
    assert refused.value.pending == labels("hub")
    assert "chukan db migrate --component hub" in refused.value.message
    hub_migrations = COMPONENTS["hub"].migrations()
    conn = await asyncpg.connect(hub_url)
    try:
        await db.migrate(conn, hub_migrations[:-1])
    finally:
        await conn.close()
    with pytest.raises(MigrationsPendingError) as refused:
        await start(create_hub_app(config))
    assert refused.value.pending == [db.migration_label(hub_migrations[-1])]
    # Configured to migrate itself (the owner's URL for that), it starts.
    await start_and_stop(
        create_hub_app(dataclasses.replace(config, migration_database_url=hub_url))
    )
    await start_and_stop(create_hub_app(config))  # and now without it too

    # The 国保連 simulator likewise.
    kokuhoren_url = await db.ensure_database(owner.server_url, owner.database("kok_start"))
    kokuhoren = KokuhorenConfig(
        database_url=kokuhoren_url,
        key_dir=tmp_path / "kokuhoren",
        key_passphrase=secrets.token_urlsafe(18).encode(),
        admin_token=secrets.token_urlsafe(18),
    )
    with pytest.raises(MigrationsPendingError) as refused:
        await start(create_kokuhoren_app(kokuhoren))
    assert refused.value.pending == labels("kokuhoren")

    # A gateway checks with its tenant's login, which reads schema_migrations.
    name = owner.database("gw_start")
    admin_url = await db.ensure_database(owner.server_url, name)
    await db.migrate_url(admin_url, "chukan.gateway")
    agency = owner.tenant_code()
    tenant_url = await db.provision_tenant(admin_url, agency, "起動試験")
    newest = COMPONENTS["gateway"].migrations()[-1]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", newest.version)
    finally:
        await conn.close()
    ring = KeyRing.generate("hub", now=dt.datetime.now(dt.UTC))
    gateway = GatewayConfig(
        agency_code=agency,
        agency_name="起動試験",
        database_url=tenant_url,
        hub_url="https://127.0.0.1:9",  # never reached: the check comes first
        hub_key=ring.current_signing(dt.datetime.now(dt.UTC)).public,
        enrolment_token=secrets.token_urlsafe(18),
        key_dir=tmp_path / "gateway",
        key_passphrase=secrets.token_urlsafe(18).encode(),
    )
    with pytest.raises(MigrationsPendingError) as refused:
        await start_gateway(gateway)
    assert refused.value.pending == [db.migration_label(newest)]
    assert "chukan db migrate --component gateway" in refused.value.message
    assert not (tmp_path / "gateway").exists()  # refused before it touched its keys


async def start(app: web.Application) -> web.AppRunner:
    """Run the application's start-up (its cleanup contexts), as serving it would."""
    runner = web.AppRunner(app, handle_signals=False)
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def start_and_stop(app: web.Application) -> None:
    runner = await start(app)
    await runner.cleanup()
