"""``chukan hub serve --config FILE.toml``: the hub simulator as its own process.

The file is read by :func:`~chukan.simulators.hub.config_file.load_hub_config`;
the process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`): in-flight requests finish,
the delivery worker stops, the pool closes.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from chukan.gateway.serve import add_serve_command, app_starter, serve_command
from chukan.simulators.hub.app import create_hub_app
from chukan.simulators.hub.config_file import load_hub_config

COMMAND: Final = "hub"
DESCRIPTION: Final = (
    "Serve the hub simulator as this process, from a TOML file, until SIGTERM or "
    "SIGINT; then stop accepting, let in-flight requests finish, stop the delivery "
    "worker, close the pool and exit 0."
)
MIGRATE_HELP: Final = "apply the hub's database migrations first, through [database] url"


def add_commands(commands: Any) -> None:
    """Add ``hub serve`` to the ``chukan`` sub-command parsers."""
    add_serve_command(
        commands,
        COMMAND,
        what="hub",
        group_help="run the hub simulator (情報提供ネットワークシステム)",
        serve_help="serve the hub from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
        migrate_help=MIGRATE_HELP,
    )


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan hub …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None
    return serve_command(args, COMMAND, load_hub_config, app_starter(create_hub_app, COMMAND))
