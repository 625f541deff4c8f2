"""Business statistics: records per day (in the municipality's time zone) × role ×
procedure × item × outcome."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from zoneinfo import ZoneInfo

from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.state import utcnow

MAX_STATISTICS_DAYS: Final = 366
DEFAULT_STATISTICS_DAYS: Final = 31
STATISTICS_FIELDS: Final = ("day", "role", "procedure_code", "item_code", "outcome", "count")


async def statistics(
    conn: db.Executor, start: dt.date, end: dt.date, time_zone: str
) -> list[dict[str, Any]]:
    """Records per day (``time_zone``) × role × procedure × item × outcome, ``start``..``end``
    inclusive."""
    rows = await conn.fetch(
        """SELECT (requested_at AT TIME ZONE $3)::date AS day, role, procedure_code,
                  item_code, outcome, count(*) AS count
           FROM provision_records
           WHERE requested_at >= $1::date::timestamp AT TIME ZONE $3
             AND requested_at < ($2::date + 1)::timestamp AT TIME ZONE $3
             AND recorded_at >= $1::date::timestamp AT TIME ZONE $3
           GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""",
        start,
        end,
        time_zone,
    )
    return [
        {**{k: r[k] for k in STATISTICS_FIELDS}, "day": r["day"].isoformat(), "count": r["count"]}
        for r in rows
    ]


def parse_period(start: str | None, end: str | None, *, today: dt.date) -> tuple[dt.date, dt.date]:
    try:
        last = dt.date.fromisoformat(end) if end else today
        first = (
            dt.date.fromisoformat(start)
            if start
            else last - dt.timedelta(days=DEFAULT_STATISTICS_DAYS - 1)
        )
    except ValueError:
        raise ValidationError("from and to must be dates YYYY-MM-DD") from None
    if first > last:
        raise ValidationError("from must not be after to")
    if (last - first).days >= MAX_STATISTICS_DAYS:
        raise ValidationError(f"at most {MAX_STATISTICS_DAYS} days at once")
    return first, last


def today_in(time_zone: str) -> dt.date:
    """Today's date in ``time_zone`` (the default end of a statistics period)."""
    return utcnow().astimezone(ZoneInfo(time_zone)).date()
