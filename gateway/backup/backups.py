"""``chukan backup``: one consistent, encrypted backup of a database and its key folder.

The assessment keeps "日々の退避データは1週間、遠隔地保管する複写データは3週間": a
backup is of kind ``daily`` (退避, kept 7 days) or ``copy`` (複写 for remote
keeping, kept 21 days); each run prunes the expired backups of its kind, of the
same database, from the folder it writes to.

Consistency: the facts of the manifest (migrations applied, tenants, roles) are
read in a read-only REPEATABLE READ transaction whose snapshot ``pg_dump``
shares (``--snapshot``), so the manifest describes exactly the rows dumped.  The
dump streams from ``pg_dump`` through AES-256-GCM chunks to a 0600 temporary
file that is renamed into place only when complete; nothing unencrypted ever
reaches the disk, and memory stays one chunk.  The key folder (the key ring, already
encrypted under the key passphrase) is added whole: restored keys open what was
sealed to them before the backup.  Beside each backup, ``<file>.manifest.json``
(0600) says what, when, from which server, the migrations, the size and SHA-256
of the encrypted file — readable without the passphrase, for operators and pruning.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Final

import asyncpg
import structlog

from chukan.gateway.backup import pgtools
from chukan.gateway.backup.archive import SECTION_DATABASE, SECTION_KEY, SectionWriter
from chukan.gateway.backup.errors import (
    BackupDatabaseError,
    BackupDumpFailedError,
    BackupError,
    BackupPrivilegeError,
)
from chukan.gateway.backup.stream import EncryptingWriter
from chukan.gateway.core import db
from chukan.gateway.core.privatefiles import replace_private_file

log = structlog.get_logger("chukan.backup")

KIND_DAILY: Final = "daily"
KIND_COPY: Final = "copy"
#: 日々の退避データは1週間、遠隔地保管する複写データは3週間 (the assessment's 物理的対策).
RETENTION: Final = {KIND_DAILY: dt.timedelta(days=7), KIND_COPY: dt.timedelta(days=21)}
SUFFIX: Final = ".chukanbk"
MANIFEST_SUFFIX: Final = ".manifest.json"
READ_BYTES: Final = 1 << 20
#: Temporary files of a run that died are removed by a later run once this old.
STALE_TEMPORARY: Final = dt.timedelta(days=1)

#: Every role the database's objects name: owners, grantees, policies' roles, default ACLs.
ROLES_SQL: Final = """
SELECT r.rolname AS name, r.rolcanlogin AS login FROM pg_roles r WHERE r.oid IN (
    SELECT relowner FROM pg_class WHERE relnamespace = 'public'::regnamespace
    UNION SELECT (aclexplode(relacl)).grantee FROM pg_class
        WHERE relacl IS NOT NULL AND relnamespace = 'public'::regnamespace
    UNION SELECT proowner FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc
        WHERE proacl IS NOT NULL AND pronamespace = 'public'::regnamespace
    UNION SELECT unnest(polroles) FROM pg_policy
    UNION SELECT defaclrole FROM pg_default_acl
    UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
) ORDER BY r.rolname
"""


@dataclass(frozen=True, slots=True)
class Source:
    """What to back up: a database (a login that bypasses row-level security) and keys."""

    url: str
    component: str
    database: str
    key_dir: Path | None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def chukan_version() -> str:
    try:
        return metadata.version("chukan")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _facts(conn: asyncpg.Connection, component: str) -> dict[str, Any]:
    """What the manifest says about the database, read in the dump's snapshot."""
    status = await db.migration_status(conn, db.COMPONENTS[component].migrations())
    owner = await conn.fetchval(
        "SELECT coalesce((SELECT pg_get_userbyid(relowner) FROM pg_class "
        "WHERE oid = to_regclass('public.schema_migrations')), "
        "(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()))"
    )
    roles = [{"name": r["name"], "login": r["login"]} for r in await conn.fetch(ROLES_SQL)]
    tenants: list[dict[str, str]] = []
    if await conn.fetchval("SELECT to_regclass('public.tenants') IS NOT NULL"):
        tenants = [
            {"tenant": r["tenant"], "name": r["name"], "role": r["role_name"]}
            for r in await conn.fetch("SELECT tenant, name, role_name FROM tenants ORDER BY 1")
        ]
    return {
        "server_version": await conn.fetchval("SHOW server_version"),
        "migrations": {
            "applied": [db.migration_label(m) for m in status.applied],
            "pending": [db.migration_label(m) for m in status.pending],
            "changed": [db.migration_label(m) for m in status.changed],
            "unknown": status.unknown,
        },
        "owner": owner,
        "roles": roles,
        "tenants": tenants,
    }


def key_files(key_dir: Path) -> list[tuple[str, Path]]:
    """The key folder's regular files (relative names), without temporaries; no symlinks."""
    if not key_dir.is_dir():
        raise BackupError(f"no key folder {key_dir}")
    found: list[tuple[str, Path]] = []
    for path in sorted(key_dir.rglob("*")):
        relative = path.relative_to(key_dir).as_posix()
        if any(part.startswith(".") for part in path.relative_to(key_dir).parts):
            continue  # a writer's temporary file (privatefiles), never a key
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise BackupError(f"{path} is a symbolic link: a backup copies files only")
        if stat.S_ISREG(mode):
            found.append((relative, path))
    return found


class _HashingFile:
    """The archive's file: what is written is counted and hashed on the way."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


@contextlib.contextmanager
def _temporary(folder: Path, name: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """A new 0600 file beside the final one; removed unless the caller renamed it."""
    temporary = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield temporary, handle
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BackupDatabaseError(f"cannot connect to the database: {type(exc).__name__}") from None


async def _stream_dump(
    process: asyncio.subprocess.Process, sections: SectionWriter, name: str
) -> None:
    assert process.stdout is not None
    sections.begin(SECTION_DATABASE, name)
    while True:
        data = await process.stdout.read(READ_BYTES)
        if not data:
            break
        sections.write(data)
    sections.end()


async def create_backup(
    source: Source,
    folder: Path,
    kind: str,
    passphrase: bytes,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Write one backup of ``source`` into ``folder`` and prune that kind's expired ones.

    Returns the manifest (also written beside the backup) with ``pruned``: the
    files removed.
    """
    if kind not in RETENTION:
        raise BackupError(f"unknown kind {kind!r} (daily or copy)")
    created = (now or utcnow()).astimezone(dt.UTC)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # noqa: ASYNC240 -- a CLI's one call
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    name = f"chukan-{source.component}-{source.database}-{kind}-{stamp}-{secrets.token_hex(3)}"
    keys = key_files(source.key_dir) if source.key_dir is not None else []
    conn = await _connect(source.url)
    try:
        bypass = await conn.fetchval(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        if not bypass:
            raise BackupPrivilegeError(
                "this login is subject to row-level security, so a dump would miss rows: back "
                "up with a superuser or a role WITH BYPASSRLS (see docs/backup.md)"
            )
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        tool = pgtools.choose("pg_dump", major)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            about = {
                "kind": kind,
                "created_at": created.isoformat(),
                "expires_at": (created + RETENTION[kind]).isoformat(),
                "component": source.component,
                "database": source.database,
                "server_major": major,
                "pg_dump_version": tool.version,
                "chukan_version": chukan_version(),
                "keys": [relative for relative, _ in keys],
                **(await _facts(conn, source.component)),
            }
            manifest = await _write(source, folder, name, tool, snapshot, about, keys, passphrase)
    except asyncpg.PostgresError as exc:
        raise BackupDatabaseError(f"cannot read the database: {exc}") from None
    finally:
        await conn.close()
    manifest["pruned"] = prune(
        folder, kind, source.component, source.database, now=created, keep={name + SUFFIX}
    )
    log.info(
        "backup_written",
        file=manifest["file"],
        kind=kind,
        size=manifest["size"],
        pruned=len(manifest["pruned"]),
    )
    return manifest


async def _write(
    source: Source,
    folder: Path,
    name: str,
    tool: pgtools.Tool,
    snapshot: str,
    about: dict[str, Any],
    keys: list[tuple[str, Path]],
    passphrase: bytes,
) -> dict[str, Any]:
    url, env = pgtools.libpq_arguments(source.url)
    final = folder / (name + SUFFIX)
    with _temporary(folder, name + SUFFIX) as (temporary, handle), tempfile.TemporaryFile() as err:
        sink = _HashingFile(handle)
        writer = EncryptingWriter(sink, passphrase, about)  # type: ignore[arg-type]
        sections = SectionWriter(writer)
        process = await asyncio.create_subprocess_exec(
            str(tool.path),
            "--format=custom",
            "--no-password",
            f"--snapshot={snapshot}",
            "--dbname",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, **env},
        )
        try:
            await _stream_dump(process, sections, f"{source.database}.dump")
        except BaseException:
            await pgtools.kill(process)
            raise
        code = await process.wait()
        if code != 0:
            tail = pgtools.stderr_tail(err)
            raise BackupDumpFailedError(f"pg_dump {tool.version} exited with {code}: {tail}")
        for relative, path in keys:
            sections.begin(SECTION_KEY, relative)
            with path.open("rb") as key_file:
                while data := key_file.read(READ_BYTES):
                    sections.write(data)
            sections.end()
        contents = sections.finish()
        writer.close()
        handle.flush()
        os.fsync(handle.fileno())
        os.replace(temporary, final)
    _fsync_folder(folder)
    manifest = {
        "file": final.name,
        **about,
        "size": sink.size,
        "sha256": sink.digest.hexdigest(),
        "contents": [c.to_json() for c in contents],
        "encryption": "AES-256-GCM chunks, key = scrypt(passphrase); see docs/backup.md",
    }
    replace_private_file(
        folder / (name + MANIFEST_SUFFIX),
        json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n",
    )
    return manifest


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest file's JSON, None when it cannot be read (never pruned on a guess)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def prune(
    folder: Path,
    kind: str,
    component: str,
    database: str,
    *,
    now: dt.datetime,
    keep: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Remove the backups of ``kind`` (of this component's ``database``) past retention.

    Age comes from each manifest's ``created_at`` (the backup's own header says the
    same, authenticated); a backup without a readable manifest is left alone.
    Temporary files of runs that died more than a day ago go too.
    """
    limit = now - RETENTION[kind]
    removed: list[str] = []
    for manifest_path in sorted(folder.glob("*" + MANIFEST_SUFFIX)):
        manifest = read_manifest(manifest_path)
        if manifest is None or (
            manifest.get("kind"),
            manifest.get("component"),
            manifest.get("database"),
        ) != (kind, component, database):
            continue
        try:
            created = dt.datetime.fromisoformat(str(manifest.get("created_at")))
        except ValueError:
            continue
        if created.tzinfo is None or created >= limit:
            continue
        backup = folder / str(manifest.get("file", ""))
        if backup.parent != folder or backup.name in keep or not backup.name.endswith(SUFFIX):
            continue
        backup.unlink(missing_ok=True)
        manifest_path.unlink(missing_ok=True)
        removed.append(backup.name)
        log.info("backup_pruned", file=backup.name, kind=kind, created_at=created.isoformat())
    stale = (now - STALE_TEMPORARY).timestamp()
    for temporary in folder.glob(".chukan-*.tmp"):
        with contextlib.suppress(OSError):
            if temporary.stat().st_mtime < stale:
                temporary.unlink()
    return removed
