"""Group commit of the hub's record writes (real hub, gateways, PostgreSQL).

New queries arriving together are opened by one statement and one commit, and
conclusions arriving together are recorded the same way; each query is still
opened once and concluded once, recorded alike by the requester, the hub and the
provider, its hub records chained as one statement per query would chain them.
To know that several queries shared a commit without looking at the clock, the
tests hold the hub's record-chain head (as a commit in progress would) until
queries have piled up behind it, and read the events' ``xmin``: rows written by
one transaction share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from exchange_support import answer_for, assert_recorded_alike, chain_held, until
from replica_support import moved_person
from test_exactly_once import post_signed, provider_answer
from test_review_queue import held_query

from chukan.codecs import catalog
from chukan.codecs.envelope import ProvisionAnswer
from chukan.codecs.sample_items import certification_item
from chukan.simulators.hub import HUB_STATE
from chukan.simulators.hub.group_commit import MAX_GROUP_BYTES, GroupCommit
from chukan.simulators.hub.state import HubState

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE
#: The record fields every party keeps alike for one query.

#: Columns whose values a query's rows share with any other query's rows of the same
#: kind; every other column is compared by whether it is set.
_SAME_VALUE = {
    "hub_record_events": (
        "kind",
        "requester",
        "provider",
        "business_code",
        "procedure_code",
        "item_code",
        "legal_basis",
        "outcome",
        "reason_code",
        "non_disclosure",
    ),
    "routed_messages": ("message_type", "sender", "receiver", "direction"),
    "deliveries": ("kind", "target", "status", "last_error"),
}


@contextlib.asynccontextmanager
async def hub_chain_held(hub: HubState) -> AsyncIterator[asyncpg.Connection]:
    """The hub's record-chain head locked until the block ends: every record insert of the
    hub waits behind it, as behind a slow commit."""
    conn = await asyncpg.connect(hub.config.database_url)
    try:
        async with conn.transaction():
            locked = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM hub_record_chain_head FOR UPDATE) AS h"
            )
            assert locked == 1
            yield conn
    finally:
        await conn.close()


async def _waiting(group: GroupCommit | None, at_least: int) -> bool:
    return group is not None and group.waiting >= at_least


async def _blocked_behind(holder: asyncpg.Connection) -> bool:
    """Whether some statement waits for the lock ``holder`` holds (one in flight)."""
    count = await holder.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    )
    return bool(count)


async def _shape(pool: asyncpg.Pool, table: str, query_id: str) -> list[tuple[Any, ...]]:
    """A query's rows of ``table`` with what makes them alike: shared values, set or not."""
    same = _SAME_VALUE[table]
    rows = await pool.fetch(f"SELECT * FROM {table} WHERE query_id = $1 ORDER BY id", query_id)  # noqa: S608
    return [
        tuple((k, v if k in same else v is None) for k, v in row.items() if k != "attempts")
        for row in rows
    ]


async def _hub_shapes(pool: asyncpg.Pool, query_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {table: await _shape(pool, table, query_id) for table in _SAME_VALUE}


async def _xmins(pool: asyncpg.Pool, kind: str, query_ids: list[str]) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT query_id, xmin::text AS xmin FROM hub_record_events "
        "WHERE kind = $1 AND query_id = ANY($2)",
        kind,
        query_ids,
    )
    return {row["query_id"]: row["xmin"] for row in rows}


async def _chain_breaks(pool: asyncpg.Pool, query_ids: list[str]) -> int:
    """Events of ``query_ids`` not chained to the event before them (hash and link)."""
    broken: int = await pool.fetchval(
        "SELECT count(*) FROM hub_record_events e "
        "LEFT JOIN hub_record_events p ON p.seq = e.seq - 1 "
        "WHERE e.query_id = ANY($1) "
        "AND (COALESCE(p.hash, CASE WHEN e.seq = 1 THEN hub_chain_genesis() END) "
        "IS DISTINCT FROM e.prev_hash "
        "OR e.hash <> sha256(e.prev_hash || hub_event_canonical(e)))",
        query_ids,
    )
    return broken


async def test_queries_arriving_together_open_and_conclude_once_in_shared_commits(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    hub: HubState = network.hub.app[HUB_STATE]
    # One query alone first: the provider's chain has a head to hold, and its records at
    # the hub are what one statement per query writes.
    warm_here, warm_there = await moved_person(rng, chiba, funabashi)
    assert (await chiba.store(warm_here, CODE, certification_item(rng, dt.date.today())))[0] == 201
    status, warm = await funabashi.query(warm_there, PROCEDURE, CODE, catalog.CHIBA_CITY)
    assert status == 202
    assert (await funabashi.result(warm["query_id"]))["status"] == "answered"

    people = [await moved_person(rng, chiba, funabashi) for _ in range(40)]
    items = {}
    for here, there in people:
        items[there] = certification_item(rng, dt.date.today())
        assert (await chiba.store(here, CODE, items[there]))[0] == 201

    provider_held = contextlib.AsyncExitStack()
    hub_held = contextlib.AsyncExitStack()
    try:
        # The provider's answers wait behind its chain: conclusions come only when let go.
        await provider_held.enter_async_context(chain_held(chiba))
        async with hub_chain_held(hub):
            submitting = [
                asyncio.create_task(funabashi.query(there, PROCEDURE, CODE, catalog.CHIBA_CITY))
                for _, there in people
            ]
            # One opening in flight (waiting for the chain), others queued behind it.
            await until(lambda: _waiting(hub.opening, 2), "queries queued together")
        submissions = await asyncio.gather(*submitting)
        assert {status for status, _ in submissions} == {202}
        query_ids = [body["query_id"] for _, body in submissions]
        await until(lambda: _opened(hub.pool, query_ids), "every query opened at the hub")
        # Every query opened; now the conclusions wait behind the hub's chain.
        holder = await hub_held.enter_async_context(hub_chain_held(hub))
        await provider_held.aclose()
        await until(lambda: _waiting(hub.concluding, 2), "conclusions queued together")
        await until(lambda: _blocked_behind(holder), "a conclusion in flight behind the chain")
        await hub_held.aclose()
        results = await asyncio.gather(*(funabashi.result(q, wait=60) for q in query_ids))
    finally:
        await hub_held.aclose()
        await provider_held.aclose()

    for (_, there), query_id, result in zip(people, query_ids, results, strict=True):
        assert (result["query_id"], result["status"]) == (query_id, "answered"), result
        assert result["result"].encode() == items[there]

    # Each opened once and concluded once, recorded alike by the three parties.
    await assert_recorded_alike(chiba, funabashi, hub.pool, query_ids)
    # The hub's rows of each query are those one statement per query writes (the warm
    # query's): the same events, messages and deliveries, alike but for ids and times.
    await until(
        lambda: _all_delivered(hub.pool, [warm["query_id"], *query_ids]), "answers delivered"
    )
    expected = await _hub_shapes(hub.pool, warm["query_id"])
    assert [e["kind"] for e in await _events(hub.pool, warm["query_id"])] == [
        "opened",
        "concluded",
    ]
    for query_id in query_ids:
        assert await _hub_shapes(hub.pool, query_id) == expected, query_id
        # Every delivery carries the request id the query arrived with.
        ids = await hub.pool.fetch(
            "SELECT DISTINCT d.request_id FROM deliveries d JOIN hub_record_events e "
            "ON e.query_id = d.query_id AND e.kind = 'opened' AND e.request_id = d.request_id "
            "WHERE d.query_id = $1",
            query_id,
        )
        assert len(ids) == 1 and ids[0]["request_id"] is not None
    concluded = [e["query_id"] for e in log_capture.named("query_concluded")]
    assert sorted(q for q in concluded if q in query_ids) == sorted(query_ids)
    permits = {r["permit_id"] for r in await _records(hub.pool, query_ids)}
    issued = [e["permit_id"] for e in log_capture.named("permit_issued")]
    assert sorted(p for p in issued if p in permits) == sorted(permits)

    # Some commit carried several openings, and some several conclusions.
    for kind in ("opened", "concluded"):
        xmins = await _xmins(hub.pool, kind, query_ids)
        assert len(xmins) == len(query_ids), kind
        assert len(set(xmins.values())) < len(query_ids), kind
    # The chain is whole across the shared statements.
    assert await _chain_breaks(hub.pool, [warm["query_id"], *query_ids]) == 0


async def _events(pool: asyncpg.Pool, query_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM hub_record_events WHERE query_id = $1 ORDER BY seq", query_id
        )
    )


async def _records(pool: asyncpg.Pool, query_ids: list[str]) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM hub_records WHERE query_id = ANY($1)", query_ids))


async def _opened(pool: asyncpg.Pool, query_ids: list[str]) -> bool:
    opened = await pool.fetchval(
        "SELECT count(*) FROM hub_record_events WHERE query_id = ANY($1) AND kind = 'opened'",
        query_ids,
    )
    return bool(opened == len(query_ids))


async def _all_delivered(pool: asyncpg.Pool, query_ids: list[str]) -> bool:
    pending = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE query_id = ANY($1) AND status <> 'done'",
        query_ids,
    )
    return bool(pending == 0)


async def test_copies_and_contradictions_in_one_window_keep_their_outcomes(
    chiba: Any,
    funabashi: Any,
    network: Any,
    http: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    """A copy of an answer queued beside the first is a repeat; a contradiction is kept."""
    hub: HubState = network.hub.app[HUB_STATE]
    held = [await held_query(chiba, funabashi, rng) for _ in range(3)]
    (first, _), (repeated, item), (contradicted, other_item) = held
    assert item is not None and other_item is not None
    permits = {
        q: await hub.pool.fetchval("SELECT permit_id FROM hub_records WHERE query_id = $1", q)
        for q, _ in held
    }
    signer = chiba.gateway.state.keys.signing
    ssl = network.agency_client_ssl(catalog.CHIBA_CITY)

    async def deliver(message: bytes) -> tuple[int, Any]:
        return await post_signed(http, network.hub.url, message, signer, ssl)

    answer = {q: answer_for(funabashi, q, permits[q], it or b"") for q, it in held}
    refusal = provider_answer(
        ProvisionAnswer(contradicted, permits[contradicted], "refused", "manual_review_refused")
    )
    async with hub_chain_held(hub) as holder:
        in_flight = asyncio.create_task(deliver(answer[first]))
        await until(lambda: _blocked_behind(holder), "the first conclusion in flight")
        # The same answer again (a new envelope: the hub refuses a message id seen before).
        again = answer_for(funabashi, repeated, permits[repeated], item)
        copies = [
            asyncio.create_task(deliver(answer[repeated])),
            asyncio.create_task(deliver(again)),
            asyncio.create_task(deliver(answer[contradicted])),
            asyncio.create_task(deliver(refusal)),
        ]
        await until(lambda: _waiting(hub.concluding, 4), "copies queued together")
    assert await in_flight == (202, {"query_id": first, "routed": True, "duplicate": False})
    replies = sorted([await copies[0], await copies[1]], key=lambda r: str(r[1]))
    assert replies == [
        (202, {"query_id": repeated, "routed": True, "duplicate": False}),
        (202, {"query_id": repeated, "routed": True, "duplicate": True}),
    ]
    # One of the two contradicting conclusions won; the other is kept as evidence.
    outcomes = sorted([await copies[2], await copies[3]], key=lambda r: r[0])
    assert outcomes[0] == (202, {"query_id": contradicted, "routed": True, "duplicate": False})
    assert (outcomes[1][0], outcomes[1][1]["error"]["code"]) == (409, "conclusion_conflict")
    kept = await hub.pool.fetchval(
        "SELECT count(*) FROM hub_conclusion_conflicts WHERE query_id = $1", contradicted
    )
    assert kept == 1
    for query_id, _ in held:
        concluded = await hub.pool.fetchval(
            "SELECT count(*) FROM hub_record_events WHERE query_id = $1 AND kind = 'concluded'",
            query_id,
        )
        answers = await hub.pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE query_id = $1 AND kind = 'answer'", query_id
        )
        assert (concluded, answers) == (1, 1), query_id
    # The first of each query waiting went together, in one commit after the first's.
    xmins = await _xmins(hub.pool, "concluded", [q for q, _ in held])
    assert xmins[repeated] == xmins[contradicted] != xmins[first]
    for query_id, expected in ((first, held[0][1]), (repeated, item)):
        result = await funabashi.result(query_id, wait=60)
        assert result["status"] == "answered" and result["result"].encode() == expected
    assert await _chain_breaks(hub.pool, [q for q, _ in held]) == 0


#: Two statements over a real database: each item's key and divisor; the quotient
#: and the transaction that computed it.
_ONE = "SELECT $1::text AS k, 12 / $2::int AS x, txid_current() AS tx, length($3::bytea) AS b"
_MANY = (
    "SELECT k, 12 / d AS x, txid_current() AS tx, length(body) AS b "
    "FROM unnest($1::text[], $2::int[], $3::bytea[]) WITH ORDINALITY AS t(k, d, body, n) "
    "ORDER BY n"
)


async def test_a_group_shares_one_statement_and_a_failed_one_answers_each_alone(
    network: Any, log_capture: Any
) -> None:
    pool = network.hub.app[HUB_STATE].pool
    group = GroupCommit(pool, one=_ONE, many=_MANY, name="test-group")
    try:
        # Submitted together: one statement for distinct keys, in order; a second item
        # with the same key goes in the next statement.
        rows = await asyncio.gather(
            *(group.fetchrow((k, d, b"")) for k, d in (("a", 1), ("b", 2), ("a", 3), ("c", 4)))
        )
        assert [(r["k"], r["x"]) for r in rows] == [("a", 12), ("b", 6), ("a", 4), ("c", 3)]
        assert rows[0]["tx"] == rows[1]["tx"] == rows[3]["tx"] != rows[2]["tx"]

        # An item with large messages is written alone, the others together.
        large = b"x" * (MAX_GROUP_BYTES + 1)
        rows = await asyncio.gather(
            *(group.fetchrow(p) for p in (("a", 1, b"y"), ("b", 2, large), ("c", 3, b"z")))
        )
        assert [(r["k"], r["b"]) for r in rows] == [("a", 1), ("b", len(large)), ("c", 1)]
        assert rows[0]["tx"] == rows[2]["tx"] != rows[1]["tx"]

        # One item's error fails the shared statement: each then runs alone and gets
        # its own result or its own error.
        results = await asyncio.gather(
            *(group.fetchrow((k, d, b"")) for k, d in (("a", 3), ("b", 0), ("c", 6))),
            return_exceptions=True,
        )
        assert isinstance(results[1], asyncpg.DivisionByZeroError)
        assert [r["x"] for r in (results[0], results[2]) if isinstance(r, asyncpg.Record)] == [
            4,
            2,
        ]
        failed = [
            e for e in log_capture.named("group_commit_failed") if e["statement"] == "test-group"
        ]
        assert [e["size"] for e in failed] == [3]
    finally:
        await group.close()
