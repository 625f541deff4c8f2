"""``chukan db``: the databases' lifecycle, a step of its own before any server starts.

``chukan db migrate --component gateway|hub|kokuhoren``
    Creates the component's database if it is missing (CREATEDB) and applies the
    migrations this version ships that it lacks, each in its own transaction, under
    an advisory lock (concurrent runs are safe, a second run is a no-op).  Prints
    ``{"component", "database", "applied": [...], "up_to_date": true}``.

``chukan db status [--component …]``
    Applied, pending, changed (edited after they were applied) and unknown (newer
    than this version) migrations of each component (default: all three), as JSON.
    Exit status 0 when every component is up to date, 1 when one is not (or has no
    database yet), 2 when a database cannot be reached.

``chukan db tenant --tenant CODE --name NAME --write-url FILE``
    Creates (or, run again, gives a new password to) the login role of one agency
    in the gateway database and writes the URL its gateway logs in with to FILE
    (mode 0600); the password is never printed.  The owner becomes a member of
    the role, which lets the ``records``, ``staff``, ``ops`` and ``replica``
    commands act as that tenant (``SET ROLE``) without a superuser.

The owner's login — a role with LOGIN, CREATEDB and CREATEROLE, no superuser —
is given by ``--database-url URL`` (the component's database), ``--url-env VAR``
or ``--url-file FILE`` (mode 0600; either keeps the password out of the process
list), else it is the server of ``CHUKAN_DATABASE_URL`` or the embedded PostgreSQL
in ``--data-dir``, with the component's database (``--database`` to name another).

Servers never hold the owner's login: at start each checks with its own login that
nothing is pending, and refuses to start otherwise (``migrations_pending``),
unless it is configured to migrate itself (an owner URL for that purpose).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import unquote, urlsplit

import asyncpg

from chukan.gateway.cli.errors import DatabaseCommandError
from chukan.gateway.core import db
from chukan.gateway.core.errors import MigrationsPendingError

COMMAND: Final = "db"
EXIT_PENDING: Final = 1
EXIT_FAILED: Final = 2


def add_commands(commands: Any) -> None:
    """Add ``db`` and its sub-commands to ``chukan``'s parser."""
    parser = commands.add_parser(
        COMMAND,
        help="database lifecycle: migrate, status, tenant logins",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    migrate = actions.add_parser(
        "migrate", help="create the component's database if missing and apply its migrations"
    )
    migrate.add_argument("--component", choices=sorted(db.COMPONENTS), required=True)
    _owner_options(migrate)
    status = actions.add_parser(
        "status", help="applied and pending migrations as JSON; exit 1 when some are pending"
    )
    status.add_argument(
        "--component",
        choices=sorted(db.COMPONENTS),
        action="append",
        help="repeatable; default: gateway, hub and kokuhoren",
    )
    _owner_options(status)
    tenant = actions.add_parser(
        "tenant", help="create an agency's login role; write its gateway's URL to a file"
    )
    tenant.add_argument("--tenant", required=True, help="agency code (6 or 16 digits)")
    tenant.add_argument("--name", required=True, help="the agency's name")
    tenant.add_argument(
        "--write-url",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the tenant's database URL (created with mode 0600)",
    )
    _owner_options(tenant)


def _owner_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--database-url",
        metavar="URL",
        help="the owner's URL of the component's database (visible to other local users "
        "while the command runs: prefer --url-env or --url-file when it holds a password)",
    )
    source.add_argument("--url-env", metavar="VAR", help="read the owner's URL from variable VAR")
    source.add_argument(
        "--url-file", type=Path, metavar="FILE", help="read the owner's URL from FILE (0600)"
    )
    parser.add_argument(
        "--database",
        help="database name on the default server (default: the component's own)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``chukan db …``; failures are one line on stderr and exit status 2."""
    embedded: db.EmbeddedPostgres | None = None
    try:
        explicit = explicit_url(args, _url_file, DatabaseCommandError)
        server = None
        if explicit is None:
            server, embedded = db.server_url(args.data_dir)
        return asyncio.run(_run(args, explicit, server, sys.stdout))
    except DatabaseCommandError as exc:
        print(f"chukan db {args.action}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if embedded is not None:
            embedded.stop()


def explicit_url(
    args: argparse.Namespace,
    read_file: Callable[[Path], str],
    error: Callable[[str], Exception],
) -> str | None:
    """The URL given by ``--database-url``, ``--url-env`` or ``--url-file`` (read by
    ``read_file``); else None.  ``chukan db`` and ``chukan backup`` share these options."""
    if args.database_url:
        return str(args.database_url)
    if args.url_env:
        value = os.environ.get(args.url_env, "").strip()
        if not value:
            raise error(f"variable {args.url_env} is not set")
        return value
    if args.url_file is not None:
        return read_file(args.url_file)
    return None


def _url_file(path: Path) -> str:
    """The owner's URL kept in a file readable by its owner only."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text("utf-8").strip()
    except OSError as exc:
        raise DatabaseCommandError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise DatabaseCommandError(
            f"{path} may be read by other users (mode {mode:04o}): chmod 600 it"
        )
    if not text:
        raise DatabaseCommandError(f"{path} is empty")
    return text


def _database_url(
    component: db.Component, explicit: str | None, server: str | None, database: str | None
) -> tuple[str, str]:
    """The URL of ``component``'s database and its name."""
    if explicit is not None:
        if database:
            raise DatabaseCommandError("--database names a database of the default server only")
        return explicit, unquote(urlsplit(explicit).path.lstrip("/")) or "(default)"
    assert server is not None
    name = database or component.database
    try:
        return db.with_database(server, name), name
    except ValueError as exc:
        raise DatabaseCommandError(str(exc)) from None


async def _run(
    args: argparse.Namespace, explicit: str | None, server: str | None, out: TextIO
) -> int:
    if args.action == "migrate":
        return await _migrate(args, explicit, server, out)
    if args.action == "status":
        return await _status(args, explicit, server, out)
    if args.action == "tenant":
        return await _tenant(args, explicit, server, out)
    raise DatabaseCommandError(f"unknown action {args.action}")


async def _migrate(
    args: argparse.Namespace, explicit: str | None, server: str | None, out: TextIO
) -> int:
    component = db.COMPONENTS[args.component]
    url, name = _database_url(component, explicit, server, args.database)
    try:
        if server is not None:
            url = await db.ensure_database(server, name)
        try:
            applied = await db.migrate_url(url, component.package, component.folder)
        except asyncpg.InvalidCatalogNameError:
            # The URL names a database not created yet: create it (CREATEDB) from the
            # same server's maintenance database, then migrate.
            await db.ensure_database(db.with_database(url, "postgres"), name)
            applied = await db.migrate_url(url, component.package, component.folder)
    except ValueError as exc:  # a database name ensure_database will not create
        raise DatabaseCommandError(str(exc)) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseCommandError(f"cannot migrate database {name}: {_reason(exc)}") from None
    except RuntimeError as exc:  # a migration edited after it was applied
        raise DatabaseCommandError(str(exc)) from None
    by_version = {m.version: m for m in component.migrations()}
    _json(
        out,
        {
            "component": args.component,
            "database": name,
            "applied": [db.migration_label(by_version[v]) for v in applied],
            "up_to_date": True,
        },
    )
    return 0


async def _status(
    args: argparse.Namespace, explicit: str | None, server: str | None, out: TextIO
) -> int:
    names = args.component or list(db.COMPONENTS)
    if explicit is not None and len(names) != 1:
        raise DatabaseCommandError("with an explicit URL, name exactly one --component")
    report: dict[str, Any] = {}
    for key in names:
        component = db.COMPONENTS[key]
        url, name = _database_url(component, explicit, server, args.database)
        migrations = component.migrations()
        try:
            conn = await asyncpg.connect(url)
        except asyncpg.InvalidCatalogNameError:  # no such database: nothing applied yet
            report[key] = {
                "database": name,
                "exists": False,
                **db.MigrationStatus([], migrations, [], []).to_json(),
            }
            continue
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseCommandError(
                f"cannot connect to database {name}: {_reason(exc)}"
            ) from None
        try:
            status = await db.migration_status(conn, migrations)
        except asyncpg.PostgresError as exc:
            raise DatabaseCommandError(f"cannot read {name}.schema_migrations: {exc}") from None
        finally:
            await conn.close()
        report[key] = {"database": name, "exists": True, **status.to_json()}
    up_to_date = all(entry["up_to_date"] for entry in report.values())
    _json(out, {"up_to_date": up_to_date, "components": report})
    return 0 if up_to_date else EXIT_PENDING


async def _tenant(
    args: argparse.Namespace, explicit: str | None, server: str | None, out: TextIO
) -> int:
    component = db.COMPONENTS["gateway"]
    url, name = _database_url(component, explicit, server, args.database)
    try:
        role = db.tenant_role(args.tenant)
    except ValueError:
        raise DatabaseCommandError(
            f"--tenant must be an agency code of 6 or 16 digits, not {args.tenant!r}"
        ) from None
    target: Path = args.write_url
    if not target.parent.is_dir():
        raise DatabaseCommandError(f"no folder {target.parent} for --write-url")
    try:
        conn = await asyncpg.connect(url)
        try:
            await db.require_migrations(conn, "gateway", component.migrations())
        finally:
            await conn.close()
        tenant_url = await db.provision_tenant(url, args.tenant, args.name)
    except MigrationsPendingError as exc:
        raise DatabaseCommandError(exc.message) from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise DatabaseCommandError(
            f"the owner may not create or change {role}: {exc} (a role made by another "
            "login needs GRANT … WITH ADMIN OPTION to this owner; see README)"
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseCommandError(f"cannot provision in database {name}: {_reason(exc)}") from None
    _write_private(target, tenant_url + "\n")
    _json(out, {"tenant": args.tenant, "role": role, "database": name, "url_file": str(target)})
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only, replacing any earlier one."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    partial.replace(path)


def _reason(exc: BaseException) -> str:
    """What went wrong, without echoing a URL (it may hold a password)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
