"""``chukan hub serve --config FILE.toml``: the hub simulator as its own process.

The file is read by :func:`~chukan.simulators.hub.config_file.load_hub_config`;
the process runs until SIGTERM or SIGINT and then stops gracefully
(:func:`~chukan.gateway.serve.run_until_signal`): in-flight requests finish,
the delivery worker stops, the pool closes.

``chukan hub records verify`` walks the hub's record chain against its signed
checkpoints and the witness file; ``chukan hub records reconcile`` compares every
agency's records of a period with the hub's.  Both print a JSON report and exit 1
when anything disagrees (2 when they cannot run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg

from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.tls import client_session
from chukan.gateway.records.reconcile import DEFAULT_MARGIN, parse_period
from chukan.gateway.serve import add_serve_command, app_starter, serve_command
from chukan.keys import KeysError, PublicSigningKey, load_signing_key
from chukan.simulators.hub.app import create_hub_app
from chukan.simulators.hub.checkpoints import read_witness_file, verify_hub_chain
from chukan.simulators.hub.config import HUB_OWNER, HubConfig
from chukan.simulators.hub.config_file import load_hub_config
from chukan.simulators.hub.reconcile import reconcile_all

COMMAND: Final = "hub"
DESCRIPTION: Final = (
    "Serve the hub simulator as this process, from a TOML file, until SIGTERM or "
    "SIGINT; then stop accepting, let in-flight requests finish, stop the delivery "
    "worker, close the pool and exit 0."
)
MIGRATE_HELP: Final = "apply the hub's database migrations first, through [database] url"


def add_commands(commands: Any) -> None:
    """Add ``hub serve`` and ``hub records …`` to the ``chukan`` sub-command parsers."""
    actions = add_serve_command(
        commands,
        COMMAND,
        what="hub",
        group_help="run the hub simulator (情報提供ネットワークシステム)",
        serve_help="serve the hub from a TOML file until SIGTERM/SIGINT",
        description=DESCRIPTION,
        migrate_help=MIGRATE_HELP,
    )
    records = actions.add_parser("records", help="the hub's records: verify, reconcile")
    record_actions = records.add_subparsers(dest="records_action", required=True)
    verify = record_actions.add_parser(
        "verify", help="walk the hub's record chain, its checkpoints and the witness file"
    )
    verify.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    verify.add_argument(
        "--witness-file",
        type=Path,
        help="the witness file to check against (default: [records] witness_file)",
    )
    verify.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="events older than this covered by no witnessed checkpoint are an issue "
        "(default: three checkpoint intervals plus a minute)",
    )
    reconcile = record_actions.add_parser(
        "reconcile", help="every agency's records of a period against the hub's"
    )
    reconcile.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    reconcile.add_argument("--from", dest="start", required=True)
    reconcile.add_argument("--to", dest="end", required=True)
    reconcile.add_argument("--time-zone", default="Asia/Tokyo")
    reconcile.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN.total_seconds(), metavar="SECONDS"
    )


def run(args: argparse.Namespace) -> int | None:
    """Run ``chukan hub …``; None when ``args`` is another command."""
    if args.command != COMMAND:
        return None
    if args.action == "records":
        return run_records(args, sys.stdout, sys.stderr)
    return serve_command(args, COMMAND, load_hub_config, app_starter(create_hub_app, COMMAND))


def _trusted_keys(config: HubConfig) -> dict[str, PublicSigningKey] | None:
    """The hub's own public signing key, from its key folder (None: not readable here)."""
    path = config.key_dir / f"{HUB_OWNER}.sig.pem"
    try:
        public = load_signing_key(HUB_OWNER, path.read_bytes(), config.key_passphrase).public
    except (OSError, KeysError, ValueError):
        return None
    return {public.key_id: public}


async def _verify(config: HubConfig, args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.witness_file or config.witness_path
    try:
        witness = await asyncio.to_thread(read_witness_file, path)
    except FileNotFoundError:
        if args.witness_file is not None:
            raise
        witness = None  # the default file: not written yet (no checkpoint so far)
    grace = (
        dt.timedelta(seconds=args.grace)
        if args.grace is not None
        else config.checkpoint_interval * 3 + dt.timedelta(seconds=60)
    )
    conn = await asyncpg.connect(config.database_url)
    try:
        await db.require_migrations(conn, "hub", db.COMPONENTS["hub"].migrations())
        report = await verify_hub_chain(
            conn,
            await asyncio.to_thread(_trusted_keys, config),
            witness=witness,
            witness_file=str(path) if witness is not None else None,
            grace=grace,
        )
    finally:
        await conn.close()
    return report.to_json()


async def _reconcile(config: HubConfig, args: argparse.Namespace) -> dict[str, Any]:
    start, end = parse_period(args.start, args.end, time_zone=args.time_zone)
    conn = await asyncpg.connect(config.database_url)
    try:
        await db.require_migrations(conn, "hub", db.COMPONENTS["hub"].migrations())
        async with client_session(config.tls) as session:
            return await reconcile_all(
                conn,
                session,
                start,
                end,
                margin=dt.timedelta(seconds=args.margin),
                tls=config.tls is not None,
                timeout=config.delivery_timeout * 3,
            )
    finally:
        await conn.close()


def run_records(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``chukan hub records verify|reconcile``: 0 ok, 1 issues (JSON report), 2 cannot run."""
    action = args.records_action
    try:
        config = load_hub_config(args.config)
        run = _verify if action == "verify" else _reconcile
        report = asyncio.run(run(config, args))
    except (GatewayError, ValueError, OSError, asyncpg.PostgresError) as exc:  # witness file
        text = exc.message if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
        print(f"chukan hub records {action}: {text}", file=err)
        return 2
    out.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return 0 if report["ok"] else 1
