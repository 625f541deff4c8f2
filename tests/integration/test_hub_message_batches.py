"""A gateway's messages to the hub, several per HTTPS exchange under load (real hub,
gateways, PostgreSQL).

The gateway's hub client queues envelopes behind the exchanges in flight and sends
what queued in one ``POST /network/v1/messages/batch``; the hub answers each message
exactly as the single route would.  To know that messages queued without looking at
the clock, the test takes every slot of the requester's limit of exchanges to the hub
(as exchanges in flight to a busy hub would) until envelopes wait behind them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from exchange_support import assert_recorded_alike, new_query, until
from replica_support import moved_person
from test_exactly_once import post_signed

from chukan.codecs import catalog
from chukan.codecs.envelope import ConclusionRequest, new_message_id
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core.pacing import PeerLimit
from chukan.gateway.core.web import signature_header
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE
BATCH_ROUTE = "/network/v1/messages/batch"


@contextlib.asynccontextmanager
async def every_slot_taken(limit: PeerLimit) -> AsyncIterator[None]:
    """Every slot of ``limit`` held until the block ends: the exchanges started meanwhile
    wait for one, and the messages after them queue for the next exchange."""
    async with contextlib.AsyncExitStack() as stack:
        while limit.free() > 0:
            await stack.enter_async_context(limit.slot())
        yield


def hub_exchanges(log_capture: Any, agency: str) -> list[dict[str, Any]]:
    """The hub's access-log events of ``agency``'s message exchanges, alone or batched."""
    return [
        e
        for e in log_capture.named("http_request")
        if e.get("server") == "hub"
        and e.get("route") in ("/network/v1/messages", BATCH_ROUTE)
        and agency in str(e.get("caller"))
    ]


async def post_batch(
    http: Any, url: str, entries: list[tuple[bytes, str | None]], ssl: Any, **extra: Any
) -> tuple[int, Any]:
    """POST a batch of signed envelopes to the hub (the container as JSON)."""
    data = extra.pop(
        "data",
        json.dumps(
            {
                "messages": [
                    {
                        "body": base64.b64encode(body).decode(),
                        "signature": signature,
                        "request_id": None,
                    }
                    for body, signature in entries
                ]
            }
        ),
    )
    async with http.post(
        url + BATCH_ROUTE,
        data=data,
        headers={"Content-Type": extra.pop("content_type", "application/json")},
        ssl=ssl,
    ) as response:
        return response.status, await response.json()


def reply_of(entry: dict[str, Any]) -> tuple[int, Any]:
    """One reply of a batch as (status, JSON body), as a plain POST would read it."""
    return entry["status"], json.loads(base64.b64decode(entry["body"]))


async def test_concurrent_queries_go_to_the_hub_in_batches_each_once(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    people = [await moved_person(rng, chiba, funabashi) for _ in range(60)]
    items = {}
    for here, there in people:
        items[there] = certification_item(rng, dt.date.today())
        assert (await chiba.store(here, CODE, items[there]))[0] == 201
    state = funabashi.gateway.state
    poster = state.hub._poster
    before = len(hub_exchanges(log_capture, catalog.FUNABASHI_CITY))

    async with every_slot_taken(state.hub_limit):
        submissions = await asyncio.gather(
            *(funabashi.query(there, PROCEDURE, CODE, catalog.CHIBA_CITY) for _, there in people)
        )
        assert {status for status, _ in submissions} == {202}
        # The first exchanges wait for a slot; envelopes queue behind them.
        await until(lambda: _true_if(poster.waiting >= 2), "envelopes queued for the hub")
        assert state.hub.room() == 0  # the sweep claims nothing while exchanges wait
    query_ids = [body["query_id"] for _, body in submissions]
    results = await asyncio.gather(*(funabashi.result(q, wait=60) for q in query_ids))

    for (_, there), query_id, result in zip(people, query_ids, results, strict=True):
        assert (result["query_id"], result["status"]) == (query_id, "answered"), result
        assert result["result"].encode() == items[there]
    # Each sent once (one attempt, no retry) and concluded once.
    attempts = await state.pool.fetch(
        "SELECT query_id, attempts FROM queries WHERE query_id = ANY($1)", query_ids
    )
    assert {row["attempts"] for row in attempts} == {1}
    assert len(attempts) == len(query_ids)
    sent = [e["query_id"] for e in log_capture.named("query_sent") if e["query_id"] in query_ids]
    assert sorted(sent) == sorted(query_ids)
    answered = [e for e in log_capture.named("query_answered") if e["query_id"] in query_ids]
    assert sorted(e["query_id"] for e in answered) == sorted(query_ids)

    # Recorded alike by the requester, the hub and the provider.
    hub_pool = network.hub.app[HUB_STATE].pool
    await assert_recorded_alike(chiba, funabashi, hub_pool, query_ids)

    # The 60 envelopes went in fewer exchanges, some of them batches the hub answered whole.
    exchanges = hub_exchanges(log_capture, catalog.FUNABASHI_CITY)[before:]
    batches = [e for e in exchanges if e["route"] == BATCH_ROUTE]
    assert batches and {e["status"] for e in batches} == {200}
    assert len(exchanges) < len(query_ids)


async def test_each_message_of_a_batch_is_answered_as_alone(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    requester = funabashi.gateway.state
    query, other_query = (
        await new_query(chiba, funabashi, rng),
        await new_query(chiba, funabashi, rng),
    )

    def signed(body: Any, state: Any = requester) -> tuple[bytes, str]:
        message: bytes = state.hub.envelope(body)
        return message, signature_header(state.keys.signing, message)

    first = signed(query)
    # 千葉市's own envelope, signed by 千葉市, sent over 船橋市's certificate.
    provider = chiba.gateway.state
    foreign = signed(ConclusionRequest(new_message_id()), provider)
    ssl = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    url = network.hub.url

    async def alone(message: tuple[bytes, str], state: Any = requester) -> tuple[int, Any]:
        answer: tuple[int, Any] = await post_signed(http, url, message[0], state.keys.signing, ssl)
        return answer

    async def together(*messages: tuple[bytes, str]) -> list[tuple[int, Any]]:
        status, batch = await post_batch(http, url, list(messages), ssl)
        assert status == 200, batch
        assert len(batch["replies"]) == len(messages)
        return [reply_of(r) for r in batch["replies"]]

    # A new query: accepted with its permit, as another new query is alone.
    accepted, refused = await together(first, foreign)
    fresh = await alone(signed(other_query))
    assert accepted[0] == fresh[0] == 202
    assert accepted[1]["query_id"] == query.query_id and accepted[1]["permit_id"]
    assert set(accepted[1]) == set(fresh[1])
    # The envelope of another agency: the same refusal alone.
    assert refused == await alone(foreign, provider)
    assert refused[0] == 403 and refused[1]["error"]["code"] == "peer_mismatch"
    # The same query in a new envelope: the same duplicate answer alone and in a batch.
    duplicate = await alone(signed(query))
    assert duplicate[0] == 202 and duplicate[1]["permit_id"] == accepted[1]["permit_id"]
    assert await together(signed(query), foreign) == [duplicate, refused]
    # The first envelope again: a replay, alone and in a batch.
    replayed = await alone(first)
    assert replayed[0] == 409 and replayed[1]["error"]["code"] == "message_replayed"
    assert await together(first, foreign) == [replayed, refused]

    # The query was taken once: one permit, one record at the hub.
    hub_pool = network.hub.app[HUB_STATE].pool
    rows = await hub_pool.fetch(
        "SELECT permit_id FROM hub_records WHERE query_id = $1", query.query_id
    )
    assert [r["permit_id"] for r in rows] == [accepted[1]["permit_id"]]


async def test_a_batch_of_one_message_twice_takes_it_once(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    """Two copies of one envelope in one batch, handled concurrently: one is taken, the
    other is the replay it would be alone."""
    requester = funabashi.gateway.state
    message = requester.hub.envelope(await new_query(chiba, funabashi, rng))
    signed = (message, signature_header(requester.keys.signing, message))
    ssl = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    status, batch = await post_batch(http, network.hub.url, [signed, signed], ssl)
    assert status == 200, batch
    replies = sorted((reply_of(r) for r in batch["replies"]), key=lambda r: r[0])
    assert replies[0][0] == 202 and replies[0][1]["permit_id"]
    assert (replies[1][0], replies[1][1]["error"]["code"]) == (409, "message_replayed")


async def test_a_malformed_batch_is_refused_whole(funabashi: Any, network: Any, http: Any) -> None:
    ssl = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    requester = funabashi.gateway.state
    message = requester.hub.envelope(ConclusionRequest(new_message_id()))
    signed = (message, signature_header(requester.keys.signing, message))
    for data in (
        "not json",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"body": "%%%", "signature": None, "request_id": None}]}),
        json.dumps({"replies": []}),
    ):
        status, body = await post_batch(http, network.hub.url, [signed], ssl, data=data)
        assert (status, body["error"]["code"]) == (400, "message_batch_invalid"), data
    status, body = await post_batch(
        http, network.hub.url, [signed], ssl, content_type="application/xml"
    )
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    # Nothing of the refused batches was taken: the envelope is still new.
    status, body = await post_signed(http, network.hub.url, message, requester.keys.signing, ssl)
    assert (status, body["error"]["code"]) == (404, "query_unknown")  # not a replay


async def _true_if(value: bool) -> bool:
    return value
