"""``chukan kokuhoren serve --config FILE.toml``: the 国保連 simulator as its own process.

The file is read by
:func:`~chukan.simulators.kokuhoren.config_file.load_kokuhoren_config`; the
process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from chukan.gateway.core import db
from chukan.gateway.serve import RunningServer, add_server_options, serve, serve_command
from chukan.simulators.kokuhoren.app import create_kokuhoren_app
from chukan.simulators.kokuhoren.config import KokuhorenConfig
from chukan.simulators.kokuhoren.config_file import load_kokuhoren_config

COMMAND: Final = "kokuhoren"
DESCRIPTION: Final = (
    "Serve the 国保連 伝送 mailbox simulator as this process, from a TOML file, until "
    "SIGTERM or SIGINT; then stop accepting, let in-flight requests finish, close the"
    " pool and exit 0."
)
MIGRATE_HELP: Final = "apply the simulator's database migrations first, through [database] url"
MIGRATIONS: Final = ("chukan.simulators", "migrations/kokuhoren")


def add_commands(commands: Any) -> None:
    """Add ``kokuhoren serve`` to the ``chukan`` sub-command parsers."""
    kokuhoren = commands.add_parser(COMMAND, help="run the 国保連 伝送 mailbox simulator")
    actions = kokuhoren.add_subparsers(dest="action", required=True)
    parser = actions.add_parser(
        "serve",
        help="serve the 国保連 simulator from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
    )
    add_server_options(parser, "国保連 simulator", migrate_help=MIGRATE_HELP)


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan kokuhoren …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None
    return serve_command(args, COMMAND, load_kokuhoren_config, _start)


async def _start(config: KokuhorenConfig, args: argparse.Namespace) -> RunningServer:
    if args.migrate:
        await db.migrate_url(config.database_url, *MIGRATIONS)
    return await serve(
        create_kokuhoren_app(config),
        config.host,
        config.port,
        ssl_context=None if config.tls is None else config.tls.server_context(),
        shutdown_timeout=args.shutdown_timeout,
    )
