"""Exactly once, recorded identically (DESIGN §9), through the servers' own interfaces.

Idempotent submission, one conclusion per query at the hub, a requester that
keeps what contradicts its conclusion, conclusions recovered after the requester
was away, concurrent copies of one query, the operators' "retry now", and
supervised background work.  The fault suite (tests/fault) kills and stalls
separate processes; these tests pin each mechanism down one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import secrets
import socket
import time
from typing import Any

import aiohttp
import pytest
from replica_support import moved_person
from test_review_queue import held_query

from chukan.codecs import catalog
from chukan.codecs.envelope import (
    HUB,
    ConclusionRequest,
    Header,
    ProvisionAnswer,
    QueryRefusal,
    QueryRequest,
    answer_aad,
    encode_message,
    new_message_id,
)
from chukan.codecs.sample_items import certification_item
from chukan.gateway.app import ENROLMENT_PATIENCE
from chukan.gateway.core.errors import EnrolmentRefusedError
from chukan.gateway.core.metrics import metrics_for
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.gateway.serve import start_gateway
from chukan.keys import SigningKeyPair, seal
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE


async def answered_query(chiba: Any, funabashi: Any, rng: random.Random) -> str:
    """A query of 船橋市 answered by 千葉市: its id."""
    here, there = await moved_person(rng, chiba, funabashi)
    assert (await chiba.store(here, CODE, certification_item(rng, dt.date.today())))[0] == 201
    status, submitted = await funabashi.query(there, PROCEDURE, CODE, catalog.CHIBA_CITY)
    assert status == 202, submitted
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "answered", result
    query_id: str = submitted["query_id"]
    return query_id


async def submit(api: Any, atena_id: str, item: str, key: str, **extra: Any) -> tuple[int, Any]:
    """POST a query with an Idempotency-Key, as a core system retrying would."""
    answer: tuple[int, Any] = await api.call(
        "POST",
        "/internal/v1/queries",
        json={
            "atena_id": atena_id,
            "procedure_code": PROCEDURE,
            "item_code": item,
            "provider": catalog.CHIBA_CITY,
            **extra,
        },
        headers={"Idempotency-Key": key},
    )
    return answer


async def post_signed(
    http: Any, url: str, message: bytes, signer: SigningKeyPair, ssl: Any
) -> tuple[int, Any]:
    """POST one signed envelope to a network API, as the hub or an agency would."""
    async with http.post(
        url + "/network/v1/messages",
        data=message,
        headers={
            "Content-Type": "application/xml",
            SIGNATURE_HEADER: signature_header(signer, message),
        },
        ssl=ssl,
    ) as response:
        return response.status, await response.json()


def provider_answer(answer: ProvisionAnswer) -> bytes:
    """千葉市's answer to a query of 船橋市, as the provider's envelope."""
    header = Header(
        new_message_id(),
        "ProvisionAnswer",
        catalog.CHIBA_CITY,
        catalog.FUNABASHI_CITY,
        dt.datetime.now(dt.UTC),
    )
    return encode_message(header, answer)


async def _hub_outcome(network: Any, query_id: str) -> str:
    outcome: str = await network.hub.app[HUB_STATE].pool.fetchval(
        "SELECT outcome FROM hub_records WHERE query_id = $1", query_id
    )
    return outcome


async def test_a_retried_submission_gets_the_first_answer(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    assert (await chiba.store(here, CODE, certification_item(rng, dt.date.today())))[0] == 201
    key = secrets.token_urlsafe(16)
    # Five copies at once (a client retrying on a lost connection): one query.
    answers = await asyncio.gather(*(submit(funabashi, there, CODE, key) for _ in range(5)))
    assert {status for status, _ in answers} == {202}
    query_ids = {body["query_id"] for _, body in answers}
    assert len(query_ids) == 1
    (query_id,) = query_ids
    assert (await funabashi.result(query_id))["status"] == "answered"
    again = await submit(funabashi, there, CODE, key)
    assert again == (202, {"query_id": query_id, "status": "queued"})
    rows = await funabashi.gateway.state.pool.fetchval(
        "SELECT count(*) FROM queries WHERE idempotency_key = $1", key
    )
    assert rows == 1
    # The same key for another request is a conflict, and creates nothing.
    status, body = await submit(funabashi, there, CODE, key, non_disclosure=True)
    assert (status, body["error"]["code"]) == (409, "idempotency_key_reused")
    status, body = await submit(funabashi, there, CODE, "ключ")
    assert (status, body["error"]["code"]) == (422, "validation_failed")


async def test_a_locally_refused_submission_is_refused_again(
    funabashi: Any, chiba: Any, rng: random.Random
) -> None:
    _, there = await moved_person(rng, chiba, funabashi)
    key = secrets.token_urlsafe(16)
    # Not on the list for 船橋市 → 千葉市 with this item.
    item = catalog.INSURED_QUALIFICATION.code
    first = await submit(funabashi, there, item, key)
    second = await submit(funabashi, there, item, key)
    assert first[0] == second[0] == 403
    assert first[1]["error"]["code"] == second[1]["error"]["code"] == "not_authorized"


async def test_the_same_query_sent_twice_at_once_gets_one_permit(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    _, there = await moved_person(rng, chiba, funabashi)
    code = await funabashi.gateway.state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", there
    )
    body = QueryRequest(
        query_id=new_message_id(),
        requester_person_code=code,
        provider=catalog.CHIBA_CITY,
        business_code=catalog.LTC_BUSINESS,
        procedure_code=PROCEDURE,
        item_code=CODE,
    )
    hub = funabashi.gateway.state.hub
    replies = await asyncio.gather(*(hub.send(body) for _ in range(4)))
    assert {r.status for r in replies} == {202}
    assert len({json.loads(r.body)["permit_id"] for r in replies}) == 1


async def test_the_hub_keeps_one_conclusion_and_sets_a_contradiction_apart(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    query_id = await answered_query(chiba, funabashi, rng)
    hub_state = network.hub.app[HUB_STATE]
    permit_id = await hub_state.pool.fetchval(
        "SELECT permit_id FROM hub_records WHERE query_id = $1", query_id
    )
    # 千葉市 (its own key, its own certificate) now claims it refused after all.
    provider = chiba.gateway.state
    message = provider_answer(
        ProvisionAnswer(query_id, permit_id, "refused", "manual_review_refused")
    )
    status, body = await post_signed(
        http,
        network.hub.url,
        message,
        provider.keys.signing,
        network.agency_client_ssl(catalog.CHIBA_CITY),
    )
    assert (status, body["error"]["code"]) == (409, "conclusion_conflict")
    assert await _hub_outcome(network, query_id) == "provided"
    kept = await hub_state.pool.fetchrow(
        "SELECT sender, outcome FROM hub_conclusion_conflicts WHERE query_id = $1", query_id
    )
    assert (kept["sender"], kept["outcome"]) == (catalog.CHIBA_CITY, "refused")
    concluded = await hub_state.pool.fetchval(
        "SELECT count(*) FROM hub_record_events WHERE query_id = $1 AND kind = 'concluded'",
        query_id,
    )
    assert concluded == 1


async def test_the_requester_keeps_a_contradicting_answer_as_evidence(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random, log_capture: Any
) -> None:
    query_id = await answered_query(chiba, funabashi, rng)
    hub_signer = network.hub.app[HUB_STATE].keys.signing
    refusal = QueryRefusal(query_id, "provider_unreachable", "late and wrong")
    header = Header(
        new_message_id(), "QueryRefusal", HUB, catalog.FUNABASHI_CITY, dt.datetime.now(dt.UTC)
    )
    message = encode_message(header, refusal)
    counter = metrics_for(catalog.FUNABASHI_CITY).conclusion_conflicts
    before = counter.values.get(("outcome_differs",), 0.0)
    answer = await post_signed(
        http, funabashi.gateway.url, message, hub_signer, network.hub_client_ssl()
    )
    assert answer == (
        200,
        {"query_id": query_id, "accepted": False, "conflict": "outcome_differs"},
    )
    assert (await funabashi.result(query_id))["status"] == "answered"
    kept = await funabashi.gateway.state.pool.fetchrow(
        "SELECT stored_status, received, sender FROM conclusion_conflicts WHERE query_id = $1",
        query_id,
    )
    assert tuple(kept) == ("answered", "refused", HUB)
    assert counter.values[("outcome_differs",)] == before + 1
    events = [
        e for e in log_capture.named("answer_contradicts_conclusion") if e["query_id"] == query_id
    ]
    assert len(events) == 1
    records = await funabashi.gateway.state.pool.fetchval(
        "SELECT count(*) FROM provision_records WHERE query_id = $1", query_id
    )
    assert records == 1  # nothing applied, nothing recorded twice


async def test_the_hub_answers_a_requester_asking_for_its_conclusion(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id = await answered_query(chiba, funabashi, rng)
    hub = funabashi.gateway.state.hub
    reply = await hub.send(ConclusionRequest(query_id))
    assert reply.status == 200
    assert reply.signature is not None and b"<Outcome>provided</Outcome>" in reply.body
    unknown = await hub.send(ConclusionRequest(new_message_id()))
    assert (unknown.status, unknown.error()[0]) == (404, "query_unknown")
    # Another agency cannot read it.
    other = await chiba.gateway.state.hub.send(ConclusionRequest(query_id))
    assert (other.status, other.error()[0]) == (404, "query_unknown")


async def test_a_conclusion_reached_while_the_requester_was_down_arrives(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    """Held at the provider; the requester goes away; the approval is concluded meanwhile."""
    query_id, item = await held_query(chiba, funabashi, rng)
    async with network.gateway_stopped(catalog.FUNABASHI_CITY):
        status, decided = await chiba.call("POST", f"/internal/v1/review/{query_id}/approve")
        assert status == 200, decided
        for _ in range(200):  # the hub has concluded; its delivery cannot get through
            if await _hub_outcome(network, query_id) == "provided":
                break
            await asyncio.sleep(0.02)
        assert await _hub_outcome(network, query_id) == "provided"
    result = await funabashi.result(query_id, wait=30)
    assert result["status"] == "answered", result
    assert item is not None and result["result"].encode() == item
    outcomes = await funabashi.gateway.state.pool.fetch(
        "SELECT outcome FROM provision_records WHERE query_id = $1", query_id
    )
    assert [r["outcome"] for r in outcomes] == ["provided"]


async def test_operators_make_pending_deliveries_due_now(network: Any, http: Any) -> None:
    url = network.hub.url + "/admin/v1/deliveries/retry"
    token = {"Authorization": f"Bearer {network.hub_config.admin_token}"}
    async with http.post(url, headers=token, ssl=network.hub_operator_ssl()) as response:
        assert response.status == 200
        assert isinstance((await response.json())["rescheduled"], int)
    async with http.post(url, ssl=network.hub_operator_ssl()) as response:
        assert response.status == 401
    ssl = network.agency_client_ssl(catalog.CHIBA_CITY)
    async with http.post(url, headers=token, ssl=ssl) as response:
        assert response.status == 403


async def test_a_failed_background_task_is_logged_once_and_counted(
    chiba: Any, log_capture: Any
) -> None:
    state = chiba.gateway.state
    marker = secrets.token_hex(4)

    async def broken() -> None:
        raise RuntimeError(marker)

    counter = metrics_for(state.config.agency_code).task_failures
    before = counter.values.get(("probe",), 0.0)
    state.spawn(broken(), name=f"probe-{marker}")
    for _ in range(100):
        if counter.values.get(("probe",), 0.0) > before:
            break
        await asyncio.sleep(0.01)
    assert counter.values[("probe",)] == before + 1
    events = [
        e for e in log_capture.named("background_task_failed") if marker in e.get("exception", "")
    ]
    assert len(events) == 1 and events[0]["task"] == "probe"


async def test_an_answer_its_items_schema_refuses_is_not_handed_over(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    """Sealed correctly by the provider, but not a valid item: concluded refused, with why."""
    query_id, _ = await held_query(chiba, funabashi, rng)
    permit_id = await network.hub.app[HUB_STATE].pool.fetchval(
        "SELECT permit_id FROM hub_records WHERE query_id = $1", query_id
    )
    requester_key = funabashi.gateway.state.keys.encryption.public
    aad = answer_aad(query_id, permit_id, catalog.CHIBA_CITY, catalog.FUNABASHI_CITY)
    bogus = b'<?xml version="1.0" encoding="UTF-8"?><NotAnItem>1</NotAnItem>'
    message = provider_answer(
        ProvisionAnswer(query_id, permit_id, "provided", None, seal(requester_key, bogus, aad))
    )
    status, body = await post_signed(
        http,
        funabashi.gateway.url,
        message,
        chiba.gateway.state.keys.signing,
        network.hub_client_ssl(),
    )
    assert status == 200, body
    result = await funabashi.result(query_id)
    assert (result["status"], result["result"]) == ("refused", None)
    assert result["reason_code"] == "xml_structure"  # not the root element of its item


async def test_a_conclusion_delivered_long_after_is_still_taken(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    """The hub retries a conclusion for as long as the requester was away: never stale."""
    query_id, _ = await held_query(chiba, funabashi, rng)
    hub_signer = network.hub.app[HUB_STATE].keys.signing
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    refusal = QueryRefusal(query_id, "provider_unreachable", "the provider did not answer")
    header = Header(new_message_id(), "QueryRefusal", HUB, catalog.FUNABASHI_CITY, long_ago)
    message = encode_message(header, refusal)
    for _ in range(2):  # and again, as a retried delivery
        status, body = await post_signed(
            http, funabashi.gateway.url, message, hub_signer, network.hub_client_ssl()
        )
        assert (status, body["accepted"]) == (200, True)
    result = await funabashi.result(query_id)
    assert (result["status"], result["reason_code"]) == ("refused", "provider_unreachable")
    records = await funabashi.gateway.state.pool.fetchval(
        "SELECT count(*) FROM provision_records WHERE query_id = $1", query_id
    )
    assert records == 1


#: An agency only the enrolment tests start (its gateway is stopped again at their end).
URAYASU = "122271"


async def test_a_gateway_starting_while_the_hub_is_away_enrols_when_it_answers(
    network: Any,
) -> None:
    """Restarted while the hub cannot be reached (it comes up later): it waits, then starts."""
    first = await network.add_gateway(URAYASU, "浦安市")
    await first.server.stop()
    network.gateways.pop(URAYASU)
    hub_host, hub_port = network.hub.url.removeprefix("https://").rsplit(":", 1)
    with socket.socket() as probe:  # a port where nothing listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late_hub = f"https://127.0.0.1:{port}"

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(hub_host, int(hub_port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    starting = asyncio.create_task(
        start_gateway(dataclasses.replace(first.config, hub_url=late_hub))
    )
    await asyncio.sleep(1.0)  # the outage of the hub: the gateway is trying meanwhile
    assert not starting.done()
    proxy = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        server = await asyncio.wait_for(starting, timeout=30)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(server.url + "/health", ssl=network.anonymous_ssl()) as response,
            ):
                assert response.status == 200
        finally:
            await server.stop()
    finally:
        proxy.close()
        await proxy.wait_closed()


async def test_a_gateway_the_hub_refuses_does_not_start(network: Any) -> None:
    first = await network.add_gateway(URAYASU, "浦安市")
    await first.server.stop()
    network.gateways.pop(URAYASU)
    refused = dataclasses.replace(first.config, enrolment_token="not-the-admin-token")
    started = time.monotonic()
    with pytest.raises(EnrolmentRefusedError):
        await start_gateway(refused)
    assert time.monotonic() - started < ENROLMENT_PATIENCE  # at once: no retry helps
