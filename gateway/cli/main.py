"""The gateway's commands of the ``chukan`` command line: records, staff, ops, replica, keys, pki.

:mod:`chukan.cli` adds them to the one ``chukan`` parser, beside the offline
network's ``demo`` and ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, Final

from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli import backup as backup_cli
from chukan.gateway.cli import db as db_cli
from chukan.gateway.cli import persons as persons_cli
from chukan.gateway.cli import pki as pki_cli
from chukan.gateway.cli import serve as serve_cli
from chukan.gateway.cli.keys import add_keys_parser, run_keys
from chukan.gateway.cli.reconcile import run_reconcile
from chukan.gateway.core import db
from chukan.gateway.replica import cli as replica_cli
from chukan.gateway.serve import DEFAULT_SERVER_LOG_LEVEL, LOG_LEVELS, log_level

DEFAULT_DATA_DIR: Final = Path(".chukan")
DEFAULT_LOG_LEVEL: Final = "WARNING"
GATEWAY_DATABASE: Final = "chukan_gateway"


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Options every ``chukan`` command shares: where the embedded PostgreSQL lives, logging."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHUKAN_DATA_DIR", DEFAULT_DATA_DIR)),
        help="folder for the embedded PostgreSQL (default .chukan)",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        choices=LOG_LEVELS,
        default=os.environ.get("CHUKAN_LOG_LEVEL"),
        help=f"log events at this level and above (default $CHUKAN_LOG_LEVEL, else "
        f"{DEFAULT_LOG_LEVEL}; the servers' commands: {DEFAULT_SERVER_LOG_LEVEL})",
    )


def logging_level(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The level ``--log-level`` (or ``CHUKAN_LOG_LEVEL``) names; an unknown one exits 2."""
    name = args.log_level or DEFAULT_LOG_LEVEL
    if name not in LOG_LEVELS:  # argparse checks the option, not the variable's default
        choices = ", ".join(LOG_LEVELS)
        parser.error(f"CHUKAN_LOG_LEVEL: unknown level {name!r} (choose from {choices})")
    return logging.getLevelNamesMapping()[name]


def add_commands(commands: Any) -> None:
    """Add the gateway's commands to the ``chukan`` sub-command parsers."""
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    replica_cli.add_parser(commands)
    db_cli.add_commands(commands)
    add_keys_parser(commands)
    pki_cli.add_commands(commands)
    serve_cli.add_commands(commands)
    backup_cli.add_commands(commands)
    persons_cli.add_parser(commands, database_default=GATEWAY_DATABASE)


def run(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is one of the gateway's; None if it is not."""
    if args.command == "keys":
        return run_keys(args)
    if args.command == "pki":
        return pki_cli.run(args)
    if args.command in admin_cli.COMMANDS:
        return _admin(args)
    if args.command == "replica":
        return replica_cli.run(args)
    if args.command == db_cli.COMMAND:
        return db_cli.run(args)
    if args.command == serve_cli.COMMAND:
        return serve_cli.run(args)
    if args.command in backup_cli.COMMANDS:
        return backup_cli.run(args)
    if args.command == persons_cli.COMMAND:
        return persons_cli.run(args)
    return None


def _admin(args: argparse.Namespace) -> int:
    """``records``, ``staff`` and ``ops``: against the gateway database (see admin_cli)."""
    if args.command == "staff" and args.action == "hash-password":
        return asyncio.run(admin_cli.run(args, "", sys.stdout, sys.stdin))
    if args.command == "records" and args.action == "reconcile":  # its own --config
        return run_reconcile(args, sys.stdout, sys.stderr)
    embedded = None
    url = args.database_url
    if not url:
        server_url, embedded = db.server_url(args.data_dir)
        url = db.with_database(server_url, args.database)
    try:
        return asyncio.run(admin_cli.run(args, url, sys.stdout, sys.stdin))
    finally:
        if embedded is not None:
            embedded.stop()
