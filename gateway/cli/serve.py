"""``chukan gateway serve --config FILE.toml``: one agency's gateway as its own process.

The file is read by :func:`~chukan.gateway.core.config_file.load_gateway_config`;
the process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`).  Migrations are applied only
with ``--migrate``, through the owner login of ``[database.migration]``: the
running server itself logs in as the agency's tenant role.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Final

from chukan.gateway.cli.errors import ServeCommandError
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.serve import RunningServer, add_serve_command, serve_command, start_gateway

COMMAND: Final = "gateway"
DESCRIPTION: Final = (
    "Serve one agency's gateway (中間サーバー) as this process, from a TOML file, until "
    "SIGTERM or SIGINT; then stop accepting, let in-flight requests finish, release "
    "everything and exit 0."
)
MIGRATE_HELP: Final = (
    "apply the gateway's database migrations first, through the owner login of "
    "[database.migration] (else the server applies none)"
)


def add_commands(commands: Any) -> None:
    """Add ``gateway serve`` to the ``chukan`` sub-command parsers."""
    add_serve_command(
        commands,
        COMMAND,
        what="gateway",
        group_help="run one agency's gateway (中間サーバー)",
        serve_help="serve one agency's gateway from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
        migrate_help=MIGRATE_HELP,
    )


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan gateway …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None

    def load(path: Path) -> GatewayConfig:
        config = load_gateway_config(path)
        if not args.migrate:  # the server's own login applies nothing
            return dataclasses.replace(config, migration_database_url=None)
        if config.migration_database_url is None:
            raise ServeCommandError(
                f"{path}: --migrate needs the owner login: add [database.migration] url"
            )
        return config

    return serve_command(args, COMMAND, load, _start)


async def _start(config: GatewayConfig, args: argparse.Namespace) -> RunningServer:
    return await start_gateway(config, shutdown_timeout=args.shutdown_timeout)
