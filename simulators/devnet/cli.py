"""``chukan demo`` and ``chukan serve``: the offline network from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from chukan.gateway.core import db
from chukan.gateway.core.identities import system_identity
from chukan.gateway.serve import wait_forever
from chukan.simulators.devnet.demo import demo_main
from chukan.simulators.devnet.network import CORE_SYSTEM, start_network

COMMANDS = ("demo", "serve")


def add_commands(commands: Any) -> None:
    """Add ``demo`` and ``serve`` to the ``chukan`` sub-command parsers."""
    commands.add_parser("demo", help="run the offline demo and exit")
    commands.add_parser("serve", help="start hub and gateways and keep them running")


def run(args: argparse.Namespace) -> int:
    """Run ``demo`` or ``serve`` on the embedded (or ``CHUKAN_DATABASE_URL``) PostgreSQL."""
    server_url, embedded = db.server_url(args.data_dir)
    try:
        if args.command == "demo":
            return demo_main(server_url)
        with (
            tempfile.TemporaryDirectory(prefix="chukan-serve-") as tmp,
            contextlib.suppress(KeyboardInterrupt),
        ):
            asyncio.run(_serve(server_url, Path(tmp)))
        return 0
    finally:
        if embedded is not None:
            embedded.stop()


async def _serve(server_url: str, work_dir: Path) -> None:
    network = await start_network(server_url, work_dir)
    print(f"hub      {network.hub.url}", flush=True)
    if network.kokuhoren is not None:
        print(f"国保連   {network.kokuhoren.url}", flush=True)
    for code, gateway in network.gateways.items():
        print(f"gateway  {code} {gateway.config.agency_name}  {gateway.url}", flush=True)
        print(f"         internal API token (this run only): {gateway.token}", flush=True)
        if network.pki is not None:
            core = next(s for s in gateway.config.systems if s.system_id == CORE_SYSTEM)
            cert, key = network.pki.export_client(
                system_identity(code, CORE_SYSTEM, core.operations),
                work_dir / "tls",
                f"{code}-{CORE_SYSTEM}",
                gateway.token.encode(),
            )
            print(f"         client certificate {cert}", flush=True)
            print(f"         its key {key} (passphrase: the token above)", flush=True)
    if network.pki is not None:
        print(f"CA       {work_dir / 'tls' / 'ca.pem'} (mutual TLS, this run only)", flush=True)
    print("serving; press Ctrl-C to stop", flush=True)
    try:
        await wait_forever()
    finally:
        await network.stop()
