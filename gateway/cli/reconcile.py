"""``chukan records reconcile``: the agency's records of a period against the hub's.

The comparator, the records route and the paginated client are the records flow's
(:mod:`chukan.gateway.records.reconcile`); this is the command around them: it reads
the gateway's TOML file, connects with the database URL and TLS identity it names,
and writes the run to the audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import structlog

from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.settings import DEFAULT_STATISTICS_TIME_ZONE
from chukan.gateway.core.tls import client_session
from chukan.gateway.records.reconcile import (
    DEFAULT_MARGIN,
    MAX_LIMIT,
    ReconcileReport,
    RecordDigest,
    compare,
    cursor_of,
    fetch_records,
    local_records,
    parse_period,
)
from chukan.gateway.staff.audit import audit

log = structlog.get_logger("chukan.records")


def add_reconcile_parser(actions: Any) -> None:
    """``chukan records reconcile --config FILE --from --to``."""
    parser = actions.add_parser(
        "reconcile",
        help="compare this agency's records of a period with the hub's, query by query",
    )
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.toml",
                        help="the gateway's TOML file (database, hub, TLS identity)")  # fmt: skip
    parser.add_argument("--from", dest="start", required=True,
                        help="first day (YYYY-MM-DD, in --time-zone) or ISO time")  # fmt: skip
    parser.add_argument("--to", dest="end", required=True,
                        help="last day (included) or ISO time (excluded)")  # fmt: skip
    parser.add_argument("--time-zone", default=DEFAULT_STATISTICS_TIME_ZONE)
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN.total_seconds(),
        metavar="SECONDS",
        help="read each side this much around the period (default one hour)",
    )
    parser.add_argument("--actor", default=None, help="who runs this (audit trail)")


async def reconcile_agency(
    config: GatewayConfig,
    start: dt.datetime,
    end: dt.datetime,
    *,
    margin: dt.timedelta,
    actor: str,
) -> ReconcileReport:
    """The agency's records against the hub's, through this gateway's TLS identity."""
    wide = (start - margin, end + margin)
    conn = await asyncpg.connect(config.database_url)
    try:
        local: list[RecordDigest] = []
        after: str | None = None
        while True:
            page = await local_records(
                conn, config.agency_code, *wide, after=after, limit=MAX_LIMIT
            )
            local.extend(page)
            if len(page) < MAX_LIMIT:
                break
            after = cursor_of(page[-1])
        async with client_session(config.tls) as session:
            hub = await fetch_records(
                session, config.hub_url, *wide, agency=config.agency_code,
                timeout=config.timing.http_timeout * 3,
            )  # fmt: skip
        report = compare(config.agency_code, hub, local, start=start, end=end)
        await audit(
            conn,
            actor_kind="cli",
            actor=actor,
            action="records.reconcile",
            target=None,
            detail={
                "from": start.isoformat(),
                "to": end.isoformat(),
                "ok": report.ok,
                "differences": len(report.differences),
            },
        )
    finally:
        await conn.close()
    log.info(
        "records_reconciled", agency=config.agency_code, ok=report.ok,
        compared=report.compared, differences=len(report.differences),
    )  # fmt: skip
    return report


def run_reconcile(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``chukan records reconcile``: 0 all agree, 1 differences (JSON report), 2 error."""
    try:
        config = load_gateway_config(args.config)
        start, end = parse_period(args.start, args.end, time_zone=args.time_zone)
        report = asyncio.run(
            reconcile_agency(
                config,
                start,
                end,
                margin=dt.timedelta(seconds=args.margin),
                actor=args.actor or getpass.getuser(),
            )
        )
    except GatewayError as exc:
        print(f"chukan records reconcile: {exc.message}", file=err)
        return 2
    out.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    return 0 if report.ok else 1
