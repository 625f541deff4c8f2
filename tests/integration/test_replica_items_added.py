"""The 副本's added items and fields, end to end: 0400 総合事業, the 認定 and 賦課・収滞納
fields of 0201 and 0500 registered by IF_DBM_20113_R01 and received by another city's
query; the 自動応答不可 flag set and cleared inside registration entries."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import random
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from replica_support import history, moved_person, new_message_id, new_record_id, post_message

from chukan.codecs import catalog
from chukan.codecs import item_model as m
from chukan.codecs.items import encode_item
from chukan.codecs.registration import (
    MessageHeader,
    MessageMode,
    RegistrationEntry,
    Segment,
    encode_registration_parts,
)
from chukan.codecs.sample_items import (
    care_certification,
    comprehensive_program,
    premium_assessment,
)
from chukan.gateway.replica.cli import run_import

pytestmark = pytest.mark.integration

TODAY = dt.date(2025, 4, 1)
PROCEDURE = catalog.LTC_CERTIFICATION_PROCEDURE  # 項 132


def full_certification(rng: random.Random) -> m.CareCertification:
    """A 区分変更 after a withdrawn application: every added 0201 field in use."""
    base = care_certification(rng, TODAY)
    first = base.certification_records[0]
    withdrawn = m.CertificationRecord(
        TODAY,
        TODAY - dt.timedelta(days=200),
        m.ApplicationReason.NEW,
        m.Nil(m.ReasonOfNull.NOT_APPLICABLE),
        m.Nil(m.ReasonOfNull.NOT_APPLICABLE),
        m.Nil(m.ReasonOfNull.NOT_APPLICABLE),
        m.Nil(m.ReasonOfNull.NOT_APPLICABLE),
        m.Nil(m.ReasonOfNull.NOT_APPLICABLE),
        m.DeemedCertification.REGULAR,
        history_number=m.HistoryNumber(1),
        withdrawal_date=TODAY - dt.timedelta(days=190),
        withdrawal_reason=m.WithdrawalReason.BY_APPLICANT,
    )
    changed = m.CertificationRecord(
        TODAY,
        first.application_date,
        m.ApplicationReason.LEVEL_CHANGE,
        first.certification_date,
        m.CareLevel.CARE_3,
        first.valid_from,
        first.valid_to,
        first.specific_disease,
        first.deemed_certification,
        history_number=m.HistoryNumber(3),
        previous_history_number=m.HistoryNumber(2),
        previous_care_level=m.CareLevel.CARE_1,
        limit_period_from=TODAY,
        limit_period_to=TODAY + dt.timedelta(days=364),
        suspension_date=TODAY - dt.timedelta(days=60),
        suspension_reason=m.SuspensionReason.HOSPITALISED,
        cancellation_date=TODAY - dt.timedelta(days=30),
        cancellation_reason=m.CancellationReason.NO_LONGER_ELIGIBLE,
    )
    return m.CareCertification(base.insured_number, base.insurer_number, (withdrawn, changed))


def full_assessment(rng: random.Random) -> m.PremiumAssessment:
    """特別徴収 with 仮徴収, a 徴収猶予 and arrears: every added 0500 field in use."""
    base = premium_assessment(rng, TODAY)
    record = base.assessment_records[0]
    full = m.AssessmentRecord(
        record.updated,
        record.fiscal_year,
        record.income_category,
        m.CollectionMethod.COMBINED,
        record.assessed_amount,
        record.annual_amount,
        record.reduction,
        obligor_code=m.ObligorCode("001"),
        pension_code=m.PensionCode("0120"),
        special_collection_stop=m.SpecialCollectionStop.ASSESSMENT_CHANGED,
        provisional_amount=m.Yen(6000),
        provisional_change_date=TODAY - dt.timedelta(days=10),
        deferral=m.Deferral.INCOME_LOSS,
        deferral_from=TODAY,
        deferral_to=TODAY + dt.timedelta(days=180),
        payment_status=m.PaymentStatus.IN_ARREARS,
        arrears_amount=m.Yen(12000),
        payment_status_date=TODAY,
    )
    return m.PremiumAssessment(base.insured_number, base.insurer_number, (full,))


def message(
    atena_id: str,
    items: list[tuple[m.Item, bool | None]],
    *,
    mode: MessageMode = MessageMode.PRODUCTION,
    message_id: str | None = None,
    valid_from: dt.date = TODAY,
) -> bytes:
    header = MessageHeader(message_id or new_message_id("ADD"), mode, "KAIGO", "CHUKAN")
    entries = [
        RegistrationEntry(
            new_record_id(),
            Segment.REGISTRATION,
            atena_id,
            code_of(item),
            "1",
            1,
            valid_from,
            item=item,
            manual_review=flag,
        )
        for item, flag in items
    ]
    return encode_registration_parts(header, entries)


def code_of(item: m.Item) -> str:
    from chukan.codecs.items import item_code_of

    return item_code_of(item)


async def answered(funabashi: Any, there: str, code: str) -> dict[str, Any]:
    status, submitted = await funabashi.query(there, PROCEDURE, code, catalog.CHIBA_CITY)
    assert status == 202, submitted
    result: dict[str, Any] = await funabashi.result(submitted["query_id"])
    return result


async def held(chiba: Any, funabashi: Any, there: str, code: str) -> str:
    status, submitted = await funabashi.query(there, PROCEDURE, code, catalog.CHIBA_CITY)
    assert status == 202, submitted
    query_id: str = submitted["query_id"]
    for _ in range(250):
        status, body = await chiba.call("GET", "/internal/v1/review")
        assert status == 200
        if any(r["query_id"] == query_id for r in body["reviews"]):
            return query_id
        await asyncio.sleep(0.02)
    raise AssertionError("the provision was never held")


async def test_added_items_are_registered_and_provided(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    program = comprehensive_program(rng, TODAY)
    certification = full_certification(rng)
    assessment = full_assessment(rng)
    status, body, _ = await post_message(
        chiba, message(here, [(program, None), (certification, None), (assessment, None)])
    )
    assert status == 201, body
    assert (body["registered"], body["outcome"]) == (3, "accepted")
    assert "review_flags" not in body  # no entry carried the flag
    for item in (program, certification, assessment):
        code = code_of(item)
        stored = await history(chiba, here, code)
        assert stored["manual_review"] is False and len(stored["versions"]) == 1
        # 船橋市 asks under 項 132 and receives exactly the canonical bytes, added fields and all.
        result = await answered(funabashi, there, code)
        assert result["status"] == "answered", (code, result)
        assert result["result"].encode() == encode_item(item), code


async def test_manual_review_flag_set_and_cleared_by_registration(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    code = catalog.COMPREHENSIVE_PROGRAM.code
    program = comprehensive_program(rng, TODAY)

    # Test mode and a rejected message change nothing, the flag included.
    status, body, _ = await post_message(
        chiba, message(here, [(program, True)], mode=MessageMode.TEST)
    )
    assert (status, body["outcome"]) == (200, "validated"), body
    stranger = message("999999999999997", [(program, True)])
    status, body, _ = await post_message(chiba, stranger)
    assert (status, body["rejected"][0]["code"]) == (422, "person_unknown"), body
    assert (await history(chiba, here, code))["manual_review"] is False

    # The flag in the entry: set with the item, in one transaction; a provision is held.
    status, body, _ = await post_message(chiba, message(here, [(program, True)]))
    assert status == 201 and body["review_flags"] == 1, body
    stored = await history(chiba, here, code)
    assert stored["manual_review"] is True and len(stored["versions"]) == 1
    flag_row = await chiba.gateway.state.pool.fetchrow(
        "SELECT manual_review, set_by FROM replica_review_flags "
        "WHERE atena_id = $1 AND item_code = $2",
        here,
        code,
    )
    assert flag_row["manual_review"] is True and flag_row["set_by"] == "kaigo-system"
    query_id = await held(chiba, funabashi, there, code)
    assert (await funabashi.result(query_id, wait=0.2))["status"] == "pending"
    records = await chiba.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE query_id = $1 AND role = 'provider'",
        query_id,
    )
    assert [(r["outcome"], r["reason_code"]) for r in records] == [("held", "manual_review")]

    # A later entry with the flag 0 clears it (the last entry of a message decides); an entry
    # without the element leaves it as it is.
    later = comprehensive_program(rng, TODAY, program.insured_number)
    status, body, _ = await post_message(
        chiba, message(here, [(later, True), (later, False)], valid_from=TODAY)
    )
    assert status == 201 and body["review_flags"] == 1, body
    status, body, _ = await post_message(chiba, message(here, [(later, None)]))
    assert status == 201 and "review_flags" not in body, body
    assert (await history(chiba, here, code))["manual_review"] is False
    result = await answered(funabashi, there, code)
    assert result["status"] == "answered" and result["result"].encode() == encode_item(later)


async def test_bulk_import_applies_the_flag(
    chiba: Any, funabashi: Any, rng: random.Random, tmp_path: Path
) -> None:
    """The import's byte-range split and batches applied ahead carry the flag too."""
    here, there = await moved_person(rng, chiba, funabashi)
    code = catalog.PREMIUM_BASIS.code
    data = message(here, [(full_assessment(rng), None), (full_assessment(rng), True)])
    path = tmp_path / f"flag-{secrets.token_hex(4)}.xml"
    path.write_bytes(data)
    conn = await asyncpg.connect(chiba.gateway.config.database_url)
    try:
        out = io.StringIO()
        assert await run_import([path], conn, workers=0, batch_size=1, out=out) == 0, out.getvalue()
    finally:
        await conn.close()
    stored = await history(chiba, here, code)
    assert stored["manual_review"] is True and len(stored["versions"]) == 2
    query_id = await held(chiba, funabashi, there, code)
    assert query_id
