"""What the staff API handlers of every flow (staff, records, ops) share: ``?limit`` and
CSV downloads, so that each flow answers these the same way."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from chukan.gateway.core.errors import ValidationError


def query_limit(request: web.Request, *, default: int = 100, most: int = 1000) -> int:
    """``?limit=``: how many rows a listing returns, at most ``most``."""
    try:
        return min(int(request.query.get("limit", str(default))), most)
    except ValueError:
        raise ValidationError("limit must be a whole number") from None


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV with a header line (CRLF, an absent value as an empty field)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return out.getvalue()


def csv_response(text: str, filename: str) -> web.Response:
    """A CSV download (UTF-8) named ``filename``."""
    return web.Response(
        body=text.encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
