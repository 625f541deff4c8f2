"""The query/provision path end to end: real hub, two real gateways, real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import ssl
from typing import Any

import asyncpg
import pytest
from replica_support import flag

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item, local_tax_item
from chukan.gateway.core.config import OP_SUBMIT_QUERY
from chukan.gateway.core.identities import system_identity
from chukan.gateway.query.lifecycle import QUERY_CHANNEL
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.synthetic import (
    SyntheticPerson,
    synthetic_individual_number,
    synthetic_person,
)
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


async def moved_person(
    rng: random.Random, source: Any, target: Any
) -> tuple[SyntheticPerson, SyntheticPerson]:
    """One synthetic person registered in two cities under different 宛名番号."""
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, here.birth_year
    )
    assert (await source.register(here.atena_id, here.individual_number))[0] == 201
    assert (await target.register(there.atena_id, there.individual_number))[0] == 201
    return here, there


async def test_round_trip_funabashi_asks_chiba(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    item = certification_item(rng, dt.date.today())
    status, stored = await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item)
    assert status == 201 and stored["version"] == 1

    status, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert status == 202 and submitted["status"] == "queued"
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "answered"
    assert result["result"].encode() == item
    assert result["permit_id"]

    # Both sides and the hub recorded the same query and permit.
    query_id, permit_id = submitted["query_id"], result["permit_id"]
    requester = await funabashi.gateway.state.pool.fetchrow(
        "SELECT * FROM provision_records WHERE query_id = $1", query_id
    )
    provider = await chiba.gateway.state.pool.fetchrow(
        "SELECT * FROM provision_records WHERE query_id = $1", query_id
    )
    hub = await network.hub.app[HUB_STATE].pool.fetchrow(
        "SELECT * FROM hub_records WHERE query_id = $1", query_id
    )
    for record in (requester, provider):
        assert record["permit_id"] == permit_id
        assert record["outcome"] == "provided"
        assert record["requester"] == catalog.FUNABASHI_CITY
        assert record["provider"] == catalog.CHIBA_CITY
        assert record["procedure_code"] == catalog.LTC_CERTIFICATION_PROCEDURE
        assert record["item_code"] == catalog.CERTIFICATION.code
        assert record["legal_basis"] == 132
        assert record["requested_at"] <= record["provided_at"]
    assert requester["role"] == "requester" and requester["atena_id"] == in_funabashi.atena_id
    assert provider["role"] == "provider" and provider["atena_id"] == in_chiba.atena_id
    assert hub["permit_id"] == permit_id and hub["outcome"] == "provided"
    # The hub knows each side only by its own 符号, and they differ.
    assert hub["requester_person_code"] != hub["provider_person_code"]


async def post_query(
    api: Any, body: dict[str, Any], prefer: str, tls: ssl.SSLContext | None = None
) -> tuple[int, str | None, dict[str, Any]]:
    """A submission with a ``Prefer`` header: status, ``Preference-Applied`` and body."""
    context = tls or api.gateway.client_ssl(api.system)
    headers = {"Prefer": prefer}
    extra: dict[str, Any] = {"ssl": context} if context is not None else {}
    if context is None:
        headers["Authorization"] = f"Bearer {api.gateway.token}"
    async with api.session.post(
        api.url + "/internal/v1/queries", json=body, headers=headers, **extra
    ) as response:
        return response.status, response.headers.get("Preference-Applied"), await response.json()


async def test_prefer_wait_answers_the_submission_with_the_result(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    """``Prefer: wait=N`` (RFC 7240): one request instead of a submission and a long poll.
    The answer is the result as the long poll gives it (200), and the operation log shows
    that the submission also read it; an unreadable preference, a wait that ends before
    the conclusion, or a caller that may not read results get the usual 202."""
    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    body = {
        "atena_id": in_funabashi.atena_id,
        "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
        "item_code": catalog.CERTIFICATION.code,
        "provider": catalog.CHIBA_CITY,
    }

    status, applied, answered = await post_query(funabashi, body, "respond-async, wait=20")
    assert (status, applied) == (200, "wait=20")
    assert answered["status"] == "answered" and answered["result"].encode() == item
    query_id = answered["query_id"]
    assert await funabashi.result(query_id, wait=0) == answered
    pool = funabashi.gateway.state.pool
    logged = await pool.fetchrow(
        "SELECT status, detail FROM operation_log WHERE operation = 'query.submit' AND target = $1",
        query_id,
    )
    assert logged["status"] == 200 and json.loads(logged["detail"]) == {"also": "query.read"}
    assert await pool.fetchval(
        "SELECT collected_at IS NOT NULL FROM queries WHERE query_id = $1", query_id
    )

    # A wait that ends first (the item is flagged 自動応答不可: the provision is held for
    # review): 202 as without the preference; the result comes as usual once approved.
    await flag(chiba, in_chiba.atena_id, catalog.CERTIFICATION.code, True)
    status, applied, queued = await post_query(funabashi, body, "wait=1")
    assert (status, applied, queued["status"]) == (202, "wait=1", "queued")
    held = queued["query_id"]
    for _ in range(500):
        if (await chiba.call("GET", f"/internal/v1/review/{held}"))[0] == 200:
            break
        await asyncio.sleep(0.02)
    assert (await chiba.call("POST", f"/internal/v1/review/{held}/approve"))[0] == 200
    assert (await funabashi.result(held))["result"].encode() == item
    await flag(chiba, in_chiba.atena_id, catalog.CERTIFICATION.code, False)

    # A preference the gateway cannot read is ignored, never refused.
    for unreadable in ("wait=soon", "wait=-1", "wait=1e3", "wait=１０", "wait=9999999"):
        status, applied, queued = await post_query(funabashi, body, unreadable)
        assert (status, applied, queued["status"]) == (202, None, "queued"), unreadable

    # A certificate that may submit but not read: answered as without the preference, and
    # nothing is refused (the preference is an extra, not a second operation asked for).
    refusals = await pool.fetchval("SELECT count(*) FROM access_refusals")
    narrow = network.pki.client_context(
        system_identity(catalog.FUNABASHI_CITY, CORE_SYSTEM, {OP_SUBMIT_QUERY})
    )
    status, applied, queued = await post_query(funabashi, body, "wait=20", tls=narrow)
    assert (status, applied, queued["status"]) == (202, None, "queued")
    assert await pool.fetchval("SELECT count(*) FROM access_refusals") == refusals


async def test_round_trip_chiba_asks_funabashi_for_premium_basis(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    in_funabashi, in_chiba = await moved_person(rng, funabashi, chiba)
    item = local_tax_item(rng, dt.date.today())
    assert (await funabashi.store(in_funabashi.atena_id, catalog.LOCAL_TAX_INCOME.code, item))[
        0
    ] == 201
    status, submitted = await chiba.query(
        in_chiba.atena_id,
        catalog.LTC_PREMIUM_PROCEDURE,
        catalog.LOCAL_TAX_INCOME.code,
        catalog.FUNABASHI_CITY,
    )
    assert status == 202
    result = await chiba.result(submitted["query_id"])
    assert result["status"] == "answered"
    assert result["result"].encode() == item
    record = await chiba.gateway.state.pool.fetchrow(
        "SELECT legal_basis, outcome FROM provision_records WHERE query_id = $1",
        submitted["query_id"],
    )
    assert record["legal_basis"] == 131 and record["outcome"] == "provided"


async def test_latest_replica_version_is_provided(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    first = certification_item(rng, dt.date(2025, 4, 1))
    second = certification_item(rng, dt.date(2026, 4, 1))
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, first))[1][
        "version"
    ] == 1
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, second))[1][
        "version"
    ] == 2
    _, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    result = await funabashi.result(submitted["query_id"])
    assert result["result"].encode() == second


async def test_query_not_on_the_list_is_refused_at_the_requester(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    in_chiba, _ = await moved_person(rng, chiba, funabashi)
    hub = network.hub.app[HUB_STATE]
    before = await hub.pool.fetchval("SELECT count(*) FROM routed_messages")
    status, body = await chiba.query(
        in_chiba.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.BENEFIT.code,  # 千葉市 has no query row for 給付 from 船橋市
        catalog.FUNABASHI_CITY,
    )
    assert status == 403
    assert body["error"]["code"] == "not_authorized"
    # Nothing was sent to the hub; the refusal is recorded on the requester's side.
    assert await hub.pool.fetchval("SELECT count(*) FROM routed_messages") == before
    record = await chiba.gateway.state.pool.fetchrow(
        "SELECT outcome, reason_code FROM provision_records WHERE role = 'requester' "
        "AND atena_id = $1",
        in_chiba.atena_id,
    )
    assert record["outcome"] == "refused" and record["reason_code"] == "not_authorized"
    assert log_capture.named("query_refused_locally")


async def test_query_not_on_the_list_is_refused_at_the_hub_if_forced_through(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    """A gateway that skipped its own check (or a forged request) meets the hub's check."""
    from chukan.codecs.envelope import QueryRequest

    in_chiba, _ = await moved_person(rng, chiba, funabashi)
    state = chiba.gateway.state
    person_code = await state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", in_chiba.atena_id
    )
    reply = await state.hub.send(
        QueryRequest(
            query_id="forced-" + synthetic_individual_number(rng),
            requester_person_code=person_code,
            provider=catalog.FUNABASHI_CITY,
            business_code=catalog.LTC_BUSINESS,
            procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
            item_code=catalog.BENEFIT.code,
        )
    )
    assert reply.status == 403
    assert reply.error()[0] == "not_authorized"
    hub = network.hub.app[HUB_STATE]
    record = await hub.pool.fetchrow(
        "SELECT outcome, reason_code, permit_id FROM hub_records WHERE requester_person_code = $1",
        person_code,
    )
    assert record["outcome"] == "refused" and record["reason_code"] == "not_authorized"
    assert record["permit_id"] is None


async def test_unknown_atena_id_is_a_clear_error(chiba: Any) -> None:
    status, body = await chiba.query(
        "999999999999999",
        catalog.LTC_PREMIUM_PROCEDURE,
        catalog.LOCAL_TAX_INCOME.code,
        catalog.FUNABASHI_CITY,
    )
    assert status == 404 and body["error"]["code"] == "person_unknown"
    status, body = await chiba.store("999999999999999", catalog.CERTIFICATION.code, b"<a/>")
    assert status == 404 and body["error"]["code"] == "person_unknown"


async def test_missing_item_is_answered_with_a_reason(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    _, in_funabashi = await moved_person(rng, chiba, funabashi)
    _, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "refused"
    assert result["reason_code"] == "item_not_found"
    assert result["result"] is None


async def test_person_unknown_to_the_provider_is_refused_by_the_hub(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    only_here = synthetic_person(rng, "7")
    assert (await funabashi.register(only_here.atena_id, only_here.individual_number))[0] == 201
    _, submitted = await funabashi.query(
        only_here.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "refused"
    assert result["reason_code"] == "person_not_registered_at_provider"


async def test_registration_is_idempotent_and_conflicts_are_refused(
    chiba: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "8")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    status, body = await chiba.register(person.atena_id, person.individual_number)
    assert status == 200 and body["status"] == "already_registered"
    other = synthetic_person(rng, "8")
    status, body = await chiba.register(person.atena_id, other.individual_number)
    assert status == 409 and body["error"]["code"] == "person_conflict"
    status, body = await chiba.register(other.atena_id, person.individual_number)
    assert status == 409 and body["error"]["code"] == "person_conflict"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"atena_id": "1", "individual_number": "123456789010"}, "individual_number_invalid"),
        ({"atena_id": "1", "individual_number": 123456789018}, "individual_number_invalid"),
        ({"atena_id": "abc", "individual_number": "123456789018"}, "validation_failed"),
        ({"individual_number": "123456789018"}, "validation_failed"),
    ],
)
async def test_bad_registration_input(chiba: Any, payload: dict[str, Any], code: str) -> None:
    status, body = await chiba.call("POST", "/internal/v1/persons", json=payload)
    assert status == 422
    assert body["error"]["code"] == code
    assert "123456789018" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (
            {
                "atena_id": "1",
                "procedure_code": "X",
                "item_code": "TM00000000010201",
                "provider": "121002",
            },
            422,
            "validation_failed",
        ),
        (
            {
                "atena_id": "1",
                "procedure_code": "JT00013200000001",
                "item_code": "TM1",
                "provider": "121002",
            },
            422,
            "validation_failed",
        ),
        (
            {
                "atena_id": "1",
                "procedure_code": "JT00013200000001",
                "item_code": "TM00000000010201",
                "provider": "x",
            },
            422,
            "validation_failed",
        ),
        (
            {
                "atena_id": "1",
                "procedure_code": "JT00013200000001",
                "item_code": "TM00000000010201",
                "provider": "121002",
                "reference_date": "2026-13-01",
            },
            422,
            "validation_failed",
        ),
    ],
)
async def test_bad_query_input(chiba: Any, payload: dict[str, Any], status: int, code: str) -> None:
    got, body = await chiba.call("POST", "/internal/v1/queries", json=payload)
    assert (got, body["error"]["code"]) == (status, code)


async def test_malformed_json_and_media_types(chiba: Any) -> None:
    status, body = await chiba.call(
        "POST",
        "/internal/v1/persons",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await chiba.call(
        "POST", "/internal/v1/persons", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"


async def test_unknown_query_id(chiba: Any) -> None:
    status, body = await chiba.call("GET", "/internal/v1/queries/AAAAAAAAAAAAAAAAAAAAAA")
    assert status == 404 and body["error"]["code"] == "query_unknown"


async def test_callers_must_authenticate_and_hold_the_grant(network: Any, http: Any) -> None:
    """No token → 401, a token without the operation → 403; both recorded with the caller."""
    from chukan.gateway.core.config import OP_READ_RECORDS, SystemCredential, token_digest

    reporting_token = "reporting-system-token-for-tests"
    gateway = network.gateways.get("122033") or await network.add_gateway(
        "122033",
        "市川市",
        systems=(
            SystemCredential(
                "reporting", token_digest(reporting_token), frozenset({OP_READ_RECORDS})
            ),
        ),
    )
    url = gateway.url + "/internal/v1/persons"
    payload = {"atena_id": "1", "individual_number": "123456789018"}
    async with http.post(url, json=payload) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    async with http.post(url, json=payload, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    async with http.post(
        url, json=payload, headers={"Authorization": f"Bearer {reporting_token}"}
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    async with http.get(
        gateway.url + "/internal/v1/records", headers={"Authorization": f"Bearer {reporting_token}"}
    ) as response:
        assert response.status == 200
    rows = await gateway.state.pool.fetch(
        "SELECT caller, operation, status, code, count FROM access_refusals ORDER BY id"
    )
    # Counted one row a minute per caller, address, operation and code: expand the counts.
    assert [(r["caller"], r["status"]) for r in rows for _ in range(r["count"])] == [
        (None, 401),
        (None, 401),
        ("reporting", 403),
    ]
    assert all(r["operation"] == "persons.register" for r in rows)


async def test_non_disclosure_travels_to_every_record(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    """不開示 set by the requester is recorded by the requester, the hub and the provider."""
    from chukan.gateway.records import disclosure as records

    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    status, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
        non_disclosure=True,
    )
    assert status == 202
    assert (await funabashi.result(submitted["query_id"]))["status"] == "answered"
    query_id = submitted["query_id"]
    for api in (funabashi, chiba):
        flags = await api.gateway.state.pool.fetch(
            "SELECT non_disclosure FROM provision_records WHERE query_id = $1", query_id
        )
        assert [r["non_disclosure"] for r in flags] == [True]
    hub = network.hub.app[HUB_STATE]
    assert await hub.pool.fetchval(
        "SELECT non_disclosure FROM hub_records WHERE query_id = $1", query_id
    )
    # A disclosure to the person leaves the record out on the provider's side too.
    async with chiba.gateway.state.pool.acquire() as conn:
        for_person = await records.disclose(
            conn, catalog.CHIBA_CITY, in_chiba.atena_id, include_non_disclosed=False
        )
        for_auditor = await records.disclose(
            conn, catalog.CHIBA_CITY, in_chiba.atena_id, include_non_disclosed=True
        )
    assert query_id not in [r["query_id"] for r in for_person]
    assert query_id in [r["query_id"] for r in for_auditor]


async def test_a_conclusion_is_announced_to_every_process_of_the_agency(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    """Long polls in other worker processes hear of a conclusion at its commit (NOTIFY)."""
    in_chiba, in_funabashi = await moved_person(rng, chiba, funabashi)
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    heard: asyncio.Queue[str] = asyncio.Queue()

    def hear(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
        heard.put_nowait(str(payload))

    # A connection of its own, as another worker process's listener has.
    listener = await asyncpg.connect(funabashi.gateway.state.config.database_url)
    try:
        await listener.add_listener(QUERY_CHANNEL, hear)
        status, submitted = await funabashi.query(
            in_funabashi.atena_id,
            catalog.LTC_CERTIFICATION_PROCEDURE,
            catalog.CERTIFICATION.code,
            catalog.CHIBA_CITY,
        )
        assert status == 202
        notice = await asyncio.wait_for(heard.get(), 30)
    finally:
        await listener.close()
    assert notice == f"{catalog.FUNABASHI_CITY} {submitted['query_id']}"
    assert (await funabashi.result(submitted["query_id"]))["status"] == "answered"
