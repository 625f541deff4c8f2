"""The other 国保連 flows end to end: real gateways, real 国保連 simulator and hub, PostgreSQL.

給付管理票, 償還払い実績 and 特別徴収依頼 posted by the core system travel in sealed
files like the 異動連絡票 and are reviewed per record; 特別徴収結果 and 給付実績 come
back; 給付実績 become a new 0300 version that another agency's query receives.
Months of 2022 are this file's own (test_kokuhoren.py uses 2023).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from kokuhoren_support import (
    CHIBA_INSURER,
    RETURNS,
    post_changes,
    transmit_month,
    wait_transmission,
)

from chukan.codecs import catalog
from chukan.codecs import item_model as m
from chukan.codecs.items import decode_item, encode_item
from chukan.codecs.sample_items import insured_qualification
from chukan.simulators.devnet.synthetic import (
    FAMILY_NAMES,
    GIVEN_NAMES,
    SyntheticPerson,
    synthetic_person,
)
from chukan.simulators.kokuhoren import KOKUHOREN_STATE

#: Every 被保険者番号 and 基礎年金番号 these tests send: none may appear in a log line.
PERSONAL: set[str] = set()


def insured_number(rng: random.Random) -> str:
    number = f"{rng.randint(1, 9)}{rng.randrange(10**9):09d}"
    PERSONAL.add(number)
    return number


def change(rng: random.Random, day: dt.date, insured: str) -> dict[str, Any]:
    """A 新規 認定 (要介護1) of a recipient, as test_kokuhoren.py sends it."""
    end = dt.date(day.year + 1, day.month, 1) - dt.timedelta(days=1)
    return {
        "change_id": f"F{rng.randrange(10**12):012d}",
        "changed_on": day.isoformat(),
        "change_kind": "1",
        "change_reason": "03",
        "insured_number": insured,
        "name_kana": f"{rng.choice(FAMILY_NAMES)} {rng.choice(GIVEN_NAMES)}",
        "birth_date": "1944-05-06",
        "sex": "2",
        "qualified_on": "2009-05-06",
        "care_level": "21",
        "certification_start": day.isoformat(),
        "certification_end": end.isoformat(),
        "benefit_limit": 16765,
        "limit_start": day.isoformat(),
        "limit_end": end.isoformat(),
        "burden_ratio": "1",
        "special_address": False,
    }


pytestmark = pytest.mark.integration

FLOWS = "/internal/v1/kokuhoren/flows"
#: 項 27 (国民健康保険法による保険給付の支給…に関する事務): 船橋市 may ask 千葉市 for 0300.
BENEFIT_PROCEDURE = "JT00002700000001"


def plan(insured: str, month: str, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "record_id": f"P{insured}{month}{extra.pop('suffix', '')}",
        "target_month": month,
        "certificate_insurer_number": CHIBA_INSURER,
        "support_office": None,
        "creation_kind": "1",
        "created_on": f"{month[:4]}-{month[4:]}-05",
        "insured_number": insured,
        "birth_date": "1944-05-06",
        "sex": "2",
        "care_level": "21",
        "limit_start": month,
        "limit_end": month,
        "limit_units": 16765,
        "plan_maker": "2",
        "lines": [
            {
                "provider_number": "1210000001",
                "provider_kind": "1",
                "service_type": "11",
                "units": 1200,
            },
            {
                "provider_number": "1210000002",
                "provider_kind": "2",
                "service_type": "15",
                "units": 800,
            },
        ],
    }
    record.update(extra)
    return record


async def certified(chiba: Any, rng: random.Random, day: dt.date, count: int) -> list[str]:
    """Recipients registered at 国保連 through a 531 file (要介護1)."""
    people = [insured_number(rng) for _ in range(count)]
    status, body = await post_changes(chiba, *(change(rng, day, insured=p) for p in people))
    assert status == 201, body
    sent = await transmit_month(chiba, f"{day.year}{day.month:02d}")
    assert (await wait_transmission(chiba, sent["transmission_id"]))["intake"]["accepted"] == count
    return people


async def send(chiba: Any, flow: str, month: str, *records: dict[str, Any]) -> dict[str, Any]:
    status, body = await chiba.call(
        "POST", f"{FLOWS}/{flow}/records", json={"records": list(records)}
    )
    assert status == 201, body
    built = await transmit_month(chiba, month, kind=flow)
    done = await wait_transmission(chiba, built["transmission_id"])
    assert done["status"] == "delivered", done
    return done


async def test_benefit_plans_are_sealed_delivered_and_reviewed_per_plan(
    chiba: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    first, second = await certified(chiba, rng, dt.date(2022, 1, 4), 2)
    stranger = insured_number(rng)
    done = await send(
        chiba,
        "benefit_plan",
        "202201",
        plan(first, "202201"),
        plan(second, "202201", care_level="23"),  # the register says 要介護1
        plan(stranger, "202201"),
    )
    assert done["file_name"] == f"10_821{CHIBA_INSURER}202201.csv"
    assert done["data_type"] == "821" and done["record_count"] == 9  # 3 plans × (2 + 99)
    intake = done["intake"]
    assert intake["status"] == "partially_accepted"
    assert (intake["accepted"], intake["rejected"]) == (3, 6)
    codes = {e["record_id"]: e["code"] for e in intake["errors"]}
    assert codes == {
        f"P{second}202201": "care_level_mismatch",
        f"P{stranger}202201": "recipient_unknown",
    }
    status, listed = await chiba.call("GET", f"{FLOWS}/benefit_plan/records?month=202201")
    assert status == 200
    by_id = {r["record_id"]: r for r in listed["records"]}
    assert by_id[f"P{first}202201"]["intake_status"] == "accepted"
    assert by_id[f"P{first}202201"]["records"] == [2, 4]
    assert by_id[f"P{second}202201"]["intake_code"] == "care_level_mismatch"

    # 国保連 decrypted exactly the file the gateway kept, and holds the accepted plan once.
    simulator = network.kokuhoren.app[KOKUHOREN_STATE]
    kept = await chiba.gateway.state.pool.fetchval(
        "SELECT content FROM kokuhoren_transmissions WHERE id = $1", done["transmission_id"]
    )
    received = await simulator.pool.fetchval(
        "SELECT content FROM received_files WHERE insurer_number = $1 "
        "AND file_management_number = $2",
        CHIBA_INSURER,
        done["file_management_number"],
    )
    assert received == kept
    assert b'"8221"' in kept and b'"99"' in kept
    # A second 新規 for the same person and month is refused; a 取消 is accepted.
    again = await send(
        chiba,
        "benefit_plan",
        "202201",
        plan(first, "202201", suffix="b"),
        plan(first, "202201", suffix="c", creation_kind="3"),
    )
    assert [e["code"] for e in again["intake"]["errors"]] == ["duplicate_plan"]
    assert again["intake"]["accepted"] == 3
    # Re-posting the same records changes nothing; other content under an id is refused.
    status, body = await chiba.call(
        "POST", f"{FLOWS}/benefit_plan/records", json={"records": [plan(first, "202201")]}
    )
    assert status == 200 and body["unchanged"] == 1
    status, body = await chiba.call(
        "POST",
        f"{FLOWS}/benefit_plan/records",
        json={"records": [plan(first, "202201", care_level="22")]},
    )
    assert status == 409 and body["error"]["code"] == "change_id_conflict"
    text = log_capture.getvalue()
    assert done["file_management_number"] in text
    assert sorted(value for value in PERSONAL if value in text) == []


async def test_reimbursements_and_special_collection_with_results(
    chiba: Any, network: Any, rng: random.Random
) -> None:
    (person,) = await certified(chiba, rng, dt.date(2022, 2, 3), 1)
    reimbursement = {
        "record_id": f"R{person}",
        "creation_kind": "1",
        "reference_number": f"{rng.randrange(10**10):010d}",
        "service_month": "202202",
        "certificate_insurer_number": CHIBA_INSURER,
        "insured_number": person,
        "provider_number": "1210000003",
        "service_type": "17",
        "units": 1000,
        "benefit_amount": 9000,
        "copayment": 1000,
        "decided_on": "2022-02-20",
    }
    done = await send(chiba, "reimbursement", "202202", reimbursement)
    assert done["file_name"] == f"10_911{CHIBA_INSURER}202202.csv"
    assert done["intake"]["status"] == "accepted" and done["intake"]["accepted"] == 1
    duplicate = await send(
        chiba, "reimbursement", "202202", reimbursement | {"record_id": f"R{person}x"}
    )
    assert [e["code"] for e in duplicate["intake"]["errors"]] == ["duplicate_reference"]

    request = {
        "record_id": f"S{person}",
        "obligor_code": "001",
        "request_kind": "01",
        "pension_number": insured_number(rng),
        "pension_code": "1150",
        "insured_number": person,
        "birth_date": "1944-05-06",
        "sex": "1",
        "name_kana": "ヤマダ タロウ",
        "fiscal_year": 2022,
        "start_month": "202202",
        "amount_1": 5200,
        "amount_2": 5200,
        "amount_3": 5100,
    }
    done = await send(chiba, "special_collection", "202202", request)
    assert done["file_name"] == f"10_951{CHIBA_INSURER}202202.csv"
    assert done["intake"]["status"] == "accepted"

    # 国保連 answered with a 952 file; the ingest ties each result to its request.
    status, started = await chiba.call("POST", RETURNS, json={"month": "202202"})
    assert status == 202
    status, body = await chiba.call("GET", f"{RETURNS}/{started['job_id']}?wait=15")
    assert body["status"] == "done", body
    assert body["job"]["counts"]["files"] == 1
    status, listed = await chiba.call("GET", f"{FLOWS}/special_collection/records?month=202202")
    (record,) = [r for r in listed["records"] if r["record_id"] == f"S{person}"]
    assert record["intake_status"] == "accepted"
    assert record["results"] == [
        {
            "result_kind": "00",
            "result_on": "2022-02-01",
            "amounts": [5200, 5200, 5100],
            "fiscal_year": 2022,
        }
    ]


async def test_invalid_records_are_refused_whole(chiba: Any, rng: random.Random) -> None:
    person = insured_number(rng)
    bad = plan(person, "202203", lines=[], bogus=1)
    status, body = await chiba.call(
        "POST", f"{FLOWS}/benefit_plan/records", json={"records": [bad]}
    )
    assert status == 422 and body["error"]["code"] == "recipient_changes_invalid"
    fields = {e["field"] for e in body["error"]["details"]["errors"]}
    assert {"bogus", "lines"} <= fields
    wrong = plan(person, "202203", support_office="1210000009")  # 自己作成 with an office
    status, body = await chiba.call(
        "POST", f"{FLOWS}/benefit_plan/records", json={"records": [wrong]}
    )
    assert status == 422
    (error,) = body["error"]["details"]["errors"]
    assert error["item"] == "事業所番号（居宅介護支援事業所）"
    status, body = await chiba.call("POST", f"{FLOWS}/nonsense/records", json={"records": [bad]})
    assert status == 422
    status, body = await chiba.call(
        "POST",
        "/internal/v1/kokuhoren/transmissions",
        json={"month": "202203", "kind": "reimbursement"},
    )
    assert status == 409 and body["error"]["code"] == "nothing_to_transmit"


async def registered(
    rng: random.Random, chiba: Any, funabashi: Any
) -> tuple[SyntheticPerson, SyntheticPerson]:
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, here.birth_year
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    return here, there


async def test_benefit_results_become_a_0300_version_that_another_agency_receives(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    (insured,) = await certified(chiba, rng, dt.date(2022, 4, 1), 1)
    in_chiba, in_funabashi = await registered(rng, chiba, funabashi)
    qualification = insured_qualification(rng, dt.date(2022, 4, 1), m.InsuredNumber(insured))

    status, _ = await chiba.store(
        in_chiba.atena_id, catalog.INSURED_QUALIFICATION.code, encode_item(qualification)
    )
    assert status == 201
    async with http.post(
        network.kokuhoren.url + "/admin/v1/returns",
        json={"insurer_number": CHIBA_INSURER, "month": "202204"},
        headers={"Authorization": f"Bearer {network.kokuhoren_config.admin_token}"},
    ) as response:
        assert response.status in (200, 201)
    status, started = await chiba.call("POST", RETURNS, json={"month": "202204"})
    status, body = await chiba.call("GET", f"{RETURNS}/{started['job_id']}?wait=15")
    assert body["status"] == "done", body
    assert body["job"]["counts"]["replica_persons"] >= 1
    (file,) = body["files"]
    mine = [r for r in file["records"] if r["insured_number"] == insured]
    assert len(mine) == 1

    status, history = await chiba.call(
        "GET", f"/internal/v1/persons/{in_chiba.atena_id}/items/{catalog.BENEFIT.code}"
    )
    assert status == 200, history
    versions = history["versions"] if isinstance(history, dict) else history
    assert len(versions) == 1

    # Another ingest of the same month adds no version (applied once).
    status, again = await chiba.call("POST", RETURNS, json={"month": "202204"})
    status, body = await chiba.call("GET", f"{RETURNS}/{again['job_id']}?wait=15")
    assert body["job"]["counts"]["replica_persons"] == 0

    status, submitted = await funabashi.query(
        in_funabashi.atena_id, BENEFIT_PROCEDURE, catalog.BENEFIT.code, catalog.CHIBA_CITY
    )
    assert status == 202, submitted
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "answered", result
    item = decode_item(catalog.BENEFIT.code, result["result"].encode())
    assert isinstance(item, m.Benefit)
    (record,) = item.benefit_records
    assert str(record.service_month) == "2022-04"
    assert record.units == mine[0]["units"]
    assert record.benefit_amount == mine[0]["benefit_amount"]
    assert record.user_burden == mine[0]["copayment"]
