"""``chukan`` command line: the offline demo, ``serve``, and the gateway's tools.

The top of the import graph: it composes the gateway's commands
(:mod:`chukan.gateway.cli.main`) with the offline network's
(:mod:`chukan.simulators.devnet.cli`), so that neither imports the other.
"""

from __future__ import annotations

import argparse
import sys

from chukan.gateway.cli import main as gateway_cli
from chukan.gateway.core.logs import configure_logging
from chukan.simulators.devnet import cli as devnet_cli
from chukan.simulators.hub import cli as hub_cli
from chukan.simulators.kokuhoren import cli as kokuhoren_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chukan", description=__doc__)
    gateway_cli.add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    devnet_cli.add_commands(commands)
    gateway_cli.add_commands(commands)
    hub_cli.add_commands(commands)
    kokuhoren_cli.add_commands(commands)
    args = parser.parse_args(argv)
    configure_logging(gateway_cli.logging_level(parser, args))
    for run in (gateway_cli.run, hub_cli.run, kokuhoren_cli.run):
        code = run(args)
        if code is not None:
            return code
    return devnet_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
