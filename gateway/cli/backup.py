"""``chukan backup`` and ``chukan restore`` (docs/backup.md).

``chukan backup --out DIR [--kind daily|copy]``
    One consistent, encrypted backup of a component's database (default: the
    gateway's) and its key folder into DIR, beside a manifest; then the backups of
    that kind past retention (daily 7 days, copy 21 days) are removed.  Prints the
    manifest as JSON.  ``--prune-only`` removes the expired ones without a backup.

``chukan restore --from FILE [--verify-only]``
    Authenticates the whole file first (a tampered or truncated backup is refused
    with ``backup_tampered`` / ``backup_truncated``), then restores into an empty
    database (created if missing; ``restore_target_not_empty`` otherwise), its roles,
    the tenants' logins and the key folder.  Prints what was done as JSON; exit
    status 1 when the restored database's migrations are not this version's.

The database login is ``--database-url``, ``--url-env VAR`` or ``--url-file FILE``,
else the owner login of ``--config``'s ``[database.migration]``, else
``CHUKAN_DATABASE_URL`` or the embedded PostgreSQL in ``--data-dir`` with the
component's database (``--database``).  It must bypass row-level security
(a superuser, or a role WITH BYPASSRLS) to dump every tenant's rows.  The
passphrase comes from ``--passphrase-file`` (mode 0600) or the variable
``--passphrase-env`` names (default ``CHUKAN_BACKUP_PASSPHRASE``).  Failures are
one line on stderr, ``chukan backup: <code>: <message>``, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import unquote, urlsplit

from chukan.gateway.backup import backups
from chukan.gateway.backup.errors import BackupError, BackupPassphraseError
from chukan.gateway.backup.restore import Target, restore_backup, verify_backup
from chukan.gateway.cli.db import explicit_url
from chukan.gateway.core import db
from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.errors import GatewayError

BACKUP: Final = "backup"
RESTORE: Final = "restore"
COMMANDS: Final = (BACKUP, RESTORE)
PASSPHRASE_ENV: Final = "CHUKAN_BACKUP_PASSPHRASE"  # noqa: S105 -- a variable's name
EXIT_STALE: Final = 1
EXIT_FAILED: Final = 2


def add_commands(commands: Any) -> None:
    """Add ``backup`` and ``restore`` to ``chukan``'s parser."""
    backup = commands.add_parser(
        BACKUP,
        help="consistent encrypted backup of a database and its keys, with retention",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    backup.add_argument("--out", type=Path, required=True, metavar="DIR", help="backup folder")
    backup.add_argument(
        "--kind",
        choices=sorted(backups.RETENTION),
        default=backups.KIND_DAILY,
        help="daily (退避, kept 7 days) or copy (複写 for remote keeping, kept 21 days)",
    )
    backup.add_argument(
        "--prune-only", action="store_true", help="only remove this kind's expired backups"
    )
    _common(backup)
    restore = commands.add_parser(
        RESTORE,
        help="restore a backup into an empty database, with its roles and keys",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    restore.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE")
    restore.add_argument(
        "--verify-only", action="store_true", help="authenticate the whole file; change nothing"
    )
    restore.add_argument(
        "--tenant-urls",
        type=Path,
        metavar="DIR",
        help="where to write <tenant>.url (0600) for each tenant login the restore creates",
    )
    _common(restore)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--component",
        choices=sorted(db.COMPONENTS),
        default="gateway",
        help="whose database (default gateway; the hub's and 国保連's too)",
    )
    parser.add_argument(
        "--config", type=Path, help="the gateway's TOML file: owner login and key folder"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--database-url", metavar="URL", help="the database's URL")
    source.add_argument("--url-env", metavar="VAR", help="read the URL from variable VAR")
    source.add_argument("--url-file", type=Path, metavar="FILE", help="read the URL from FILE")
    parser.add_argument("--database", help="database name on the default server")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key-dir", type=Path, help="the key folder (default: --config's)")
    keys.add_argument("--no-keys", action="store_true", help="leave the key folder out")
    passphrase = parser.add_mutually_exclusive_group()
    passphrase.add_argument(
        "--passphrase-file", type=Path, metavar="FILE", help="the backup passphrase (mode 0600)"
    )
    passphrase.add_argument(
        "--passphrase-env",
        metavar="VAR",
        default=PASSPHRASE_ENV,
        help=f"variable holding the backup passphrase (default {PASSPHRASE_ENV})",
    )


def _private_text(path: Path, what: str) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text("utf-8").strip()
    except OSError as exc:
        raise BackupError(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise BackupPassphraseError(f"{path} may be read by other users (mode {mode:04o})")
    if not text:
        raise BackupError(f"{what} {path} is empty")
    return text


def passphrase(args: argparse.Namespace) -> bytes:
    if args.passphrase_file is not None:
        return _private_text(args.passphrase_file, "passphrase file").encode()
    value = os.environ.get(args.passphrase_env, "").strip()
    if not value:
        raise BackupPassphraseError(
            f"no backup passphrase: set {args.passphrase_env} or --passphrase-file"
        )
    return value.encode()


def _locations(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """The explicit URL and key folder, from the options or the gateway's TOML file."""
    url = explicit_url(args, lambda path: _private_text(path, "URL file"), BackupError)
    key_dir: Path | None = args.key_dir
    if args.config is not None:
        if args.component != "gateway":
            raise BackupError("--config reads a gateway's file: use --database-url for others")
        config = load_gateway_config(args.config)
        if url is None:
            url = config.migration_database_url or config.database_url
        if key_dir is None and not args.no_keys:
            key_dir = config.key_dir
    return url, None if args.no_keys else key_dir


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan backup|restore``; None when ``args`` is another command."""
    if args.command not in COMMANDS:
        return None
    embedded: db.EmbeddedPostgres | None = None
    try:
        if args.command == RESTORE and args.verify_only:  # no database involved
            return _verify(args, sys.stdout)
        url, key_dir = _locations(args)
        if args.command == BACKUP and args.prune_only:  # no connection either
            name = args.database or db.COMPONENTS[args.component].database
            return _prune(args, _database_name(url) if url else name, sys.stdout)
        if url is None:
            server, embedded = db.server_url(args.data_dir)
            name = args.database or db.COMPONENTS[args.component].database
            try:
                url = db.with_database(server, name)
            except ValueError as exc:
                raise BackupError(str(exc)) from None
        elif args.database:
            raise BackupError("--database names a database of the default server only")
        if args.command == BACKUP:
            return _backup(args, url, key_dir, sys.stdout)
        return _restore(args, url, key_dir, sys.stdout)
    except GatewayError as exc:
        print(f"chukan {args.command}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if embedded is not None:
            embedded.stop()


def _database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "postgres"


def _prune(args: argparse.Namespace, database: str, out: TextIO) -> int:
    pruned = backups.prune(args.out, args.kind, args.component, database, now=backups.utcnow())
    _json(out, {"pruned": pruned})
    return 0


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    verified = verify_backup(args.source, passphrase(args))
    _json(
        out,
        {
            "verified": True,
            "about": verified.about,
            "database_bytes": verified.database_size,
            "keys": sorted(verified.keys),
        },
    )
    return 0


def _backup(args: argparse.Namespace, url: str, key_dir: Path | None, out: TextIO) -> int:
    if key_dir is None and not args.no_keys:
        raise BackupError("name the key folder (--key-dir or --config), or --no-keys")
    source = backups.Source(url, args.component, _database_name(url), key_dir)
    manifest = asyncio.run(backups.create_backup(source, args.out, args.kind, passphrase(args)))
    _json(out, manifest)
    return 0


def _restore(args: argparse.Namespace, url: str, key_dir: Path | None, out: TextIO) -> int:
    secret = passphrase(args)
    if key_dir is None and not args.no_keys:
        raise BackupError(
            "name the key folder to restore into (--key-dir or --config), or --no-keys"
        )
    target = Target(url, key_dir, args.tenant_urls)
    report = asyncio.run(restore_backup(args.source, secret, target))
    _json(out, report)
    return 0 if report["migrations"]["up_to_date"] else EXIT_STALE


def _json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
