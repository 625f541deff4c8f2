"""The hub's evidence: every message it routed, and the per-query records the operator reads.

``hub_records`` is a view over ``hub_record_events`` (opened, held, concluded);
routing and the delivery worker append the events, this module only reads them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import Header
from chukan.gateway.core import db
from chukan.gateway.core.batching import Batcher
from chukan.simulators.hub import auth
from chukan.simulators.hub.state import HUB_STATE

log = structlog.get_logger("chukan.hub")

#: Parameters of one statement: the query id first.
Params = tuple[object, ...]

#: At most this many queries per statement (bounded parameter arrays).
MAX_GROUP: Final = 128
#: A query whose messages are larger than this is written alone, by ``one``: a shared
#: statement's parameters stay bounded (128 x 64 KiB).
MAX_GROUP_BYTES: Final = 64 * 1024


class GroupCommit:
    """Concurrent writers of the record chain share one statement and one commit.

    Each record insert holds the hub's one chain head lock until its commit's WAL
    flush, so one statement per query commits one at a time.  Here the queries
    waiting while a statement runs go together in the next one (``many``: the
    same writes for arrays of parameters, one row per query, in order); a query
    alone runs ``one``, today's statement, unchanged.  Nothing is answered before
    the commit that holds it.  Two items for one query never share a statement.
    If ``many`` fails (one query's bad value, a deadlock), each of its queries runs
    alone, so each gets the outcome (or the error) it would have got alone.  A query
    with large messages (over :data:`MAX_GROUP_BYTES`) is always written alone.
    """

    def __init__(self, pool: asyncpg.Pool, *, one: str, many: str, name: str) -> None:
        self._pool = pool
        self._one = one
        self._many = many
        self._name = name
        self._batcher: Batcher[Params, asyncpg.Record | Exception] = Batcher(
            self._run, max_batch=MAX_GROUP, name=name, keys=lambda params: (params[0],)
        )

    @property
    def waiting(self) -> int:
        """Items queued for the next statement (one statement may be in flight)."""
        return self._batcher.waiting

    async def fetchrow(self, params: Params) -> asyncpg.Record:
        """``one``'s row for ``params``, once the statement that carried it has committed."""
        if sum(len(p) for p in params if isinstance(p, bytes)) > MAX_GROUP_BYTES:
            return await self._fetch_one(params)
        result = await self._batcher.submit(params)
        if isinstance(result, Exception):
            raise result
        return result

    async def _run(self, batch: Sequence[Params]) -> list[asyncpg.Record | Exception]:
        if len(batch) == 1:
            return [await self._fetch_one(batch[0])]
        try:
            columns = [list(column) for column in zip(*batch, strict=True)]
            rows = await self._pool.fetch(self._many, *columns)
        except asyncpg.PostgresError as exc:
            log.warning(  # the class only: a message may quote the values
                "group_commit_failed",
                statement=self._name,
                size=len(batch),
                error=type(exc).__name__,
            )
            results: list[asyncpg.Record | Exception] = []
            for params in batch:
                try:
                    results.append(await self._fetch_one(params))
                except Exception as one_exc:  # this query's own error, as if alone
                    results.append(one_exc)
            return results
        return list(rows)

    async def _fetch_one(self, params: Params) -> asyncpg.Record:
        row = await self._pool.fetchrow(self._one, *params)
        assert row is not None
        return row

    async def close(self) -> None:
        """Wait for the statements in flight (and those queued behind them)."""
        await self._batcher.close()


#: Keeps routed messages byte for byte; followed by VALUES or a SELECT of those columns.
ROUTED_INSERT: Final = (
    "INSERT INTO routed_messages "
    "(message_id, message_type, sender, receiver, query_id, permit_id, direction, body) "
)


async def log_routed(
    conn: db.Conn,
    *,
    header: Header,
    direction: str,
    body: bytes,
    query_id: str | None,
    permit_id: str | None,
) -> None:
    """Keep a message the hub routed, byte for byte, in the caller's transaction."""
    await conn.execute(
        ROUTED_INSERT + "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        header.message_id,
        header.message_type,
        header.sender,
        header.receiver,
        query_id,
        permit_id,
        direction,
        body,
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in row.items()
    }


async def list_records(request: web.Request) -> web.Response:
    """``GET /admin/v1/records``: every query the hub saw, for the operator."""
    auth.require_admin(request)
    auth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    rows = await state.pool.fetch("SELECT * FROM hub_records ORDER BY requested_at")
    return web.json_response({"records": [_jsonable(dict(r)) for r in rows]})
