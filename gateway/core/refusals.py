"""Refusals counted, not piled up: one row per caller, peer, operation and code a minute,
and 429 ``rate_limited`` for a peer refused too often.

Every refused call (no or a bad certificate or token, a missing grant, no staff
session, a failed staff login) used to write a row of its own, so 300 bad requests
wrote 300 rows.  Now :func:`record_refusal` adds one to the minute's row of its
(caller, peer, operation, status, code) in ``access_refusals`` — one upserting
statement, the same cost as the insert it replaces — and an auditor still sees who
was refused, how often (``count``) and when (``refused_at`` … ``last_at``).  The
counter lives in the database, so every process of an agency shares it.

A peer (the remote address) refused ``[ops] refusals_per_minute`` times (default 60)
within the current minute gets 429 ``rate_limited`` with ``Retry-After`` (the seconds
left of the minute) for every further refusal, counted under that code.  Staff logins check the same
counter per source before the password's scrypt work (:func:`check_peer`).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError, RateLimitedError

_RECORD_SQL: Final = """
WITH prior AS (
    SELECT coalesce(sum(count), 0) AS n FROM access_refusals
    WHERE remote_key = coalesce($5::text, '') AND window_start = date_trunc('minute', now())
)
INSERT INTO access_refusals (caller, operation, status, code, remote, window_start, last_at)
SELECT $1, $2,
       CASE WHEN prior.n >= $6 THEN 429 ELSE $3 END,
       CASE WHEN prior.n >= $6 THEN 'rate_limited' ELSE $4 END,
       $5, date_trunc('minute', now()), now()
FROM prior
ON CONFLICT (tenant, window_start, caller_key, remote_key, operation, status, code)
    WHERE window_start IS NOT NULL
    DO UPDATE SET count = access_refusals.count + 1, last_at = now()
RETURNING status, extract(epoch FROM window_start + interval '1 minute' - now())::float8
    AS left_s
"""


def _limited(left_s: float) -> RateLimitedError:
    return RateLimitedError(
        f"too many refused requests from this address; try again in {max(1, round(left_s))} s",
        retry_after=max(1, int(left_s + 0.999)),
    )


async def record_refusal(
    conn: db.Executor,
    *,
    caller: str | None,
    operation: str,
    remote: str | None,
    exc: GatewayError,
    limit: int,
) -> GatewayError:
    """Count the refusal of ``exc``; the error to answer with (``exc``, or 429 past
    ``limit``, the agency's ``[ops] refusals_per_minute``)."""
    row = await conn.fetchrow(_RECORD_SQL, caller, operation, exc.status, exc.code, remote, limit)
    assert row is not None
    if row["status"] == 429:
        return _limited(row["left_s"])
    return exc


async def check_peer(
    conn: db.Executor,
    *,
    caller: str | None,
    operation: str,
    remote: str | None,
    exc: GatewayError,
    limit: int,
) -> None:
    """Before costly work (a password check): if ``remote`` was refused ``limit`` times
    this minute, count this attempt and answer 429 at once."""
    over = await conn.fetchval(
        """SELECT coalesce(sum(count), 0) >= $2 FROM access_refusals
           WHERE remote_key = coalesce($1::text, '')
             AND window_start = date_trunc('minute', now())""",
        remote,
        limit,
    )
    if over:
        raise await record_refusal(
            conn, caller=caller, operation=operation, remote=remote, exc=exc, limit=limit
        )


#: Set on a request whose refusal :func:`record_refusal` counted: the operation log
#: leaves it out (a flood is counted here, not written row by row there).
REFUSAL_COUNTED: Final = web.RequestKey("refusal_counted", bool)
