"""Group commit of the hub's record writes: concurrent queries share one statement.

Apart from :mod:`records` (which reads the hub's state) so that the state can hold
its group commits without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg
import structlog

from chukan.gateway.core.batching import Batcher

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
