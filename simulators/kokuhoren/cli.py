"""``chukan kokuhoren serve --config FILE.toml``: the 国保連 simulator as its own process.

The file is read by
:func:`~chukan.simulators.kokuhoren.config_file.load_kokuhoren_config`; the
process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from chukan.gateway.serve import add_serve_command, app_starter, serve_command
from chukan.simulators.kokuhoren.app import create_kokuhoren_app
from chukan.simulators.kokuhoren.config_file import load_kokuhoren_config

COMMAND: Final = "kokuhoren"
DESCRIPTION: Final = (
    "Serve the 国保連 伝送 mailbox simulator as this process, from a TOML file, until "
    "SIGTERM or SIGINT; then stop accepting, let in-flight requests finish, close the"
    " pool and exit 0."
)
MIGRATE_HELP: Final = "apply the simulator's database migrations first, through [database] url"


def add_commands(commands: Any) -> None:
    """Add ``kokuhoren serve`` to the ``chukan`` sub-command parsers."""
    add_serve_command(
        commands,
        COMMAND,
        what="国保連 simulator",
        group_help="run the 国保連 伝送 mailbox simulator",
        serve_help="serve the 国保連 simulator from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
        migrate_help=MIGRATE_HELP,
    )


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan kokuhoren …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None
    return serve_command(
        args, COMMAND, load_kokuhoren_config, app_starter(create_kokuhoren_app, COMMAND)
    )
