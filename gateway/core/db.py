"""PostgreSQL access: the embedded server, per-component databases, migrations.

With no database URL configured, a private PostgreSQL from the ``pgserver``
wheel is started in a data folder (DESIGN §7); with ``CHUKAN_DATABASE_URL``
that server is used.  Each component (hub, each gateway) has a database of
its own on that server, created on first use.  Migrations are ordered SQL
files recorded in ``schema_migrations``; an advisory lock makes concurrent
runs safe and re-running a no-op.  They are applied with the owner's login by
``chukan db migrate`` (or at start by a server configured with an owner URL for
it); every server checks at start, with its own login, that none is pending
(:func:`require_migrations`).

Database outages.  :func:`is_database_error` says whether an exception means
the server is unreachable or going away (refused or lost connection, admin or
crash shutdown, "cannot connect now", too many connections, a closed
connection, a timeout inside asyncpg) rather than a bug in a statement; the
HTTP boundary answers those 503 ``database_unavailable`` (``errors.status_for``).
This process's view of the database is kept by one tracker, so that an outage
is two log events, not a traceback per request:

* :func:`note_unavailable` — call it with the exception when an operation failed
  for that reason: logs ``database_unavailable`` once, on the change;
* :func:`note_available` — call it when the database answered: logs
  ``database_available`` once, on the change back.  Every new pooled connection
  notes it (a pool replaces the connections an outage broke on their next use),
  and so does :func:`probe` (``SELECT 1`` with a deadline, for ``/health`` and
  ``/ready``).

The tracker is per process, not per pool: a deployment runs one server per
process on one PostgreSQL; a demo or test running several in one process shares it.

Background loops do the same instead of logging a traceback per pass::

    except Exception as exc:
        if not db.is_database_error(exc):
            raise  # or log.exception(...)
        db.note_unavailable(exc)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import os
import re
import secrets
import threading
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from chukan.gateway.core.errors import MigrationsPendingError
from chukan.gateway.core.errors import (
    is_database_error as is_database_error,  # re-exported: db.is_database_error
)

log = structlog.get_logger("chukan.db")

DATABASE_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MIGRATION_LOCK_ID: Final = 0x63_68_75_6B  # "chuk"
DEFAULT_POOL_MIN: Final = 1
DEFAULT_POOL_MAX: Final = 10
#: Seconds to establish a connection: an unreachable server fails requests quickly.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

Pool = asyncpg.Pool

#: A connection, whether taken from a pool or opened directly.  (String aliases: asyncpg's
#: classes are generic only in its type stubs, and these are used in runtime annotations.)
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
#: Anything that runs a statement: a connection or the pool itself.
Executor: TypeAlias = "Conn | asyncpg.Pool[asyncpg.Record]"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations(package: str, folder: str = "migrations") -> list[Migration]:
    """Ordered ``NNNN_name.sql`` files shipped as package data."""
    found: list[Migration] = []
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {package}")
    return found


async def migrate(conn: Conn, migrations: list[Migration]) -> list[int]:
    """Apply what is missing, each migration in its own transaction; returns applied versions."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.version:04d}_{migration.name} changed after "
                        "it was applied; write a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.version)
            log.info("migration_applied", version=migration.version, name=migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def migrate_url(url: str, package: str, folder: str = "migrations") -> list[int]:
    """Apply a package's migrations through a short-lived owner connection."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, load_migrations(package, folder))
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What a database holds of a package's migrations (``chukan db status``, start checks).

    ``changed``: applied, but the shipped file differs (someone edited it afterwards);
    ``unknown``: applied versions this version of chukan does not ship (a newer one
    migrated the database).
    """

    applied: list[Migration]
    pending: list[Migration]
    changed: list[Migration]
    unknown: list[int]

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed

    def to_json(self) -> dict[str, Any]:
        return {
            "up_to_date": self.up_to_date,
            "applied": [migration_label(m) for m in self.applied],
            "pending": [migration_label(m) for m in self.pending],
            "changed": [migration_label(m) for m in self.changed],
            "unknown": self.unknown,
        }


def migration_label(migration: Migration) -> str:
    """``0060_owner_acts_as_tenant``: the file's name without ``.sql``."""
    return f"{migration.version:04d}_{migration.name}"


async def migration_status(executor: Executor, migrations: list[Migration]) -> MigrationStatus:
    """Compare ``schema_migrations`` with ``migrations``; no table means nothing applied.

    Only reads, so any login that may read ``schema_migrations`` can ask (a
    gateway's tenant role may since migration 0060).  Raises asyncpg's
    ``InsufficientPrivilegeError`` when this login may not.
    """
    try:
        rows = await executor.fetch("SELECT version, checksum FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        rows = []
    done = {row["version"]: row["checksum"] for row in rows}
    shipped = {m.version for m in migrations}
    return MigrationStatus(
        applied=[m for m in migrations if done.get(m.version) == m.checksum],
        pending=[m for m in migrations if m.version not in done],
        changed=[m for m in migrations if m.version in done and done[m.version] != m.checksum],
        unknown=sorted(v for v in done if v not in shipped),
    )


async def require_migrations(
    executor: Executor, component: str, migrations: list[Migration]
) -> None:
    """Refuse to go on unless every migration of ``migrations`` is applied, unchanged.

    A server calls this at start with its own login (no owner rights): it never
    migrates behind the operator's back, and never runs on a schema it does not
    know.  Raises :class:`MigrationsPendingError` naming what is missing.
    """
    try:
        status = await migration_status(executor, migrations)
    except asyncpg.InsufficientPrivilegeError:
        # The grant arrives with a migration (gateway 0060): one is pending at least.
        raise MigrationsPendingError(component, [], [], unreadable=True) from None
    if not status.up_to_date:
        raise MigrationsPendingError(
            component,
            [migration_label(m) for m in status.pending],
            [migration_label(m) for m in status.changed],
        )


@dataclass(frozen=True, slots=True)
class Component:
    """A server's database: where its migrations ship, and its database's default name.

    The simulators' migrations are package data found by name, so this table needs
    no import of the simulators (which sit above the gateway).
    """

    package: str
    folder: str
    database: str

    def migrations(self) -> list[Migration]:
        return load_migrations(self.package, self.folder)


#: The names agree with ``HUB_DATABASE`` and ``KOKUHOREN_DATABASE`` (a unit test checks).
COMPONENTS: Final = {
    "gateway": Component("chukan.gateway", "migrations", "chukan_gateway"),
    "hub": Component("chukan.simulators", "migrations/hub", "chukan_hub"),
    "kokuhoren": Component("chukan.simulators", "migrations/kokuhoren", "chukan_kokuhoren"),
}


async def open_checked_pool(
    url: str, component: str, *, migration_url: str | None = None
) -> asyncpg.Pool:
    """A pool on a schema this code knows, for a server starting up.

    With ``migration_url`` (the owner's login: the server is configured to migrate
    itself) pending migrations are applied first; otherwise a pending one stops the
    start with :class:`MigrationsPendingError` (run ``chukan db migrate``).
    """
    known = COMPONENTS[component]
    if migration_url is not None:
        await migrate_url(migration_url, known.package, known.folder)
    pool = await create_pool(url)
    try:
        await require_migrations(pool, component, known.migrations())
    except BaseException:
        await pool.close()
        raise
    return pool


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (path component)."""
    if not DATABASE_NAME_PATTERN.match(database):
        raise ValueError(f"invalid database name {database!r}")
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, ""))


async def ensure_database(server_url: str, database: str) -> str:
    """Create ``database`` on the server if missing; return its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be parameters; the name was checked against a strict
            # pattern.  A concurrent creation by another component is fine.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(server_url, database)


def with_credentials(url: str, user: str, password: str | None) -> str:
    """The same server and database, logging in as another role."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, ""))


def tenant_role(tenant: str) -> str:
    if not re.fullmatch(r"[0-9]{6}(?:[0-9]{10})?", tenant):
        raise ValueError(f"invalid tenant code {tenant!r}")
    return f"chukan_tenant_{tenant}"


async def provision_tenant(admin_url: str, tenant: str, name: str) -> str:
    """Create (or refresh) the login role of one tenant; return the URL the gateway uses.

    The role is a member of ``chukan_app`` (table privileges) and is mapped to
    its tenant in ``tenants``: row-level security filters on that mapping of the
    session's role (``chukan_tenant()``), so a tenant's session cannot see another
    tenant's rows.

    The owner (``admin_url``'s login) is made a member of the new role, so that the
    administrative commands can act as the tenant with ``SET ROLE`` without being a
    superuser (PostgreSQL lets a ``CREATEROLE`` role grant the roles it created).
    No tenant role is ever a member of another, so no tenant can do the same.
    """
    role = tenant_role(tenant)
    password = secrets.token_urlsafe(24)
    conn = await asyncpg.connect(admin_url)
    try:
        async with conn.transaction():
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            # Role names cannot be parameters; `role` matched a strict pattern above.  The
            # password is passed through format('%L') so it is quoted by the server.
            verb = "ALTER" if exists else "CREATE"
            statement = await conn.fetchval(
                f"SELECT format('{verb} ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS "
                "NOCREATEDB NOCREATEROLE PASSWORD %L', $1::text)",
                password,
            )
            await conn.execute(statement)
            await conn.execute(f"GRANT chukan_app TO {role}")
            await conn.execute(f"GRANT {role} TO CURRENT_USER")
            await conn.execute(
                "INSERT INTO tenants (tenant, name, role_name) VALUES ($1, $2, $3) "
                "ON CONFLICT (tenant) DO UPDATE SET name = EXCLUDED.name",
                tenant,
                name,
                role,
            )
    finally:
        await conn.close()
    log.info("tenant_provisioned", tenant=tenant, role=role)
    return with_credentials(admin_url, role, password)


async def drop_database(server_url: str, database: str) -> None:
    """Remove a database (the demo starts from an empty one each run)."""
    if not DATABASE_NAME_PATTERN.match(database):
        raise ValueError(f"invalid database name {database!r}")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")
    note_available()  # a new session works: the end of an outage, if there was one


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release ``RESET ALL`` round trip.

    Our code never leaves session state behind (no SET, LISTEN or session-level
    advisory locks on pooled connections; transactions are always closed by
    ``async with conn.transaction()``), so the reset only cost one round trip
    per pool use — a third of a provision's database time.
    """


async def create_pool(
    url: str,
    *,
    min_size: int = DEFAULT_POOL_MIN,
    max_size: int = DEFAULT_POOL_MAX,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> asyncpg.Pool:
    """A pool that outlives database restarts.

    A connection the server closed (restart, admin shutdown) is noticed by
    asyncpg when it is next acquired or released and replaced by a new one, so
    requests succeed again as soon as the server answers, without a restart of
    ours; meanwhile they fail with errors that :func:`is_database_error` knows.
    """
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        timeout=connect_timeout,
    )
    assert pool is not None
    return pool


# -- availability ----------------------------------------------------------------------------


class Availability:
    """This process's view of its database: logs each change, not each failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.available = True
        self._since = time.monotonic()
        self._failures = 0
        self.last_error: str | None = None

    def note_unavailable(self, exc: BaseException) -> bool:
        """An operation failed because of the database; True when this is the change."""
        with self._lock:
            self._failures += 1
            self.last_error = type(exc).__name__
            if not self.available:
                return False
            self.available = False
            self._since = time.monotonic()
        log.error("database_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
        return True

    def note_available(self) -> bool:
        """The database answered; True when this ends an outage."""
        with self._lock:
            if self.available:
                return False
            self.available = True
            seconds = time.monotonic() - self._since
            failures, self._failures = self._failures, 0
            self._since = time.monotonic()
        log.info(
            "database_available", unavailable_seconds=round(seconds, 3), failed_operations=failures
        )
        return True


#: The tracker of this process (every pool, server and loop in it).
AVAILABILITY: Final = Availability()


def note_unavailable(exc: BaseException) -> bool:
    """Record a failure because of the database (``is_database_error``); logs on the change."""
    return AVAILABILITY.note_unavailable(exc)


def note_available() -> bool:
    """Record that the database answered; logs ``database_available`` after an outage."""
    return AVAILABILITY.note_available()


async def probe(executor: Executor, limit: float) -> dict[str, Any]:
    """``SELECT 1`` within ``limit`` seconds, for health checks; never raises.

    ``{"ok": true, "ms": …}`` or ``{"ok": false, "reason": "database_unavailable",
    "error": <exception type>}``; either is noted in the tracker.
    """
    started = time.perf_counter()
    try:
        await asyncio.wait_for(executor.fetchval("SELECT 1"), limit)
    except Exception as exc:
        if not isinstance(exc, TimeoutError) and not is_database_error(exc):
            log.warning("database_probe_failed", error=type(exc).__name__)
            return {"ok": False, "reason": type(exc).__name__}
        note_unavailable(exc)
        error = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return {"ok": False, "reason": "database_unavailable", "error": error}
    note_available()
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


class EmbeddedPostgres:
    """A private PostgreSQL from the ``pgserver`` wheel, kept in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers).
            warnings.simplefilter("ignore")
            pgserver: Any = importlib.import_module("pgserver")  # untyped package
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded_postgres_started", data_dir=str(self.data_dir))
        return uri

    def stop(self) -> None:
        if self._server is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server.cleanup()
            self._server = None


def server_url(data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """``CHUKAN_DATABASE_URL`` if set, else an embedded PostgreSQL in ``data_dir`` (started).

    The caller stops the embedded server it is given (the second value) when done.
    """
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if url:
        return url, None
    embedded = EmbeddedPostgres(data_dir / "pg")
    return embedded.start(), embedded
