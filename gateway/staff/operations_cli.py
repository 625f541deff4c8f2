"""``chukan operations list``: the operation log (操作内容の記録) for an auditor at the
command line, with the staff API's filters (``GET /staff/v1/operations``), as JSON."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.oplog import MAX_READ, read_operations


def add_operation_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", help="ISO date or date-time (inclusive)")
    parser.add_argument("--to", dest="end", help="ISO date (through that day) or date-time")
    parser.add_argument("--caller", help="a core system id or a staff username")
    parser.add_argument("--operation", help="e.g. query.submit, or a prefix ending in '.'")
    parser.add_argument("--target", help="a 宛名番号, query id, message id …")
    parser.add_argument("--office", help="an office code")
    parser.add_argument("--limit", type=int, default=100, help=f"at most {MAX_READ}")


def operation_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters given, for the audit event of the command."""
    names = ("start", "end", "caller", "operation", "target", "office")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _instant(value: str | None, *, end: bool) -> dt.datetime | None:
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value) + dt.timedelta(days=1 if end else 0)
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{value!r} is not an ISO date or date-time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


async def list_operations(conn: db.Executor, args: argparse.Namespace) -> list[dict[str, Any]]:
    return await read_operations(
        conn,
        start=_instant(args.start, end=False),
        end=_instant(args.end, end=True),
        caller=args.caller,
        operation=args.operation,
        target=args.target,
        office=args.office,
        limit=max(1, min(args.limit, MAX_READ)),
    )
