"""The 伝送 mailbox protocol and the JSON form of recipient changes (pure code)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from chukan.codecs.kokuhoren import (
    CareLevel,
    ChangeKind,
    CorrectionKind,
    RecipientChange,
    RecipientCorrection,
)
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.retry import backoff_delay
from chukan.gateway.kokuhoren.changes import month_end, parse_month
from chukan.gateway.kokuhoren.errors import (
    EnvelopeInvalidError,
    FileDigestMismatchError,
    RecordInvalidError,
)
from chukan.gateway.kokuhoren.json_codec import (
    canonical_json,
    effective_date,
    record_from_json,
    record_to_json,
)
from chukan.gateway.kokuhoren.mailbox import (
    KOKUHOREN_PARTY,
    FileEnvelope,
    IntakeError,
    IntakeResult,
    open_file,
    seal_file,
)
from chukan.keys import DecryptionError, UnknownKeyError, generate_encryption_key

CONTENT = b'"1","1","1","1","531","","122010","","12","1","202404","0000000001"\r\n'
NAME = "10_531122010202404.csv"


def sealed(**overrides: Any) -> tuple[Any, FileEnvelope]:
    key = generate_encryption_key(KOKUHOREN_PARTY)
    envelope = seal_file(
        key.public,
        CONTENT,
        sender="122010",
        receiver=KOKUHOREN_PARTY,
        file_management_number="0000000001",
        file_name=NAME,
    )
    return {key.key_id: key}, replace(envelope, **overrides)


def test_an_envelope_round_trips_and_opens() -> None:
    keys, envelope = sealed()
    again = FileEnvelope.from_bytes(envelope.to_bytes())
    assert again == envelope
    assert open_file(keys, again) == CONTENT
    assert CONTENT not in envelope.to_bytes()


@pytest.mark.parametrize(
    "field",
    [
        {"file_management_number": "0000000002"},
        {"sender": "122044"},
        {"receiver": "122010"},
        {"file_name": "10_531122010202405.csv"},
    ],
)
def test_the_associated_data_binds_number_parties_and_name(field: dict[str, str]) -> None:
    keys, envelope = sealed(**field)
    with pytest.raises(DecryptionError):
        open_file(keys, envelope)


def test_digest_and_key_are_checked() -> None:
    keys, envelope = sealed(digest="0" * 64)
    with pytest.raises(FileDigestMismatchError):
        open_file(keys, envelope)
    _, other = sealed()
    with pytest.raises(UnknownKeyError):
        open_file(keys, other)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"sender": "122010"}',
    ],
)
def test_malformed_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(EnvelopeInvalidError):
        FileEnvelope.from_bytes(raw)


def test_envelope_fields_are_checked() -> None:
    _, envelope = sealed()
    data = json.loads(envelope.to_bytes())
    for field, value in (
        ("file_management_number", "1"),
        ("file_name", "../etc/passwd"),
        ("sender", "someone"),
        ("digest", "ABC"),
    ):
        with pytest.raises(EnvelopeInvalidError):
            FileEnvelope.from_bytes(json.dumps(data | {field: value}).encode())
    data["sealed"]["nonce"] = "***"
    with pytest.raises(EnvelopeInvalidError):
        FileEnvelope.from_bytes(json.dumps(data).encode())


def test_intake_result_json() -> None:
    result = IntakeResult(
        "0000000001",
        NAME,
        "partially_accepted",
        3,
        2,
        1,
        (IntakeError(3, "被保険者番号", "recipient_unknown", "…"),),
        "2024-05-01T00:00:00+00:00",
    )
    assert IntakeResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    good = result.to_json()
    for broken in (
        good | {"status": "maybe"},
        good | {"accepted": -1},
        good | {"rejected": True},
        good | {"errors": [{"record_number": "3", "field": None, "code": "x", "message": ""}]},
        good | {"errors": [{"record_number": 3, "field": None, "code": "Bad Code"}]},
        good | {"errors": "none"},
        good | {"file_name": "x.csv"},
    ):
        with pytest.raises(EnvelopeInvalidError):
            IntakeResult.from_json(broken)


CHANGE_JSON: dict[str, Any] = {
    "change_id": "A-1",
    "changed_on": "2024-04-01",
    "change_kind": "1",
    "change_reason": "03",
    "insured_number": "0000012345",
    "name_kana": "テスト ハナコ",
    "name": "髙﨑 花子",
    "birth_date": "1945-03-10",
    "sex": "2",
    "qualified_on": "2010-03-10",
    "care_level": "21",
    "certification_start": "2024-04-01",
    "certification_end": "2026-03-31",
    "benefit_limit": 16765,
    "limit_start": "2024-04-01",
    "limit_end": "2026-03-31",
    "burden_ratio": "1",
    "special_address": False,
}


def test_a_change_round_trips_through_json() -> None:
    record = record_from_json(CHANGE_JSON, default_insurer="122010")
    assert isinstance(record, RecipientChange)
    assert record.certificate_insurer_number == "122010"  # the tenant's by default
    assert record.care_level is CareLevel.CARE_1 and record.change_kind is ChangeKind.NEW
    assert record.disqualified_on is None and record.facility_insurer_number is None
    again = record_from_json(record_to_json(record), default_insurer=None)
    assert again == record
    assert canonical_json(record_to_json(again)) == canonical_json(record_to_json(record))


def test_a_correction_round_trips_through_json() -> None:
    data = CHANGE_JSON | {
        "kind": "correction",
        "corrected_on": "2024-04-20",
        "correction_kind": "2",
    }
    record = record_from_json(data, default_insurer="122010")
    assert isinstance(record, RecipientCorrection)
    assert record.correction_kind is CorrectionKind.DELETE
    assert effective_date(record).isoformat() == "2024-04-20"
    assert effective_date(record.change).isoformat() == "2024-04-01"
    assert record_from_json(record_to_json(record), default_insurer=None) == record


def problems(data: dict[str, Any]) -> set[tuple[str | None, str]]:
    with pytest.raises(RecordInvalidError) as caught:
        record_from_json(data, default_insurer="122010")
    return {(p.field, p.code) for p in caught.value.problems}


def test_shape_problems_are_all_reported() -> None:
    data = CHANGE_JSON | {
        "changed_on": "2024-W14-1",  # an ISO week date is not YYYY-MM-DD
        "birth_date": "1945-02-30",
        "sex": "3",
        "benefit_limit": "16765",
        "special_address": 0,
        "colour": "blue",
    }
    del data["insured_number"]
    assert problems(data) == {
        ("changed_on", "field_invalid"),
        ("birth_date", "field_invalid"),
        ("sex", "field_invalid"),
        ("benefit_limit", "field_invalid"),
        ("special_address", "field_invalid"),
        ("colour", "field_unknown"),
        ("insured_number", "field_missing"),
    }
    assert problems(CHANGE_JSON | {"kind": "other"}) == {("kind", "field_invalid")}
    assert problems(CHANGE_JSON | {"corrected_on": "2024-04-20"}) == {
        ("corrected_on", "field_unknown")
    }


def test_layout_rules_come_from_the_codec() -> None:
    with pytest.raises(RecordInvalidError) as caught:
        record_from_json(CHANGE_JSON | {"name": "𠮷田 花子"}, default_insurer="122010")
    (problem,) = caught.value.problems
    assert (problem.field, problem.item, problem.code) == ("name", "被保険者氏名", "csv_charset")
    assert "𠮷" not in problem.message
    assert problems(CHANGE_JSON | {"insured_number": "12345"}) == {
        ("insured_number", "csv_field_invalid")
    }
    assert problems(CHANGE_JSON | {"certificate_insurer_number": "122011"}) == {
        ("certificate_insurer_number", "csv_check_digit")
    }
    assert problems(CHANGE_JSON | {"name": ""}) == {("name", "csv_field_invalid")}


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n, 0.5, 3.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(0, 0.5, 3.0) == 0.5


def test_months() -> None:
    assert str(parse_month("202402")) == "202402"
    assert month_end(parse_month("202402")).isoformat() == "2024-02-29"
    assert month_end(parse_month("202412")).isoformat() == "2024-12-31"
    for bad in ("2024-02", "202413", "202400", 202402, None):
        with pytest.raises(ValidationError):
            parse_month(bad)
