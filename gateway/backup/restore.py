"""``chukan restore``: a backup into an empty database, its key folder and its roles back.

In order, nothing changing before every check passed:

1. the whole file is read and authenticated (every chunk, the final one, the table of
   contents): a tampered, truncated or foreign file is refused here;
2. the target database must be empty (created when missing); the key folder must not
   hold a different file of a name the backup restores;
3. roles: a database dump holds no cluster roles, so the roles its objects name
   (listed in the manifest: ``chukan_app``, the owner, tenants) are created when
   missing, before ``pg_restore`` runs in one transaction (all or nothing);
4. each tenant of the restored ``tenants`` table gets its login back: a role this
   restore created gets a new password, written as its URL to ``<tenant urls>/<code>.url``
   (0600) for the gateway's ``[database]``; a role that already existed keeps its
   password.  The owner is made a member of each (administrative commands act as it);
5. the key files are written (0600, in a 0700 folder) and the migrations compared
   with this version's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from chukan.gateway.backup import pgtools
from chukan.gateway.backup.archive import SECTION_DATABASE, SECTION_KEY, read_sections
from chukan.gateway.backup.errors import (
    BackupDatabaseError,
    BackupError,
    BackupFormatError,
    BackupTamperedError,
    RestoreFailedError,
    RestoreKeyConflictError,
    RestoreNeedsTenantUrlsError,
    RestoreTargetNotEmptyError,
)
from chukan.gateway.backup.stream import decrypted_chunks, read_header
from chukan.gateway.core import db
from chukan.gateway.core.privatefiles import create_private_file, replace_private_file

log = structlog.get_logger("chukan.backup")

ROLE_PATTERN: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
KEY_NAME_PART: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_KEY_FILE_BYTES: Final = 1 << 20
#: Relations or functions outside the system schemas: a database holding any is not empty.
OBJECTS_SQL: Final = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_%')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_%')
"""


@dataclass(slots=True)
class Verified:
    """What pass one found: the header's facts and each section's digest."""

    about: dict[str, Any]
    database_sha256: str = ""
    database_size: int = 0
    keys: dict[str, str] = field(default_factory=dict)


def _about(header: dict[str, Any]) -> dict[str, Any]:
    about = header.get("about")
    if not isinstance(about, dict) or not isinstance(about.get("component"), str):
        raise BackupFormatError("the backup's header does not say what it holds")
    if about["component"] not in db.COMPONENTS:
        raise BackupFormatError(f"the backup is of an unknown component {about['component']!r}")
    return about


def key_target(key_dir: Path, name: str) -> Path:
    """Where a key file of the backup goes; a name that could leave the folder is refused."""
    parts = PurePosixPath(name).parts
    if not parts or any(not KEY_NAME_PART.match(part) for part in parts):
        raise BackupTamperedError(f"the backup names an unsafe key file {name!r}")
    return key_dir.joinpath(*parts)


def verify_backup(path: Path, passphrase: bytes) -> Verified:
    """Read and authenticate the whole backup; nothing is written."""
    try:
        with path.open("rb") as source:
            header = read_header(source)
            source.seek(0)
            verified = Verified(_about(header))
            database_seen = False
            for section in read_sections(decrypted_chunks(source, passphrase)):
                digest = hashlib.sha256()
                size = 0
                for block in section.blocks():
                    digest.update(block)
                    size += len(block)
                    if section.section == SECTION_KEY and size > MAX_KEY_FILE_BYTES:
                        raise BackupTamperedError(f"key file {section.name} is impossibly large")
                if section.section == SECTION_DATABASE:
                    if database_seen:
                        raise BackupTamperedError("the backup holds two databases")
                    database_seen = True
                    verified.database_sha256, verified.database_size = digest.hexdigest(), size
                elif section.section == SECTION_KEY:
                    key_target(Path("."), section.name)
                    verified.keys[section.name] = digest.hexdigest()
                else:
                    raise BackupTamperedError(f"unknown section {section.section!r}")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    if not database_seen:
        raise BackupTamperedError("the backup holds no database")
    return verified


@dataclass(frozen=True, slots=True)
class Target:
    """Where to restore: the database's URL (a superuser, or a login owning everything)."""

    url: str
    key_dir: Path | None
    tenant_urls: Path | None


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _check_keys(verified: Verified, key_dir: Path | None) -> None:
    if key_dir is None:
        return
    for name, digest in verified.keys.items():
        existing = _file_digest(key_target(key_dir, name))
        if existing is not None and existing != digest:
            raise RestoreKeyConflictError(
                f"{key_target(key_dir, name)} exists and differs from the backup's: move it "
                "away (a restore never overwrites keys)"
            )


async def _open_target(url: str) -> tuple[asyncpg.Connection, bool]:
    """A connection to the target database, created when missing (True if it was)."""
    try:
        return await asyncpg.connect(url), False
    except asyncpg.InvalidCatalogNameError:
        pass
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackupDatabaseError(f"cannot connect to the target: {type(exc).__name__}") from None
    name = unquote(urlsplit(url).path.lstrip("/"))
    try:
        await db.ensure_database(db.with_database(url, "postgres"), name)
        return await asyncpg.connect(url), True
    except ValueError as exc:
        raise BackupError(str(exc)) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackupDatabaseError(f"cannot create the target database: {exc}") from None


def _role(name: object) -> str:
    if not isinstance(name, str) or not ROLE_PATTERN.match(name):
        raise BackupTamperedError(f"the backup names an unusable role {name!r}")
    return name


async def _create_roles(
    conn: asyncpg.Connection, about: dict[str, Any], tenant_roles: set[str]
) -> list[str]:
    """The roles the dump's objects name, created when missing; returns those created."""
    owner = _role(about.get("owner"))
    existing = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
    created: list[str] = []
    for entry in about.get("roles", []):
        name = _role(entry.get("name") if isinstance(entry, dict) else None)
        if name in existing:
            continue
        if name == owner:
            attributes = "LOGIN CREATEDB CREATEROLE NOSUPERUSER"  # no password: set one
        elif name in tenant_roles:
            attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
        else:
            attributes = "NOLOGIN"
        await conn.execute(f"CREATE ROLE {name} {attributes}")
        created.append(name)
    return created


async def _pg_restore(
    path: Path, passphrase: bytes, url: str, tool: pgtools.Tool
) -> dict[str, bytes]:
    """Pass two: the database section into ``pg_restore`` (one transaction); the key files."""
    libpq_url, env = pgtools.libpq_arguments(url)
    keys: dict[str, bytes] = {}
    with tempfile.TemporaryFile() as err, path.open("rb") as source:
        process = await asyncio.create_subprocess_exec(
            str(tool.path),
            "--format=custom",
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
            "--dbname",
            libpq_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **env},
        )
        assert process.stdin is not None
        try:
            for section in read_sections(decrypted_chunks(source, passphrase)):
                if section.section == SECTION_DATABASE:
                    for block in section.blocks():
                        process.stdin.write(block)
                        await process.stdin.drain()
                    process.stdin.close()
                elif section.section == SECTION_KEY:
                    keys[section.name] = b"".join(section.blocks())
        except (BackupError, ConnectionError) as exc:
            # The file changed since pass one, or pg_restore stopped reading: killing it
            # ends its connection, and the server rolls its one transaction back.
            await pgtools.kill(process)
            if isinstance(exc, BackupError):
                raise
        except BaseException:
            await pgtools.kill(process)
            raise
        code = await process.wait()
        if code != 0:
            tail = pgtools.stderr_tail(err)
            raise RestoreFailedError(
                f"pg_restore {tool.version} exited with {code} (nothing restored): {tail}"
            )
    return keys


async def _tenants(
    conn: asyncpg.Connection,
    url: str,
    owner: str,
    created: set[str],
    tenant_urls: Path | None,
) -> list[dict[str, Any]]:
    """Each restored tenant's login: provisioned (new password, URL file) or kept."""
    if not await conn.fetchval("SELECT to_regclass('public.tenants') IS NOT NULL"):
        return []
    current = await conn.fetchval("SELECT current_user")
    existing = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
    report: list[dict[str, Any]] = []
    for row in await conn.fetch("SELECT tenant, name, role_name FROM tenants ORDER BY tenant"):
        role = _role(row["role_name"])
        if role != db.tenant_role(row["tenant"]):
            raise BackupTamperedError(f"tenant {row['tenant']} has an unexpected role {role}")
        entry: dict[str, Any] = {"tenant": row["tenant"], "role": role}
        if role in created or role not in existing:
            assert tenant_urls is not None  # checked before anything was restored
            tenant_url = await db.provision_tenant(url, row["tenant"], row["name"])
            target = tenant_urls / f"{row['tenant']}.url"
            replace_private_file(target, (tenant_url + "\n").encode())
            entry.update(login="new password", url_file=str(target))
        else:
            await conn.execute(f"GRANT chukan_app TO {role}")
            await conn.execute(f"GRANT {role} TO CURRENT_USER")
            entry.update(login="unchanged", url_file=None)
        if owner != current:
            await conn.execute(f"GRANT {role} TO {owner} WITH ADMIN OPTION")
        report.append(entry)
    return report


def _write_keys(key_dir: Path, keys: dict[str, bytes]) -> list[str]:
    written: list[str] = []
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data in sorted(keys.items()):
        target = key_target(key_dir, name)
        if create_private_file(target, data):
            written.append(name)
        elif target.read_bytes() != data:
            raise RestoreKeyConflictError(f"{target} appeared meanwhile and differs")
    return written


async def restore_backup(path: Path, passphrase: bytes, target: Target) -> dict[str, Any]:
    """Restore ``path`` into ``target``; returns what was done, with the migrations' status."""
    verified = await asyncio.to_thread(verify_backup, path, passphrase)
    about = verified.about
    if verified.keys and target.key_dir is None:
        raise BackupError("the backup holds key files: name --key-dir (or --no-keys)")
    _check_keys(verified, target.key_dir)
    owner = _role(about.get("owner"))
    tenant_roles = {_role(t.get("role")) for t in about.get("tenants", [])}
    conn, made = await _open_target(target.url)
    try:
        if await conn.fetchval(OBJECTS_SQL):
            raise RestoreTargetNotEmptyError(
                "the target database is not empty: restore into a new (or empty) database"
            )
        existing = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
        if (tenant_roles - existing) and target.tenant_urls is None:
            raise RestoreNeedsTenantUrlsError(
                f"tenant logins {sorted(tenant_roles - existing)} must be created: name "
                "--tenant-urls DIR for their new URLs"
            )
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        dumped_major = int(str(about.get("pg_dump_version", "0")).partition(".")[0] or 0)
        tool = pgtools.choose("pg_restore", max(server_major, dumped_major))
        try:
            created = await _create_roles(conn, about, tenant_roles)
            current = await conn.fetchval("SELECT current_user")
            if made and owner != current:  # the new database belongs to the backup's owner
                database = await conn.fetchval("SELECT current_database()")
                if not db.DATABASE_NAME_PATTERN.match(database):
                    raise BackupError(f"cannot give database {database!r} to its owner")
                await conn.execute(f'ALTER DATABASE "{database}" OWNER TO {owner}')
        except asyncpg.PostgresError as exc:
            raise RestoreFailedError(f"cannot create the backup's roles: {exc}") from None
    finally:
        await conn.close()
    keys = await _pg_restore(path, passphrase, target.url, tool)
    conn = await asyncpg.connect(target.url)
    try:
        try:
            tenants = await _tenants(conn, target.url, owner, set(created), target.tenant_urls)
        except asyncpg.PostgresError as exc:
            raise RestoreFailedError(f"cannot re-provision the tenants' logins: {exc}") from None
        component = db.COMPONENTS[about["component"]]
        status = await db.migration_status(conn, component.migrations())
    finally:
        await conn.close()
    written = _write_keys(target.key_dir, keys) if target.key_dir is not None else []
    report = {
        "restored": str(path.name),
        "component": about["component"],
        "database": about.get("database"),
        "created_at": about.get("created_at"),
        "kind": about.get("kind"),
        "database_bytes": verified.database_size,
        "roles_created": created,
        "tenants": tenants,
        "keys_written": written,
        "keys_present": sorted(set(verified.keys) - set(written)),
        "migrations": status.to_json(),
    }
    log.info(
        "backup_restored",
        file=path.name,
        component=about["component"],
        tenants=len(tenants),
        keys=len(written),
        up_to_date=status.up_to_date,
    )
    return report
