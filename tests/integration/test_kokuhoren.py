"""国保連 伝送 end to end: gateway → real 国保連 simulator on loopback, real PostgreSQL.

Each test uses months of its own (processing months in 2023) and transmits every
change it posts, so the pending queue is empty between tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from kokuhoren_support import (
    CHANGES,
    CHIBA_INSURER,
    RETURNS,
    TRANSMISSIONS,
    post_changes,
    transmit_month,
    wait_transmission,
)

from chukan.codecs.kokuhoren import decode_file, encode_file
from chukan.gateway.core.config import OP_READ_RECORDS, SystemCredential, Timing, token_digest
from chukan.gateway.kokuhoren.errors import MailboxRefusedError
from chukan.gateway.kokuhoren.routes import KOKUHOREN_CLIENT
from chukan.simulators.devnet.synthetic import FAMILY_NAMES, GIVEN_NAMES
from chukan.simulators.kokuhoren import KOKUHOREN_STATE

pytestmark = pytest.mark.integration


#: Every 被保険者番号 and name the tests send: none may ever appear in a log line.
PERSONAL: set[str] = set()


def insured_number(rng: random.Random) -> str:
    number = f"{rng.randint(1, 9)}{rng.randrange(10**9):09d}"
    PERSONAL.add(number)
    return number


def change(
    rng: random.Random,
    day: dt.date,
    *,
    insured: str | None = None,
    change_kind: str = "1",
    reason: str = "03",
    care_level: str | None = "21",
    **extra: Any,
) -> dict[str, Any]:
    """A valid 異動 (新規 認定, 要介護1 by default) of a synthetic recipient."""
    kana = f"{rng.choice(FAMILY_NAMES)} {rng.choice(GIVEN_NAMES)}"
    PERSONAL.add(kana)
    end = dt.date(day.year + 1, day.month, 1) - dt.timedelta(days=1)
    certified = care_level not in (None, "01")
    record: dict[str, Any] = {
        "change_id": f"T{rng.randrange(10**12):012d}",
        "changed_on": day.isoformat(),
        "change_kind": change_kind,
        "change_reason": reason,
        "insured_number": insured or insured_number(rng),
        "name_kana": kana,
        "birth_date": "1944-05-06",
        "sex": rng.choice(["1", "2"]),
        "qualified_on": "2009-05-06",
        "care_level": care_level,
        "certification_start": day.isoformat() if certified else None,
        "certification_end": end.isoformat() if certified else None,
        "benefit_limit": 16765 if certified else None,
        "limit_start": day.isoformat() if certified else None,
        "limit_end": end.isoformat() if certified else None,
        "burden_ratio": "1",
        "special_address": False,
    }
    record.update(extra)
    return record


@pytest.fixture
async def mailbox_up(network: Any) -> AsyncIterator[None]:
    """Whatever a test does to the simulator, it runs again afterwards."""
    yield
    if network.kokuhoren is None:
        await network.start_kokuhoren()


async def test_clean_file_is_accepted(
    chiba: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    first, second = insured_number(rng), insured_number(rng)
    status, stored = await post_changes(
        chiba,
        change(rng, dt.date(2023, 1, 5), insured=first),
        change(rng, dt.date(2023, 1, 9), insured=second, reason="01", care_level=None),
        # A 区分変更 of the first recipient later in the month: same file, after the 新規.
        change(
            rng, dt.date(2023, 1, 20), insured=first, change_kind="2", reason="05", care_level="23"
        ),
    )
    assert status == 201, stored
    assert stored["stored"] == 3 and stored["unchanged"] == 0
    assert {c["month"] for c in stored["changes"]} == {"202301"}

    built = await transmit_month(chiba, "202301")
    assert built["file_name"] == f"10_531{CHIBA_INSURER}202301.csv"
    assert built["record_count"] == 3 and built["refused"] == []
    assert len(built["file_management_number"]) == 10
    assert built["status"] == "queued"

    done = await wait_transmission(chiba, built["transmission_id"])
    assert done["status"] == "delivered"
    intake = done["intake"]
    assert intake["status"] == "accepted"
    assert (intake["record_count"], intake["accepted"], intake["rejected"]) == (3, 3, 0)
    assert intake["errors"] == [] and intake["duplicate"] is False
    assert done["job"]["status"] == "done"
    assert done["job"]["counts"] == {"records": 3, "accepted": 3, "rejected": 0}

    # The gateway kept exactly the bytes 国保連 decrypted, and 国保連 registered both.
    simulator = network.kokuhoren.app[KOKUHOREN_STATE]
    received = await simulator.pool.fetchrow(
        "SELECT content, digest, status FROM received_files "
        "WHERE insurer_number = $1 AND file_management_number = $2",
        CHIBA_INSURER,
        built["file_management_number"],
    )
    sent = await chiba.gateway.state.pool.fetchval(
        "SELECT content FROM kokuhoren_transmissions WHERE id = $1", built["transmission_id"]
    )
    assert received["content"] == sent and received["digest"] == built["digest"]
    assert len(decode_file(sent).records) == 3
    register = {
        r["insured_number"]: r
        for r in await simulator.pool.fetch(
            "SELECT * FROM recipients WHERE insurer_number = $1 AND insured_number = ANY($2)",
            CHIBA_INSURER,
            [first, second],
        )
    }
    assert register[first]["care_level"] == "23" and register[first]["active"]
    assert register[second]["care_level"] is None
    statuses = await chiba.gateway.state.pool.fetch(
        "SELECT status, intake_status FROM kokuhoren_recipient_changes WHERE transmission_id = $1",
        built["transmission_id"],
    )
    assert {(r["status"], r["intake_status"]) for r in statuses} == {("included", "accepted")}
    received_events = [
        e
        for e in log_capture.named("kokuhoren_file_received")
        if e["fmn"] == built["file_management_number"] and e["insurer"] == CHIBA_INSURER
    ]
    assert received_events and received_events[-1]["accepted"] == 3
    assert any(
        e["transmission_id"] == built["transmission_id"]
        for e in log_capture.named("kokuhoren_transmission_delivered")
    )


async def test_bad_records_are_refused_and_the_rest_accepted(
    chiba: Any, rng: random.Random
) -> None:
    known = insured_number(rng)
    good = change(rng, dt.date(2023, 2, 1), insured=known)
    duplicate = change(
        rng, dt.date(2023, 2, 1), insured=known, change_kind="2", reason="05", care_level="22"
    )
    unknown = change(rng, dt.date(2023, 2, 3), change_kind="2", reason="06")
    zeros = change(rng, dt.date(2023, 2, 4), insured="0000000000")
    late_good = change(rng, dt.date(2023, 2, 10))
    status, _ = await post_changes(chiba, good, duplicate, unknown, zeros, late_good)
    assert status == 201

    built = await transmit_month(chiba, "202302")
    assert built["record_count"] == 5
    done = await wait_transmission(chiba, built["transmission_id"])
    intake = done["intake"]
    assert intake["status"] == "partially_accepted"
    assert (intake["accepted"], intake["rejected"]) == (2, 3)
    by_change = {e["change_id"]: e for e in intake["errors"]}
    assert set(by_change) == {duplicate["change_id"], unknown["change_id"], zeros["change_id"]}
    assert by_change[duplicate["change_id"]]["code"] == "duplicate_record"
    assert by_change[duplicate["change_id"]]["field"] == "異動年月日"
    assert by_change[unknown["change_id"]]["code"] == "recipient_unknown"
    assert by_change[zeros["change_id"]]["code"] == "insured_number_invalid"
    assert by_change[zeros["change_id"]]["field"] == "被保険者番号"
    assert all(isinstance(e["record_number"], int) for e in intake["errors"])
    # Errors name record, field and code — never a value from the file.
    text = json.dumps(intake, ensure_ascii=False)
    for record in (good, duplicate, unknown, late_good):
        assert record["insured_number"] not in text and record["name_kana"] not in text
    rows = await chiba.gateway.state.pool.fetch(
        "SELECT change_id, intake_status, intake_code FROM kokuhoren_recipient_changes "
        "WHERE transmission_id = $1",
        built["transmission_id"],
    )
    outcome = {r["change_id"]: (r["intake_status"], r["intake_code"]) for r in rows}
    assert outcome[good["change_id"]] == ("accepted", None)
    assert outcome[late_good["change_id"]] == ("accepted", None)
    assert outcome[unknown["change_id"]] == ("rejected", "recipient_unknown")
    assert done["job"]["counts"] == {"records": 5, "accepted": 2, "rejected": 3}


async def test_mailbox_down_then_up_delivers_after_recovery(
    chiba: Any, network: Any, rng: random.Random, log_capture: Any, mailbox_up: None
) -> None:
    assert (await post_changes(chiba, change(rng, dt.date(2023, 3, 2))))[0] == 201
    port = network.kokuhoren_config.port
    await network.stop_kokuhoren()

    built = await transmit_month(chiba, "202303")
    job_id = built["job_id"]
    for _ in range(100):  # the first attempt fails: connection refused
        if any(e["job_id"] == job_id for e in log_capture.named("kokuhoren_job_retry")):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no retry was scheduled while the mailbox was down")
    waiting = await wait_transmission(chiba, built["transmission_id"], wait=0)
    assert waiting["status"] == "queued"
    assert waiting["last_error"] == "kokuhoren_unavailable"
    assert waiting["job"]["status"] in ("queued", "running")
    status, body = await chiba.call("POST", f"{TRANSMISSIONS}/{built['transmission_id']}/resend")
    assert (status, body["error"]["code"]) == (409, "transmission_in_progress")

    await network.start_kokuhoren()  # the same port, database and keys
    assert network.kokuhoren_config.port == port
    done = await wait_transmission(chiba, built["transmission_id"], wait=20)
    assert done["status"] == "delivered"
    assert done["intake"]["status"] == "accepted"
    assert done["job"]["status"] == "done" and done["job"]["attempts"] >= 2
    assert done["attempts"] == done["job"]["attempts"]
    retries = [e for e in log_capture.named("kokuhoren_job_retry") if e["job_id"] == job_id]
    assert retries[0]["code"] == "kokuhoren_unavailable"
    assert [e["delay"] for e in retries] == sorted(e["delay"] for e in retries)


async def test_a_file_management_number_is_never_taken_twice(
    chiba: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    assert (await post_changes(chiba, change(rng, dt.date(2023, 4, 3))))[0] == 201
    built = await transmit_month(chiba, "202304")
    first = await wait_transmission(chiba, built["transmission_id"])
    assert first["intake"]["status"] == "accepted"
    fmn, name = built["file_management_number"], built["file_name"]
    state = chiba.gateway.state
    content = await state.pool.fetchval(
        "SELECT content FROM kokuhoren_transmissions WHERE id = $1", built["transmission_id"]
    )
    client = chiba.gateway.server.app[KOKUHOREN_CLIENT]

    # Same number, same content (e.g. the answer was lost): the stored result, no new file.
    intake, duplicate = await client.deliver(fmn, name, content)
    assert duplicate is True
    assert intake.to_json() == {k: v for k, v in first["intake"].items() if k != "duplicate"}

    # Same number, other content: refused with a code.
    original = decode_file(content)
    other = encode_file(original.build(original.control, original.records * 2))
    with pytest.raises(MailboxRefusedError) as refused:
        await client.deliver(fmn, name, other)
    assert refused.value.remote_status == 409
    assert refused.value.remote_code == "file_management_number_reused"
    simulator = network.kokuhoren.app[KOKUHOREN_STATE]
    assert (
        await simulator.pool.fetchval(
            "SELECT count(*) FROM received_files WHERE insurer_number = $1 "
            "AND file_management_number = $2",
            CHIBA_INSURER,
            fmn,
        )
        == 1
    )

    # The operator sending the file again (an intake result in doubt) gets the same result.
    status, resent = await chiba.call("POST", f"{TRANSMISSIONS}/{built['transmission_id']}/resend")
    assert status == 202 and resent["status"] == "queued", resent
    again = await wait_transmission(chiba, built["transmission_id"])
    assert again["status"] == "delivered" and again["intake"]["duplicate"] is True
    assert again["intake"]["accepted"] == first["intake"]["accepted"]
    assert again["file_management_number"] == fmn and again["job"]["status"] == "done"
    assert any(
        e["transmission_id"] == built["transmission_id"] and e["previous"] == "delivered"
        for e in log_capture.named("kokuhoren_transmission_resent")
    )


async def test_a_name_outside_shift_jis_is_refused(chiba: Any, rng: random.Random) -> None:
    fine = change(rng, dt.date(2023, 5, 1))
    bad = change(rng, dt.date(2023, 5, 2), name="𠮷田 花子")
    bad_kana = change(rng, dt.date(2023, 5, 3), name_kana="𠮷ダ ハナコ")
    PERSONAL.update({"𠮷田 花子", "𠮷ダ ハナコ"})
    status, body = await post_changes(chiba, fine, bad, bad_kana)
    assert status == 422
    error = body["error"]
    assert error["code"] == "recipient_changes_invalid"
    problems = {(e["index"], e["field"], e["code"]) for e in error["details"]["errors"]}
    assert problems == {(1, "name", "csv_charset"), (2, "name_kana", "csv_charset")}
    assert "𠮷" not in json.dumps(body, ensure_ascii=False)
    stored = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM kokuhoren_recipient_changes WHERE change_id = ANY($1)",
        [fine["change_id"], bad["change_id"], bad_kana["change_id"]],
    )
    assert stored == 0  # all of the batch or nothing

    # A stored change the codec refuses at generation time (e.g. written before a rule
    # tightened) is left out of the file with a per-record error; the rest is sent.
    assert (await post_changes(chiba, fine))[0] == 201
    smuggled = {k: v for k, v in bad.items() if k != "change_id"} | {"kind": "change"}
    await chiba.gateway.state.pool.execute(
        "INSERT INTO kokuhoren_recipient_changes (change_id, kind, record, digest, "
        "effective_on, submitted_by) VALUES ($1, 'change', $2::jsonb, 'x', $3, 'test')",
        bad["change_id"],
        json.dumps(smuggled, ensure_ascii=False),
        dt.date(2023, 5, 2),
    )
    built = await transmit_month(chiba, "202305")
    assert built["record_count"] == 1
    assert [(r["change_id"], r["field"], r["code"]) for r in built["refused"]] == [
        (bad["change_id"], "name", "csv_charset")
    ]
    assert (await wait_transmission(chiba, built["transmission_id"]))["intake"]["accepted"] == 1
    row = await chiba.gateway.state.pool.fetchrow(
        "SELECT status, error_code FROM kokuhoren_recipient_changes WHERE change_id = $1",
        bad["change_id"],
    )
    assert (row["status"], row["error_code"]) == ("refused", "csv_charset")


async def test_corrections_travel_in_a_532_file(
    chiba: Any, network: Any, rng: random.Random
) -> None:
    person = insured_number(rng)
    original = change(rng, dt.date(2023, 6, 1), insured=person)
    assert (await post_changes(chiba, original))[0] == 201
    sent = await transmit_month(chiba, "202306")
    assert (await wait_transmission(chiba, sent["transmission_id"]))["intake"]["accepted"] == 1

    fields = {k: v for k, v in original.items() if k != "change_id"}
    corrected = fields | {
        "change_id": f"C{rng.randrange(10**12)}",
        "kind": "correction",
        "care_level": "24",
        "corrected_on": "2023-06-20",
        "correction_kind": "1",
    }
    orphan = change(rng, dt.date(2023, 6, 2)) | {
        "kind": "correction",
        "corrected_on": "2023-06-21",
        "correction_kind": "1",
    }
    status, body = await post_changes(chiba, corrected, orphan)
    assert status == 201, body
    # The correction kind is built on its own: a 531 file for June has nothing left.
    status, body = await chiba.call(
        "POST", TRANSMISSIONS, json={"month": "202306", "kind": "change"}
    )
    assert status == 409 and body["error"]["code"] == "nothing_to_transmit"

    built = await transmit_month(chiba, "202306", kind="correction")
    assert built["file_name"] == f"10_532{CHIBA_INSURER}202306.csv"
    intake = (await wait_transmission(chiba, built["transmission_id"]))["intake"]
    assert intake["status"] == "partially_accepted"
    assert [(e["change_id"], e["code"]) for e in intake["errors"]] == [
        (orphan["change_id"], "correction_target_unknown")
    ]
    simulator = network.kokuhoren.app[KOKUHOREN_STATE]
    level = await simulator.pool.fetchval(
        "SELECT care_level FROM recipients WHERE insurer_number = $1 AND insured_number = $2",
        CHIBA_INSURER,
        person,
    )
    assert level == "24"


async def test_return_file_is_fetched_and_ingested(
    chiba: Any, network: Any, http: Any, rng: random.Random, log_capture: Any
) -> None:
    """After 審査, 国保連 puts the 給付実績 of a month in the mailbox; the gateway ingests it."""
    assert (await post_changes(chiba, change(rng, dt.date(2023, 9, 1), care_level="12")))[0] == 201
    sent = await transmit_month(chiba, "202309")
    assert (await wait_transmission(chiba, sent["transmission_id"]))["intake"]["accepted"] == 1
    simulator = network.kokuhoren.app[KOKUHOREN_STATE]
    expected = await simulator.pool.fetchval(
        "SELECT count(*) FROM recipients WHERE insurer_number = $1 AND active "
        "AND care_level IN ('12','13','21','22','23','24','25') "
        "AND certification_start <= '2023-09-30' AND certification_end >= '2023-09-01'",
        CHIBA_INSURER,
    )
    assert expected >= 1
    async with http.post(
        network.kokuhoren.url + "/admin/v1/returns",
        json={"insurer_number": CHIBA_INSURER, "month": "202309"},
        headers={"Authorization": f"Bearer {network.kokuhoren_config.admin_token}"},
    ) as response:
        assert response.status in (200, 201)
        produced = await response.json()
    assert produced["file_name"] == f"10_861{CHIBA_INSURER}202309.csv"

    status, started = await chiba.call("POST", RETURNS, json={"month": "202309"})
    assert status == 202 and started["status"] == "queued"
    status, body = await chiba.call("GET", f"{RETURNS}/{started['job_id']}?wait=15")
    assert status == 200 and body["status"] == "done", body
    assert body["job"]["counts"]["files"] == 1
    (file,) = body["files"]
    assert file["file_management_number"] == produced["file_management_number"]
    assert file["record_count"] == expected == len(file["records"])
    for record in file["records"]:
        assert record["service_month"] == "202309"
        assert record["benefit_amount"] + record["copayment"] == record["units"] * 10

    # Fetching again finds nothing new.
    status, again = await chiba.call("POST", RETURNS, json={"month": "202309"})
    status, body = await chiba.call("GET", f"{RETURNS}/{again['job_id']}?wait=15")
    assert body["job"]["counts"] == {
        "files": 0,
        "records": 0,
        "already_ingested": 1,
        "replica_persons": 0,  # 給付実績 → 0300 (test_kokuhoren_flows.py): nothing new to apply
        "replica_unmatched": 0,
    }
    assert len(body["files"]) == 1
    assert any(e["month"] == "202309" for e in log_capture.named("kokuhoren_returns_ingested"))


async def test_requests_are_validated(chiba: Any, rng: random.Random) -> None:
    status, body = await chiba.call("POST", TRANSMISSIONS, json={"month": "2023-01"})
    assert status == 422 and body["error"]["code"] == "validation_failed"
    status, body = await chiba.call("POST", TRANSMISSIONS, json={"month": "202313"})
    assert status == 422
    status, body = await chiba.call("POST", TRANSMISSIONS, json={"month": "202301", "kind": "x"})
    assert status == 422
    status, body = await chiba.call("POST", TRANSMISSIONS, json={"month": "200001"})
    assert status == 409 and body["error"]["code"] == "nothing_to_transmit"
    status, body = await chiba.call("GET", f"{TRANSMISSIONS}/999999999")
    assert status == 404 and body["error"]["code"] == "transmission_unknown"
    status, body = await chiba.call("POST", f"{TRANSMISSIONS}/999999999/resend")
    assert status == 404 and body["error"]["code"] == "transmission_unknown"
    status, body = await chiba.call("GET", f"{RETURNS}/999999999")
    assert status == 404 and body["error"]["code"] == "return_ingest_unknown"
    status, body = await chiba.call("POST", CHANGES, json={"changes": []})
    assert status == 422

    broken = change(rng, dt.date(2023, 7, 1), certification_end=None, favourite_colour="blue")
    broken["changed_on"] = "2023-02-30"
    del broken["sex"]
    status, body = await post_changes(chiba, broken)
    assert status == 422
    found = {(e["field"], e["code"]) for e in body["error"]["details"]["errors"]}
    assert found == {
        ("favourite_colour", "field_unknown"),
        ("changed_on", "field_invalid"),
        ("sex", "field_missing"),
    }
    # Shape is fine, a cross-field rule of the layout is not: the codec's code comes back.
    status, body = await post_changes(
        chiba, change(rng, dt.date(2023, 7, 1), certification_end=None)
    )
    assert status == 422
    (problem,) = body["error"]["details"]["errors"]
    assert (problem["field"], problem["item"]) == (
        "certification_end",
        "認定有効期間終了年月日",
    )
    assert problem["code"] == "csv_field_invalid"

    # Posting the same change twice is harmless; changing it under the same id is not.
    same = change(rng, dt.date(2023, 7, 3))
    assert (await post_changes(chiba, same))[0] == 201
    status, body = await post_changes(chiba, same)
    assert status == 200 and body["unchanged"] == 1
    status, body = await post_changes(chiba, same | {"burden_ratio": "2"})
    assert status == 409 and body["error"]["code"] == "change_id_conflict"
    assert body["error"]["details"]["change_ids"] == [same["change_id"]]
    built = await transmit_month(chiba, "202307")
    assert (await wait_transmission(chiba, built["transmission_id"]))["status"] == "delivered"


async def test_grant_and_configuration_are_required(
    chiba: Any, network: Any, http: Any, rng: random.Random, mailbox_up: None
) -> None:
    api_of = type(chiba)  # the conftest helper: calls a gateway's internal API over HTTP
    reader_token = "kokuhoren-reader-token-for-tests"
    reader = await network.add_gateway(
        "122106",
        "木更津市",
        systems=(
            SystemCredential("reader", token_digest(reader_token), frozenset({OP_READ_RECORDS})),
        ),
    )
    unconfigured = await network.add_gateway("122114", "松戸市")  # no 保険者番号
    # Short, bounded backoff: this gateway gives up quickly when the mailbox stays down.
    impatient = await network.add_gateway(
        "122122",
        "野田市",
        insurer_number="122127",
        timing=Timing(transmit_attempts=3, transmit_backoff=0.02, transmit_max_backoff=0.05),
    )
    try:
        status, body = await api_of(http, reader).call(
            "POST", TRANSMISSIONS, token=reader_token, json={"month": "202301"}
        )
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await api_of(http, unconfigured).call(
            "POST", CHANGES, json={"changes": [change(rng, dt.date(2023, 8, 1))]}
        )
        assert status == 409 and body["error"]["code"] == "kokuhoren_not_configured"

        api = api_of(http, impatient)
        record = change(rng, dt.date(2023, 8, 1), certificate_insurer_number="122127")
        assert (await post_changes(api, record))[0] == 201
        await network.stop_kokuhoren()
        built = await transmit_month(api, "202308")
        assert built["file_name"] == "10_531122127202308.csv"
        failed = await wait_transmission(api, built["transmission_id"], wait=10)
        assert failed["status"] == "failed" and failed["last_error"] == "kokuhoren_unavailable"
        assert failed["job"]["status"] == "failed" and failed["job"]["attempts"] == 3
        assert failed["job"]["error"].startswith("kokuhoren_unavailable: gave up after 3")
        # Once the mailbox is back, the operator sends the same file again.
        await network.start_kokuhoren()
        transmission = f"{TRANSMISSIONS}/{built['transmission_id']}"
        status, resent = await api.call("POST", f"{transmission}/resend")
        assert status == 202 and resent["status"] == "queued", resent
        done = await wait_transmission(api, built["transmission_id"])
        assert done["status"] == "delivered" and done["intake"]["status"] == "accepted"
        assert done["intake"]["duplicate"] is False
        assert done["file_management_number"] == built["file_management_number"]
        assert done["job"]["status"] == "done" and done["job"]["attempts"] == 1
        assert done["attempts"] == 4 and done["last_error"] is None
        status, body = await api_of(http, reader).call(
            "POST", f"{transmission}/resend", token=reader_token
        )
        assert status == 403 and body["error"]["code"] == "forbidden"
    finally:
        for code in ("122106", "122114", "122122"):
            gateway = network.gateways.pop(code, None)
            if gateway is not None:
                await gateway.server.stop()


async def test_a_queued_transmission_resumes_after_a_gateway_restart(
    chiba: Any, network: Any, http: Any, rng: random.Random, log_capture: Any, mailbox_up: None
) -> None:
    """A job left queued by a stopped gateway process is picked up when it starts again."""
    from chukan.gateway.serve import start_gateway
    from chukan.simulators.devnet.network import Gateway

    code = "122131"
    gateway = await network.add_gateway(
        code,
        "成田市",
        insurer_number="122135",
        timing=Timing(transmit_backoff=0.2, transmit_max_backoff=0.2),
    )
    try:
        api = type(chiba)(http, gateway)
        assert (await post_changes(api, change(rng, dt.date(2023, 10, 2))))[0] == 201
        await network.stop_kokuhoren()
        built = await transmit_month(api, "202310")
        for _ in range(100):
            retries = log_capture.named("kokuhoren_job_retry")
            if any(
                e["job_id"] == built["job_id"] and e["kind"] == "kokuhoren.transmit"
                for e in retries
            ):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no retry was scheduled while the mailbox was down")
        await gateway.server.stop()  # the process goes away with the job queued
        conn = await asyncpg.connect(gateway.config.database_url)
        try:
            job = await conn.fetchrow(
                "SELECT status, next_attempt_at FROM jobs WHERE id = $1", built["job_id"]
            )
        finally:
            await conn.close()
        assert job is not None
        assert job["status"] in ("queued", "running") and job["next_attempt_at"] is not None
        await network.start_kokuhoren()
        restarted = Gateway(await start_gateway(gateway.config), gateway.config, gateway.token)
        network.gateways[code] = restarted
        done = await wait_transmission(type(chiba)(http, restarted), built["transmission_id"])
        assert done["status"] == "delivered" and done["intake"]["status"] == "accepted"
        assert done["job"]["attempts"] >= 2
        assert log_capture.named("kokuhoren_jobs_resumed")
    finally:
        running = network.gateways.pop(code, None)
        if running is not None:
            await running.server.stop()


async def test_the_mailbox_needs_the_insurers_agency_certificate_as_well_as_its_token(
    network: Any, http: Any, chiba: Any
) -> None:
    """Mutual TLS exists, so a 保険者's token alone does not open its mailbox."""
    from chukan.codecs import catalog

    link = chiba.gateway.config.kokuhoren
    url = f"{link.url}/mailbox/v1/outbox?month=202611"
    headers = {"Authorization": f"Bearer {link.token}"}
    async with http.get(url, headers=headers, ssl=network.anonymous_ssl()) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "client_certificate_required"
    foreign = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    async with http.get(url, headers=headers, ssl=foreign) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "peer_mismatch"
    own = network.agency_client_ssl(catalog.CHIBA_CITY)
    async with http.get(url, headers=headers, ssl=own) as response:
        assert response.status == 200


async def test_no_personal_data_in_logs(chiba: Any, rng: random.Random, log_capture: Any) -> None:
    """Nothing sent as 被保険者番号 or name was logged: this test's own file (a 新規 and a
    refused record) and whatever the tests before it in the session sent."""
    known = insured_number(rng)
    refused = change(
        rng, dt.date(2023, 11, 1), insured=known, change_kind="2", reason="05", care_level="22"
    )
    status, _ = await post_changes(chiba, change(rng, dt.date(2023, 11, 1), insured=known), refused)
    assert status == 201
    built = await transmit_month(chiba, "202311")
    intake = (await wait_transmission(chiba, built["transmission_id"]))["intake"]
    assert (intake["accepted"], intake["rejected"]) == (1, 1)
    text = log_capture.getvalue()
    assert built["file_management_number"] in text  # the file's events are in the capture
    leaked = sorted(value for value in PERSONAL if value in text)
    assert leaked == []
