"""``chukan hub serve --config FILE.toml``: the hub simulator as its own process.

The file is read by :func:`~chukan.simulators.hub.config_file.load_hub_config`;
the process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`): in-flight requests finish,
the delivery worker stops, the pool closes.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from chukan.gateway.core import db
from chukan.gateway.serve import RunningServer, add_server_options, serve, serve_command
from chukan.simulators.hub.app import create_hub_app
from chukan.simulators.hub.config import HubConfig
from chukan.simulators.hub.config_file import load_hub_config

COMMAND: Final = "hub"
DESCRIPTION: Final = (
    "Serve the hub simulator as this process, from a TOML file, until SIGTERM or "
    "SIGINT; then stop accepting, let in-flight requests finish, stop the delivery "
    "worker, close the pool and exit 0."
)
MIGRATE_HELP: Final = "apply the hub's database migrations first, through [database] url"
MIGRATIONS: Final = ("chukan.simulators", "migrations/hub")


def add_commands(commands: Any) -> None:
    """Add ``hub serve`` to the ``chukan`` sub-command parsers."""
    hub = commands.add_parser(COMMAND, help="run the hub simulator (情報提供ネットワークシステム)")
    actions = hub.add_subparsers(dest="action", required=True)
    parser = actions.add_parser(
        "serve",
        help="serve the hub from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
    )
    add_server_options(parser, "hub", migrate_help=MIGRATE_HELP)


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan hub …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None
    return serve_command(args, COMMAND, load_hub_config, _start)


async def _start(config: HubConfig, args: argparse.Namespace) -> RunningServer:
    if args.migrate:
        await db.migrate_url(config.database_url, *MIGRATIONS)
    return await serve(
        create_hub_app(config),
        config.host,
        config.port,
        ssl_context=None if config.tls is None else config.tls.server_context(),
        shutdown_timeout=args.shutdown_timeout,
    )
