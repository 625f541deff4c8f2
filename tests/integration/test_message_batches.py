"""The hub's deliveries go several per HTTPS exchange under load, each as it would alone.

While the exchanges to an agency are all taken, the hub's deliveries to it queue in
its poster, and the next exchange carries them together (``POST
/network/v1/messages/batch``).  Nothing about a query depends on that: each is
answered once, recorded identically by requester, hub and provider.  A batch posted
straight to a gateway's network face is answered message by message exactly as the
single route answers each message: a provision request, a copy of it, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
from typing import Any

import pytest
from test_exactly_once import post_signed
from test_permit_refusals import HubImpostor
from test_review_queue import held_query

from chukan.codecs import catalog
from chukan.codecs.envelope import HUB, Header, QueryRefusal, encode_message, new_message_id
from chukan.codecs.message_batch import (
    BatchMessage,
    BatchReply,
    decode_replies,
    encode_batch,
)
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE, worker

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
QUERIES = 60
BATCH_ROUTE = "/network/v1/messages/batch"
#: What requester, hub and provider each record of a query, to be the same.
_COLUMNS = "query_id, permit_id, outcome, requester, provider, procedure_code, item_code"


async def _person_with_item(
    rng: random.Random, chiba: Any, funabashi: Any, gate: asyncio.Semaphore
) -> tuple[str, bytes]:
    """One person in both cities, with an item at 千葉市: (船橋市's 宛名番号, the item)."""
    async with gate:
        here = synthetic_person(rng, "5")
        there = SyntheticPerson(
            synthetic_person(rng, "6").atena_id, here.individual_number, "", 1950
        )
        assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
        assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
        item = certification_item(rng, dt.date.today())
        assert (await chiba.store(here.atena_id, CODE, item))[0] == 201
        return there.atena_id, item


async def _submit(funabashi: Any, atena_id: str) -> str:
    status, submitted = await funabashi.query(
        atena_id, catalog.LTC_CERTIFICATION_PROCEDURE, CODE, catalog.CHIBA_CITY
    )
    assert status == 202, submitted
    query_id: str = submitted["query_id"]
    return query_id


async def _until(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_concurrent_queries_go_in_batches_and_are_answered_once(
    network: Any, chiba: Any, funabashi: Any, rng: random.Random, log_capture: Any
) -> None:
    gate = asyncio.Semaphore(8)
    people = await asyncio.gather(
        *(_person_with_item(rng, chiba, funabashi, gate) for _ in range(QUERIES))
    )
    hub = network.hub.app[HUB_STATE]
    peer = worker._peer(hub, catalog.CHIBA_CITY)
    offset = len(log_capture.events())
    # Every exchange to 千葉市 is taken for a moment (as by slow exchanges in flight):
    # its deliveries queue, and the next exchanges carry them together.
    async with contextlib.AsyncExitStack() as taken:
        for _ in range(int(peer.limit.limit)):
            await taken.enter_async_context(peer.limit.slot())
        query_ids = await asyncio.gather(*(_submit(funabashi, there) for there, _ in people))
        await _until(
            lambda: peer.poster is not None and peer.poster.waiting >= 2,
            "deliveries queued for 千葉市",
        )
    results = await asyncio.gather(*(funabashi.result(q, wait=60) for q in query_ids))
    for (_, item), result in zip(people, results, strict=True):
        assert result["status"] == "answered", result
        assert result["result"].encode() == item

    # The deliveries to 千葉市 went in fewer exchanges than there were deliveries.
    to_chiba = [
        e
        for e in log_capture.events()[offset:]
        if e.get("event") == "http_request"
        and e.get("server") == f"gateway:{catalog.CHIBA_CITY}"
        and e.get("route") in ("/network/v1/messages", BATCH_ROUTE)
    ]
    batches = [e for e in to_chiba if e["route"] == BATCH_ROUTE]
    assert batches, "no delivery went in a batch"
    assert all(e["status"] == 200 for e in batches)
    assert len(to_chiba) < QUERIES

    # Each query answered once, recorded identically by requester, hub and provider.
    requester = await funabashi.gateway.state.pool.fetch(
        f"SELECT {_COLUMNS} FROM provision_records WHERE role = 'requester' "  # noqa: S608
        "AND query_id = ANY($1::text[])",
        query_ids,
    )
    provider = await chiba.gateway.state.pool.fetch(
        f"SELECT {_COLUMNS} FROM provision_records WHERE role = 'provider' "  # noqa: S608
        "AND query_id = ANY($1::text[])",
        query_ids,
    )
    at_hub = await hub.pool.fetch(
        f"SELECT {_COLUMNS} FROM hub_records WHERE query_id = ANY($1::text[])",  # noqa: S608
        query_ids,
    )

    def by_query(rows: list[Any]) -> dict[str, tuple[Any, ...]]:
        assert len(rows) == QUERIES  # one record per query, never two
        return {r["query_id"]: tuple(r) for r in rows}

    assert by_query(requester) == by_query(provider) == by_query(at_hub)
    assert {r["outcome"] for r in at_hub} == {"provided"}
    concluded = await hub.pool.fetch(
        "SELECT query_id, count(*) AS n FROM hub_record_events WHERE kind = 'concluded' "
        "AND query_id = ANY($1::text[]) GROUP BY query_id",
        query_ids,
    )
    assert sorted(r["query_id"] for r in concluded) == sorted(query_ids)
    assert {r["n"] for r in concluded} == {1}
    deliveries = await hub.pool.fetch(
        "SELECT kind, status, count(*) AS n FROM deliveries WHERE query_id = ANY($1::text[]) "
        "GROUP BY kind, status",
        query_ids,
    )
    assert {(r["kind"], r["status"], r["n"]) for r in deliveries} <= {
        ("provision_request", "done", QUERIES),
        ("answer", "done", QUERIES),
    }


# -- a batch posted straight to a gateway's network face ---------------------------------------


async def _post_batch(
    http: Any, url: str, messages: list[BatchMessage], ssl: Any
) -> list[BatchReply]:
    async with http.post(
        url + BATCH_ROUTE,
        data=encode_batch(messages),
        headers={"Content-Type": "application/json"},
        ssl=ssl,
    ) as response:
        assert response.status == 200, await response.text()
        return decode_replies(await response.read(), len(messages))


async def _post_alone(http: Any, url: str, message: BatchMessage, ssl: Any) -> BatchReply:
    headers = {"Content-Type": "application/xml"}
    if message.signature is not None:
        headers[SIGNATURE_HEADER] = message.signature
    async with http.post(
        url + "/network/v1/messages", data=message.body, headers=headers, ssl=ssl
    ) as response:
        return BatchReply(
            response.status,
            await response.read(),
            response.content_type,
            response.headers.get(SIGNATURE_HEADER),
        )


def _code(reply: BatchReply) -> str:
    code: str = json.loads(reply.body)["error"]["code"]
    return code


async def test_a_batch_is_answered_message_by_message_as_alone(
    network: Any, http: Any, chiba: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "4")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(person.atena_id, CODE, item))[0] == 201
    person_code = await chiba.gateway.state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", person.atena_id
    )
    hub = HubImpostor(network, http, chiba, person_code)
    body = hub.request_body()
    raw = hub.message(body)
    request = BatchMessage(raw, signature_header(hub.hub_signer, raw), "batch-test-1")
    garbage_bytes = b"<NotAnEnvelope/>"
    garbage = BatchMessage(garbage_bytes, signature_header(hub.hub_signer, garbage_bytes))
    url, ssl = chiba.gateway.url, network.hub_client_ssl()

    first, copy, refused = await _post_batch(http, url, [request, request, garbage], ssl)

    # The request answered with the provider's signed answer; its copy with the same
    # stored answer, byte for byte; what the single route answers for it now, too.
    assert first.status == 200, first
    assert b"<Outcome>provided</Outcome>" in first.body
    assert first.signature is not None
    assert (copy.status, copy.body, copy.signature) == (200, first.body, first.signature)
    alone = await _post_alone(http, url, request, ssl)
    assert (alone.status, alone.body, alone.signature) == (200, first.body, first.signature)
    assert alone.content_type == first.content_type
    records = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM provision_records WHERE query_id = $1", body.query_id
    )
    assert records == 1
    # The garbage refused with the code and status the single route gives it.
    garbage_alone = await _post_alone(http, url, garbage, ssl)
    assert refused.status == garbage_alone.status >= 400
    assert _code(refused) == _code(garbage_alone)
    assert refused.signature is None


async def test_a_refusal_in_a_batch_concludes_the_query_as_alone(
    network: Any, http: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    """The hub's refusal of a held query, twice in one batch, then alone: one conclusion,
    acknowledged the same way each time."""
    query_id, _ = await held_query(chiba, funabashi, rng)
    signer = network.hub.app[HUB_STATE].keys.signing
    refusal = QueryRefusal(query_id, "provider_unreachable", "the provider did not answer")
    header = Header(
        new_message_id(), "QueryRefusal", HUB, catalog.FUNABASHI_CITY, dt.datetime.now(dt.UTC)
    )
    raw = encode_message(header, refusal)
    message = BatchMessage(raw, signature_header(signer, raw))
    url, ssl = funabashi.gateway.url, network.hub_client_ssl()
    replies = await _post_batch(http, url, [message, message], ssl)
    status, alone = await post_signed(http, url, raw, signer, ssl)
    assert status == 200
    answers = [json.loads(r.body) for r in replies]
    assert [r.status for r in replies] == [200, 200], answers
    # One copy concludes the query, the other is acknowledged as the copy it is; a
    # third, alone, is acknowledged as the second was.
    assert alone == {"query_id": query_id, "accepted": True, "duplicate": True}
    assert sorted(answers, key=len) == [{"query_id": query_id, "accepted": True}, alone]
    result = await funabashi.result(query_id)
    assert (result["status"], result["reason_code"]) == ("refused", "provider_unreachable")
    records = await funabashi.gateway.state.pool.fetchval(
        "SELECT count(*) FROM provision_records WHERE query_id = $1", query_id
    )
    assert records == 1


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b'{"messages": "many"}', 400, "message_batch_invalid"),
        ("application/json", b"not json", 400, "message_batch_invalid"),
        ("application/json", b'{"messages": [{"body": "%%%"}]}', 400, "message_batch_invalid"),
        ("application/json", b'{"messages": []}', 400, "message_batch_invalid"),
        ("application/xml", b"<a/>", 415, "unsupported_media_type"),
    ],
)
async def test_a_malformed_batch_is_refused_whole(
    network: Any, http: Any, chiba: Any, content_type: str, body: bytes, status: int, code: str
) -> None:
    async with http.post(
        chiba.gateway.url + BATCH_ROUTE,
        data=body,
        headers={"Content-Type": content_type},
        ssl=network.hub_client_ssl(),
    ) as response:
        answer = await response.json()
    assert (response.status, answer["error"]["code"]) == (status, code)


async def test_only_the_hub_posts_batches(network: Any, http: Any, chiba: Any) -> None:
    async with http.post(
        chiba.gateway.url + BATCH_ROUTE,
        data=b'{"messages": []}',
        headers={"Content-Type": "application/json"},
        ssl=network.agency_client_ssl(catalog.FUNABASHI_CITY),
    ) as response:
        assert response.status == 403
