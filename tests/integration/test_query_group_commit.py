"""Group commit of answered conclusions at the requester (real hub, gateways, PostgreSQL).

Answers that arrive together are concluded by one statement and one commit; each
query still concludes once, recorded identically by all three parties, its long
polls woken by its notice.  To know that several conclusions shared a commit
without looking at the clock, the test holds the requester's record-chain head
(as a commit in progress would) until answers have piled up behind it, and reads
the records' ``xmin``: rows written by one transaction share it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

import aiohttp
import asyncpg
import pytest
from exchange_support import answer_for, assert_recorded_alike, chain_held, until
from replica_support import moved_person
from test_exactly_once import post_signed
from test_review_queue import held_query

from chukan.codecs import catalog
from chukan.codecs.envelope import (
    HUB,
    Header,
    QueryRefusal,
    encode_message,
    new_message_id,
)
from chukan.codecs.sample_items import certification_item
from chukan.gateway.query.lifecycle import QUERY_CHANNEL
from chukan.gateway.replica.items import INLINE_DECODE_BYTES
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE
#: The record fields every party keeps alike for one query.


def queued_conclusions(api: Any) -> int:
    """Answered conclusions of the requester waiting for a batch (one is in flight)."""
    batcher = api.gateway.state.conclusions
    return 0 if batcher is None else int(batcher.waiting)


async def requester_xmins(api: Any, query_ids: list[str]) -> dict[str, str]:
    rows = await api.gateway.state.pool.fetch(
        "SELECT query_id, xmin::text AS xmin FROM provision_records "
        "WHERE role = 'requester' AND query_id = ANY($1)",
        query_ids,
    )
    return {row["query_id"]: row["xmin"] for row in rows}


async def test_answers_arriving_together_are_concluded_once_in_shared_commits(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    people = [await moved_person(rng, chiba, funabashi) for _ in range(40)]
    items = {}
    for here, there in people:
        items[there] = certification_item(rng, dt.date.today())
        assert (await chiba.store(here, CODE, items[there]))[0] == 201

    heard: list[str] = []
    listener = await asyncpg.connect(funabashi.gateway.state.config.database_url)
    await listener.add_listener(QUERY_CHANNEL, lambda _c, _p, _ch, payload: heard.append(payload))
    try:
        async with chain_held(funabashi):
            submissions = await asyncio.gather(
                *(
                    funabashi.query(there, PROCEDURE, CODE, catalog.CHIBA_CITY)
                    for _, there in people
                )
            )
            assert {status for status, _ in submissions} == {202}
            query_ids = [body["query_id"] for _, body in submissions]
            # Long polls waiting for each conclusion, started before any can conclude.
            polls = [asyncio.create_task(funabashi.result(q, wait=60)) for q in query_ids]
            # One conclusion in flight (waiting for the chain), others queued behind it.
            await until(
                lambda: _true_if(queued_conclusions(funabashi) >= 2), "answers queued together"
            )
            assert not any(poll.done() for poll in polls)
        results = await asyncio.gather(*polls)
        await until(lambda: _true_if(len(set(heard)) >= len(query_ids)), "every notice heard")
    finally:
        await listener.close()

    for (_, there), query_id, result in zip(people, query_ids, results, strict=True):
        assert (result["query_id"], result["status"]) == (query_id, "answered"), result
        assert result["result"].encode() == items[there]
    expected = {f"{catalog.FUNABASHI_CITY} {q}" for q in query_ids}
    assert expected <= set(heard)

    # Each concluded once, and recorded alike by the requester, the hub and the provider.
    hub_pool = network.hub.app[HUB_STATE].pool
    await assert_recorded_alike(chiba, funabashi, hub_pool, query_ids)
    conclusions = [e for e in log_capture.named("query_answered") if e["query_id"] in query_ids]
    assert sorted(e["query_id"] for e in conclusions) == sorted(query_ids)

    # Some commit carried several conclusions: their records share a transaction id.
    xmins = await requester_xmins(funabashi, query_ids)
    assert len(xmins) == len(query_ids)
    assert len(set(xmins.values())) < len(query_ids)
    # The chain is whole across the batches.
    async with funabashi.gateway.state.pool.acquire() as conn:
        broken = await conn.fetchval(
            "SELECT count(*) FROM provision_records r JOIN provision_records p "
            "ON p.tenant = r.tenant AND p.seq = r.seq - 1 "
            "WHERE r.query_id = ANY($1) AND r.prev_hash <> p.hash",
            query_ids,
        )
    assert broken == 0


async def _true_if(value: bool) -> bool:
    return value


async def test_copies_and_contradictions_in_one_window_keep_their_outcomes(
    chiba: Any,
    funabashi: Any,
    network: Any,
    http: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    """A copy of an answer queued beside the first is a repeat; a contradiction is kept."""
    hub_pool = network.hub.app[HUB_STATE].pool
    held = [await held_query(chiba, funabashi, rng) for _ in range(3)]
    (first, _), (repeated, item), (contradicted, other_item) = held
    assert item is not None and other_item is not None
    permits = {
        q: await hub_pool.fetchval("SELECT permit_id FROM hub_records WHERE query_id = $1", q)
        for q, _ in held
    }
    signer = chiba.gateway.state.keys.signing

    async def deliver(message: bytes, signed_by: Any) -> tuple[int, Any]:
        return await post_signed(
            http, funabashi.gateway.url, message, signed_by, network.hub_client_ssl()
        )

    answer = {q: answer_for(funabashi, q, permits[q], it or b"") for q, it in held}
    refusal = encode_message(
        Header(
            new_message_id(), "QueryRefusal", HUB, catalog.FUNABASHI_CITY, dt.datetime.now(dt.UTC)
        ),
        QueryRefusal(contradicted, "provider_unreachable", "late and wrong"),
    )
    # The tenant's own connection, to see which queries a conclusion holds.
    probe = await asyncpg.connect(funabashi.gateway.state.config.database_url)
    try:
        async with chain_held(funabashi):
            in_flight = asyncio.create_task(deliver(answer[first], signer))

            # Its batch has updated (locked) the query and waits for the chain.
            await until(lambda: _locked(probe, first), "the first conclusion in flight")
            copies = [
                asyncio.create_task(deliver(answer[repeated], signer)),
                asyncio.create_task(deliver(answer[repeated], signer)),
                asyncio.create_task(deliver(answer[contradicted], signer)),
            ]
            await until(
                lambda: _true_if(queued_conclusions(funabashi) >= 3), "copies queued together"
            )
            # The hub's refusal of the same query, while its answer waits for a batch.
            refused = asyncio.create_task(deliver(refusal, network.hub.app[HUB_STATE].keys.signing))
            await until(lambda: _locked(probe, contradicted), "the refusal holding its query")
        assert await in_flight == (200, {"query_id": first, "accepted": True})
        replies = sorted((await asyncio.gather(*copies[:2])), key=lambda r: len(r[1]))
        assert replies == [
            (200, {"query_id": repeated, "accepted": True}),
            (200, {"query_id": repeated, "accepted": True, "duplicate": True}),
        ]
        outcomes = [await copies[2], await refused]
    finally:
        await probe.close()

    # One of the two contradicting conclusions won; the other is kept as evidence.
    accepted = [body for _, body in outcomes if body["accepted"]]
    conflicts = [body for _, body in outcomes if not body["accepted"]]
    assert len(accepted) == len(conflicts) == 1
    assert conflicts[0] == {
        "query_id": contradicted,
        "accepted": False,
        "conflict": "outcome_differs",
    }
    kept = await funabashi.gateway.state.pool.fetchval(
        "SELECT count(*) FROM conclusion_conflicts WHERE query_id = $1", contradicted
    )
    assert kept == 1
    for query_id, expected in ((first, held[0][1]), (repeated, item)):
        result = await funabashi.result(query_id)
        assert result["status"] == "answered" and result["result"].encode() == expected
    for query_id, _ in held:
        records = await funabashi.gateway.state.pool.fetchval(
            "SELECT count(*) FROM provision_records WHERE query_id = $1", query_id
        )
        assert records == 1, query_id


async def _locked(probe: asyncpg.Connection, query_id: str) -> bool:
    """Whether a transaction holds ``query_id``'s row (a conclusion in progress)."""
    free = await probe.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM queries WHERE query_id = $1 "
        "FOR UPDATE SKIP LOCKED) AS q",
        query_id,
    )
    return bool(free == 0)


async def test_a_large_answer_is_concluded_alone_beside_a_batch(
    chiba: Any,
    funabashi: Any,
    network: Any,
    http: aiohttp.ClientSession,
    rng: random.Random,
) -> None:
    """An answer over the inline size does not wait for a batch: its own statement runs."""
    hub_pool = network.hub.app[HUB_STATE].pool
    held = [await held_query(chiba, funabashi, rng) for _ in range(2)]
    (small, small_item), (large, large_item) = held
    assert small_item is not None and large_item is not None
    padded = large_item.replace(b"?>", b"?>" + b"\n" * (INLINE_DECODE_BYTES + 1), 1)
    assert len(padded) > INLINE_DECODE_BYTES
    messages = []
    for query_id, item in ((small, small_item), (large, padded)):
        permit_id = await hub_pool.fetchval(
            "SELECT permit_id FROM hub_records WHERE query_id = $1", query_id
        )
        messages.append(answer_for(funabashi, query_id, permit_id, item))
    signer = chiba.gateway.state.keys.signing
    probe = await asyncpg.connect(funabashi.gateway.state.config.database_url)
    try:
        async with chain_held(funabashi):
            replies = [
                asyncio.create_task(
                    post_signed(
                        http, funabashi.gateway.url, message, signer, network.hub_client_ssl()
                    )
                )
                for message in messages
            ]
            # Both hold their query's row, waiting for the chain: the large one is not
            # queued behind the small one's batch.
            await until(lambda: _locked(probe, small), "the small answer's batch in flight")
            await until(lambda: _locked(probe, large), "the large answer concluding alone")
            assert queued_conclusions(funabashi) == 0
        assert [await reply for reply in replies] == [
            (200, {"query_id": small, "accepted": True}),
            (200, {"query_id": large, "accepted": True}),
        ]
    finally:
        await probe.close()
    assert (await funabashi.result(large))["result"].encode() == padded
    xmins = await requester_xmins(funabashi, [small, large])
    assert len(xmins) == 2 and xmins[small] != xmins[large]
