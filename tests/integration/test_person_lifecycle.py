"""Person lifecycle through the 団体内統合宛名システム and erasure, end to end: a real hub,
two real gateways, real PostgreSQL (docs/persons.md).

千葉市's 宛名システム registers people and reports 転出, 死亡, merge and unregistration;
船橋市 then queries and gets the defined outcome, recorded alike by requester, hub and
provider.  A purge erases an unregistered person's data and superseded versions, keeps
the records, and erases nothing more the second time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
from typing import Any

import pytest
from records_support import admin_url

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli import persons as persons_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.records.verify import verify_chain
from chukan.simulators.devnet.network import ATENA_SYSTEM, OPERATOR_SYSTEM
from chukan.simulators.devnet.synthetic import synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE


async def _people(rng: random.Random, atena: Any, funabashi: Any) -> tuple[str, str]:
    """One person registered by 千葉市's 宛名システム and by 船橋市: (千葉 id, 船橋 id)."""
    here = synthetic_person(rng, "5")
    there = synthetic_person(rng, "6").atena_id
    assert (await atena.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there, here.individual_number))[0] == 201
    return here.atena_id, there


async def _event(atena: Any, atena_id: str, event: str, **extra: Any) -> tuple[int, Any]:
    answer: tuple[int, Any] = await atena.call(
        "POST", f"/internal/v1/persons/{atena_id}/events", json={"event": event, **extra}
    )
    return answer


async def _ask(funabashi: Any, atena_id: str) -> tuple[str, dict[str, Any]]:
    status, submitted = await funabashi.query(atena_id, PROCEDURE, CODE, catalog.CHIBA_CITY)
    assert status == 202, submitted
    return submitted["query_id"], await funabashi.result(submitted["query_id"])


async def _records(network: Any, chiba: Any, funabashi: Any, query_id: str) -> dict[str, Any]:
    """(outcome, reason, permit) of the query as each party recorded it (None: no record)."""
    sql = "SELECT outcome, reason_code, permit_id FROM provision_records WHERE query_id = $1"
    found: dict[str, Any] = {}
    for name, pool in (
        ("requester", funabashi.gateway.state.pool),
        ("provider", chiba.gateway.state.pool),
    ):
        row = await pool.fetchrow(sql + " ORDER BY seq DESC LIMIT 1", query_id)
        found[name] = None if row is None else tuple(row)
    hub = await network.hub.app[HUB_STATE].pool.fetchrow(
        "SELECT outcome, reason_code, permit_id FROM hub_records WHERE query_id = $1", query_id
    )
    found["hub"] = None if hub is None else tuple(hub)
    return found


@pytest.fixture
def atena(api: Any) -> Any:
    """千葉市's 団体内統合宛名システム (its own certificate and grants)."""
    return api(catalog.CHIBA_CITY, system=ATENA_SYSTEM)


@pytest.mark.parametrize("event", ["moved_out", "deceased"])
async def test_moved_out_or_deceased_person_is_still_provided_with_the_state_visible(
    event: str, atena: Any, chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    in_chiba, in_funabashi = await _people(rng, atena, funabashi)
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba, CODE, item))[0] == 201
    status, outcome = await _event(atena, in_chiba, event, date="2026-03-31")
    assert status == 201 and outcome["state"] == event and outcome["hub_notified"] is None
    # The same report again changes nothing (a retrying core system).
    again = await _event(atena, in_chiba, event, date="2026-03-31")
    assert again[0] == 200 and again[1]["repeated"] and again[1]["event_id"] == outcome["event_id"]
    status, view = await atena.call("GET", f"/internal/v1/persons/{in_chiba}")
    assert status == 200 and view["state"] == event and view["state_date"] == "2026-03-31"
    assert [e["event"] for e in view["events"]] == ["registered", event]
    assert view["events"][1]["actor"] == ATENA_SYSTEM and view["events"][1]["request_id"]

    query_id, result = await _ask(funabashi, in_funabashi)
    assert result["status"] == "answered" and result["result"].encode() == item
    records = await _records(network, chiba, funabashi, query_id)
    assert records["requester"] == records["provider"] == records["hub"]
    assert records["hub"][:2] == ("provided", None)


async def _held(chiba: Any, funabashi: Any, atena_id: str) -> str:
    """A query of 船橋市 held for review at 千葉市 (自動応答不可): its query id."""
    status, submitted = await funabashi.query(atena_id, PROCEDURE, CODE, catalog.CHIBA_CITY)
    assert status == 202, submitted
    query_id: str = submitted["query_id"]
    for _ in range(500):
        status, review = await chiba.call("GET", f"/internal/v1/review/{query_id}")
        if status == 200:
            assert review["status"] == "pending", review
            return query_id
        assert review["error"]["code"] == "review_unknown", review
        await asyncio.sleep(0.02)
    raise AssertionError("the provision was never held")


async def test_unregistered_person_is_refused_by_the_hub_and_by_the_provider(
    atena: Any, chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    in_chiba, in_funabashi = await _people(rng, atena, funabashi)
    assert (await chiba.store(in_chiba, CODE, certification_item(rng, dt.date.today())))[0] == 201
    # Routed while the person was still registered: held at 千葉市 for review.
    status, flagged = await chiba.call(
        "PUT",
        f"/internal/v1/persons/{in_chiba}/items/{CODE}/manual-review",
        json={"manual_review": True},
    )
    assert status == 200, flagged
    held = await _held(chiba, funabashi, in_funabashi)

    status, outcome = await _event(atena, in_chiba, "unregistered")
    assert status == 201 and outcome["hub_notified"] is True
    # A moved-out event cannot follow an unregistration.
    assert (await _event(atena, in_chiba, "moved_out"))[1]["error"]["code"] == (
        "person_state_conflict"
    )

    # The hub no longer routes to the 符号: a refusal with its code, requester and hub agree.
    query_id, result = await _ask(funabashi, in_funabashi)
    assert result["status"] == "refused" and result["reason_code"] == "person_unregistered"
    records = await _records(network, chiba, funabashi, query_id)
    assert records["provider"] is None  # never reached the provider
    assert records["requester"][:2] == records["hub"][:2] == ("refused", "person_unregistered")

    # The query the hub routed before it knew: approved by staff after the unregistration,
    # the provider refuses by itself with a signed answer, recorded alike by all three.
    status, decided = await chiba.call("POST", f"/internal/v1/review/{held}/approve")
    assert status == 200, decided
    assert (decided["status"], decided["outcome"], decided["reason_code"]) == (
        "approved",
        "refused",
        "person_unregistered",
    )
    result = await funabashi.result(held)
    assert result["status"] == "refused" and result["reason_code"] == "person_unregistered"
    assert result["result"] is None
    records = await _records(network, chiba, funabashi, held)
    assert records["requester"] == records["provider"] == records["hub"]
    assert records["hub"][:2] == ("refused", "person_unregistered") and records["hub"][2]


async def test_merge_keeps_history_and_provides_the_survivors_items(
    atena: Any, chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    retired, in_funabashi = await _people(rng, atena, funabashi)
    survivor = synthetic_person(rng, "5")
    assert (await atena.register(survivor.atena_id, survivor.individual_number))[0] == 201
    old = certification_item(rng, dt.date.today())
    new = certification_item(rng, dt.date.today())
    assert (await chiba.store(retired, CODE, old))[0] == 201
    assert (await chiba.store(survivor.atena_id, CODE, new))[0] == 201

    status, outcome = await _event(atena, retired, "merged", into=survivor.atena_id)
    assert status == 201 and outcome["merged_into"] == survivor.atena_id
    assert outcome["hub_notified"] is True
    # Nothing merges into a retired 宛名番号, nor into itself.
    assert (await _event(atena, survivor.atena_id, "merged", into=retired))[0] == 409
    assert (await _event(atena, retired, "merged", into=retired))[0] == 422

    # 船橋市 knows the person by the retired 宛名番号's identity: the survivor's item comes.
    query_id, result = await _ask(funabashi, in_funabashi)
    assert result["status"] == "answered" and result["result"].encode() == new
    records = await _records(network, chiba, funabashi, query_id)
    assert records["requester"] == records["provider"] == records["hub"]
    provider_atena = await chiba.gateway.state.pool.fetchval(
        "SELECT atena_id FROM provision_records WHERE query_id = $1", query_id
    )
    assert provider_atena == survivor.atena_id
    # The retired 宛名番号's versions keep their history.
    status, history = await chiba.call("GET", f"/internal/v1/persons/{retired}/items/{CODE}")
    assert status == 200 and [v["version"] for v in history["versions"]] == [1]
    status, view = await atena.call("GET", f"/internal/v1/persons/{retired}")
    assert view["state"] == "merged" and view["merged_into"] == survivor.atena_id


async def test_only_the_lifecycle_grant_reports_events_and_only_operators_purge(
    atena: Any, chiba: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "5")
    assert (await atena.register(person.atena_id, person.individual_number))[0] == 201
    status, body = await _event(chiba, person.atena_id, "deceased")  # 介護保険システム
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await chiba.call("GET", f"/internal/v1/persons/{person.atena_id}"))[0] == 403
    assert (await chiba.call("POST", "/internal/v1/persons/purge", json={}))[0] == 403
    assert (await atena.call("POST", "/internal/v1/persons/purge", json={}))[0] == 403
    refused = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM access_refusals WHERE operation = 'persons.lifecycle'"
    )
    assert refused >= 1


async def _purge_cli(chiba: Any, *argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="chukan")
    persons_cli.add_parser(
        parser.add_subparsers(dest="command", required=True), database_default=GATEWAY_DATABASE
    )
    args = parser.parse_args(
        ["persons", "purge", "--tenant", catalog.CHIBA_CITY, "--actor", "test", *argv]
    )
    out = io.StringIO()
    assert await persons_cli.run_async(args, admin_url(chiba), out) == 0
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


async def test_unregistration_then_purge_erases_items_and_mapping_and_keeps_records(
    atena: Any, chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    in_chiba, in_funabashi = await _people(rng, atena, funabashi)
    assert (await chiba.store(in_chiba, CODE, certification_item(rng, dt.date.today())))[0] == 201
    query_id, result = await _ask(funabashi, in_funabashi)  # a record naming the person
    assert result["status"] == "answered"
    assert (await _event(atena, in_chiba, "unregistered"))[0] == 201
    pool = chiba.gateway.state.pool

    # Limited to this person: the other tests' people of the shared tenant stay as they are.
    report = await _purge_cli(chiba, "--atena-id", in_chiba)
    assert report["scope"] == [in_chiba] and report["persons"] == [in_chiba]
    assert report["counts"]["person_versions"] == 1
    person = await pool.fetchrow(
        "SELECT person_code, state FROM persons WHERE atena_id = $1", in_chiba
    )
    assert person["person_code"] is None and person["state"] == "purged"
    assert (
        await pool.fetchval("SELECT count(*) FROM replica_items WHERE atena_id = $1", in_chiba) == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM person_notices WHERE atena_id = $1", in_chiba)
        == 0
    )
    job = await pool.fetchrow("SELECT status, counts FROM jobs WHERE id = $1", report["job_id"])
    assert job["status"] == "done"
    # The records remain, name the 宛名番号, and the chain still verifies.
    assert (
        await pool.fetchval("SELECT atena_id FROM provision_records WHERE query_id = $1", query_id)
        == in_chiba
    )
    conn = await admin_cli.tenant_connection(admin_url(chiba), catalog.CHIBA_CITY)
    try:
        verified = await verify_chain(conn, catalog.CHIBA_CITY, None)
    finally:
        await conn.close()
    assert verified.ok, verified.issues
    events = [
        e["event"]
        for e in (await atena.call("GET", f"/internal/v1/persons/{in_chiba}"))[1]["events"]
    ]
    assert events == ["registered", "unregistered", "purged"]

    # Idempotent: a second purge erases nothing more.
    second = await _purge_cli(chiba, "--atena-id", in_chiba)
    assert second["persons"] == []
    assert second["counts"]["persons"] == 0 and second["counts"]["person_versions"] == 0


async def _superseded_twice(atena: Any, chiba: Any, rng: random.Random) -> str:
    """A person whose item was taken over in 2021 and corrected the same day: 3 versions."""
    person = synthetic_person(rng, "5")
    assert (await atena.register(person.atena_id, person.individual_number))[0] == 201
    for valid_from in ("2020-04-01", "2021-04-01", "2021-04-01"):
        status, _ = await chiba.call(
            "PUT",
            f"/internal/v1/persons/{person.atena_id}/items/{CODE}",
            data=certification_item(rng, dt.date.fromisoformat(valid_from)),
            params={"valid_from": valid_from},
            headers={"Content-Type": "application/xml"},
        )
        assert status == 201
    return person.atena_id


async def _versions(chiba: Any, atena_id: str) -> tuple[list[int], Any]:
    status, history = await chiba.call("GET", f"/internal/v1/persons/{atena_id}/items/{CODE}")
    assert status == 200, history
    return [v["version"] for v in history["versions"]], history["in_force"]


async def test_purge_erases_superseded_versions_only(
    atena: Any, api: Any, chiba: Any, rng: random.Random
) -> None:
    person = await _superseded_twice(atena, chiba, rng)
    bystander = await _superseded_twice(atena, chiba, rng)
    operator = api(catalog.CHIBA_CITY, system=OPERATOR_SYSTEM)

    async def purge(**body: Any) -> tuple[int, Any]:
        answer: tuple[int, Any] = await operator.call(
            "POST", "/internal/v1/persons/purge", json=body
        )
        return answer

    # Limited to one person (the shared tenant's other data stays); a scope names someone.
    for scope in ([], "1", ["x"]):
        status, body = await purge(atena_ids=scope)
        assert (status, body["error"]["code"]) == (422, "validation_failed"), body
    # Versions taken over within the configured age stay.
    status, kept = await purge(superseded_age_days=36500, atena_ids=[person])
    assert status == 200 and kept["counts"]["superseded_versions"] == 0
    status, report = await purge(superseded_age_days=0, atena_ids=[person])
    assert status == 200 and report["scope"] == [person]
    assert report["superseded_versions_by_item"] == {CODE: 2}
    # Version 1 (taken over in 2021) and version 2 (corrected the same day) are gone; the
    # version in force stays and still answers.
    versions, in_force = await _versions(chiba, person)
    assert versions == [3]
    assert in_force["records"] == [{"record_key": "1", "version": 3}]
    # Someone outside the scope keeps every version.
    assert (await _versions(chiba, bystander))[0] == [1, 2, 3]
    logged = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM operation_log WHERE operation = 'person.purge' AND target = $1",
        f"job:{report['job_id']}",
    )
    assert logged == 1


async def test_registration_by_resident_code_gives_the_same_person(
    atena: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    """J-LIS's 住民票コード step: a 処理通番 instead of a 取得番号, the same person."""
    person = synthetic_person(rng, "5")
    resident_code = "".join(rng.choice("0123456789") for _ in range(11))
    status, body = await atena.call(
        "POST",
        "/internal/v1/persons",
        json={"atena_id": person.atena_id, "resident_code": resident_code},
    )
    assert status == 404 and body["error"]["code"] == "resident_code_unknown"
    status, _ = await atena.call(
        "POST",
        "/internal/v1/persons",
        json={
            "atena_id": person.atena_id,
            "resident_code": resident_code,
            "individual_number": person.individual_number,
        },
    )
    assert status == 201
    there = synthetic_person(rng, "6").atena_id
    assert (await funabashi.register(there, person.individual_number))[0] == 201
    hub_pool = network.hub.app[HUB_STATE].pool
    people = await hub_pool.fetchval(
        "SELECT count(DISTINCT person_id) FROM person_codes WHERE person_code = ANY($1::text[])",
        [
            await atena.gateway.state.pool.fetchval(
                "SELECT person_code FROM persons WHERE atena_id = $1", person.atena_id
            ),
            await funabashi.gateway.state.pool.fetchval(
                "SELECT person_code FROM persons WHERE atena_id = $1", there
            ),
        ],
    )
    assert people == 1
