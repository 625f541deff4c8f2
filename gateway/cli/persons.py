"""``chukan persons purge|show``: the operator's erasure and a person's lifecycle.

Like the other administrative commands (:mod:`chukan.gateway.cli.admin`) they connect
with the owner's URL and act as the tenant's role, so row-level security and the
append-only triggers apply; each run is written to the audit trail (actor kind ``cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import sys
from typing import Any, Final, TextIO

from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.validation import atena_id_value
from chukan.gateway.persons.erasure import DEFAULT_SUPERSEDED_AGE, purge_persons
from chukan.gateway.persons.lifecycle import person_view
from chukan.gateway.staff.audit import audit

COMMAND: Final = "persons"


def add_parser(commands: Any, *, database_default: str) -> None:
    """``chukan persons ...``."""
    parser = commands.add_parser(COMMAND, help="persons: erasure (purge) and lifecycle")
    actions = parser.add_subparsers(dest="action", required=True)
    purge = actions.add_parser(
        "purge",
        help="erase superseded 副本 versions and unregistered persons' data (records stay)",
    )
    show = actions.add_parser("show", help="a person's lifecycle state and events")
    show.add_argument("--atena-id", required=True)
    for sub in (purge, show):
        sub.add_argument("--database-url", help="owner URL of the gateway database")
        sub.add_argument("--database", default=database_default)
        sub.add_argument("--tenant", required=True, help="agency code (6 or 16 digits)")
        sub.add_argument("--actor", default=None, help="who runs this (audit trail)")
    purge.add_argument(
        "--atena-id",
        action="append",
        dest="atena_ids",
        help="only this person (repeatable; default: every person of the tenant)",
    )
    purge.add_argument(
        "--superseded-age-days",
        type=int,
        default=DEFAULT_SUPERSEDED_AGE.days,
        help="erase versions taken over more than this many days ago "
        f"(default {DEFAULT_SUPERSEDED_AGE.days})",
    )


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``chukan persons ACTION`` against the gateway database."""
    embedded = None
    url = args.database_url
    if not url:
        server_url, embedded = db.server_url(args.data_dir)
        url = db.with_database(server_url, args.database)
    try:
        return asyncio.run(run_async(args, url, out))
    except GatewayError as exc:
        print(f"chukan: {exc.message}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()


async def run_async(args: argparse.Namespace, url: str, out: TextIO) -> int:
    """The command on an owner ``url`` (tests call this with the server they started)."""
    actor = args.actor or getpass.getuser()
    conn = await admin_cli.tenant_connection(url, args.tenant)
    try:
        if args.action == "purge":
            if args.superseded_age_days < 0:
                print("chukan: --superseded-age-days must be 0 or more", file=sys.stderr)
                return 2
            report = await purge_persons(
                conn,
                actor=f"cli:{actor}",
                superseded_age=dt.timedelta(days=args.superseded_age_days),
                atena_ids=None
                if args.atena_ids is None
                else [atena_id_value(a) for a in args.atena_ids],
            )
            await audit(
                conn,
                actor_kind="cli",
                actor=actor,
                action="persons.purge",
                target=f"job:{report.job_id}",
                detail=report.counts(),
            )
            result: dict[str, Any] = report.to_json()
        else:
            atena_id = atena_id_value(args.atena_id)
            result = await person_view(conn, atena_id)
            await audit(
                conn,
                actor_kind="cli",
                actor=actor,
                action="persons.read",
                target=atena_id,
                detail={},
            )
    finally:
        await conn.close()
    out.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return 0
