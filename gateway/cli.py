"""``chukan`` command line: the demo, a long-running ``serve`` mode and tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Final

from . import admin_cli, db, replica_cli
from .keycli import add_keys_parser, run_keys
from .logs import configure_logging

DEFAULT_DATA_DIR: Final = Path(".chukan")
GATEWAY_DATABASE: Final = "chukan_gateway"  # as server.GATEWAY_DATABASE (not imported: slow)


def _server_url(data_dir: Path) -> tuple[str, db.EmbeddedPostgres | None]:
    """``CHUKAN_DATABASE_URL`` if set, else an embedded PostgreSQL in ``data_dir``."""
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if url:
        return url, None
    embedded = db.EmbeddedPostgres(data_dir / "pg")
    return embedded.start(), embedded


async def _serve(server_url: str, work_dir: Path) -> None:
    from .pki import system_identity
    from .server import CORE_SYSTEM, start_network, wait_forever

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chukan", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CHUKAN_DATA_DIR", DEFAULT_DATA_DIR)),
        help="folder for the embedded PostgreSQL (default .chukan)",
    )
    parser.add_argument("--log-level", default=os.environ.get("CHUKAN_LOG_LEVEL", "WARNING"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the offline demo and exit")
    commands.add_parser("serve", help="start hub and gateways and keep them running")
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    replica_cli.add_parser(commands)
    add_keys_parser(commands)
    args = parser.parse_args(argv)
    configure_logging(getattr(logging, str(args.log_level).upper(), logging.WARNING))
    if args.command == "keys":
        return run_keys(args)
    if args.command in admin_cli.COMMANDS:
        return _admin(args)
    if args.command == "replica":
        return replica_cli.run(args)
    server_url, embedded = _server_url(args.data_dir)
    try:
        if args.command == "demo":
            from .demo import demo_main

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


def _admin(args: argparse.Namespace) -> int:
    """``records``, ``staff`` and ``ops``: against the gateway database (see admin_cli)."""
    if args.command == "staff" and args.action == "hash-password":
        return asyncio.run(admin_cli.run(args, "", sys.stdout, sys.stdin))
    embedded = None
    url = args.database_url
    if not url:
        server_url, embedded = _server_url(args.data_dir)
        url = db.with_database(server_url, args.database)
    try:
        return asyncio.run(admin_cli.run(args, url, sys.stdout, sys.stdin))
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
