"""``chukan demo`` and ``chukan serve``: the offline network from the command line.

``demo`` runs the whole network in this process for one scripted run.  ``serve``
runs each server as its own process from a folder that persists across runs
(:mod:`chukan.simulators.devnet.serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from chukan.gateway.core import db
from chukan.simulators.devnet.demo import demo_main
from chukan.simulators.devnet.errors import DevnetServeError
from chukan.simulators.devnet.serve import FOLDER, serve_devnet

COMMANDS = ("demo", "serve")
EXIT_FAILED = 1


def add_commands(commands: Any) -> None:
    """Add ``demo`` and ``serve`` to the ``chukan`` sub-command parsers."""
    commands.add_parser("demo", help="run the offline demo and exit")
    commands.add_parser(
        "serve",
        help="start the hub, 国保連 and both gateways as processes and keep them running",
        description=(
            f"Write (first run) or reuse <--data-dir>/{FOLDER}/: a CA, certificates, TOML "
            "files and secret files of every server; start each server as its own "
            "process (chukan hub|kokuhoren|gateway serve --config …); print a curl per "
            "gateway; on Ctrl-C or SIGTERM stop them all."
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Run ``demo`` or ``serve`` on the embedded (or ``CHUKAN_DATABASE_URL``) PostgreSQL."""
    server_url, embedded = db.server_url(args.data_dir)
    try:
        if args.command == "demo":
            return demo_main(server_url)
        return asyncio.run(serve_devnet(args.data_dir, server_url, sys.stdout))
    except DevnetServeError as exc:
        print(f"chukan serve: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if embedded is not None:
            embedded.stop()
