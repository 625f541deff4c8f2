"""The 国保連 simulator's intake rules on decoded files (pure, no server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from chukan.codecs.kokuhoren import (
    BurdenRatio,
    CareLevel,
    ChangeKind,
    ChangeReason,
    ControlRecord,
    CorrectionKind,
    DataRecord,
    DataType,
    Medium,
    RecipientChange,
    RecipientCorrection,
    Sex,
    TransmissionFile,
    YearMonth,
    decode_records,
    encode_file,
)
from chukan.simulators.kokuhoren.rules import Register, Review, month_end, review_file

INSURER = "122010"
MONTH = YearMonth(2024, 4)


def control(data_type: DataType = DataType.CHANGE, insurer: str = INSURER) -> ControlRecord:
    return ControlRecord(
        1, 0, data_type, None, insurer, insurer[:2], Medium.TRANSMISSION, MONTH, "1"
    )


def new(insured: str, day: int = 1, **changes: object) -> RecipientChange:
    record = RecipientChange(
        changed_on=date(2024, 4, day),
        change_kind=ChangeKind.NEW,
        change_reason=ChangeReason.CERTIFICATION_NEW,
        certificate_insurer_number=INSURER,
        insured_number=insured,
        name_kana="テスト ハナコ",
        name=None,
        birth_date=date(1944, 5, 6),
        sex=Sex.FEMALE,
        qualified_on=date(2009, 5, 6),
        disqualified_on=None,
        care_level=CareLevel.CARE_1,
        certification_start=date(2024, 4, 1),
        certification_end=date(2025, 3, 31),
        benefit_limit=None,
        limit_start=None,
        limit_end=None,
        burden_ratio=BurdenRatio.ONE,
        special_address=False,
        facility_insurer_number=None,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def review(
    records: list[DataRecord],
    register: Register | None = None,
    *,
    head: ControlRecord | None = None,
    name: str | None = None,
    data: bytes | None = None,
) -> Review:
    head = head or control()
    file = TransmissionFile.build(head, records)
    return review_file(
        decode_records(data if data is not None else encode_file(file)),
        sender=INSURER,
        file_name=name or file.file_name,
        register=register if register is not None else Register(),
    )


def codes(result: Review) -> list[tuple[int | None, str]]:
    return [(e.record_number, e.code) for e in result.errors]


def test_a_clean_file_is_accepted_and_registers_its_recipients() -> None:
    register = Register()
    result = review(
        [
            new("1000000001"),
            new("1000000002", 2),
            new("1000000001", 20, change_kind=ChangeKind.CHANGE, care_level=CareLevel.CARE_3),
        ],
        register,
    )
    assert (result.status, len(result.accepted), result.rejected) == ("accepted", 3, 0)
    assert result.errors == ()
    assert register.is_active("1000000001") and register.is_active("1000000002")
    assert register.changes["1000000001"][date(2024, 4, 20)] is ChangeKind.CHANGE
    assert ("1000000002", date(2024, 4, 2)) in register.month_keys


def test_a_whole_file_is_rejected_for_file_level_defects() -> None:
    records: list[DataRecord] = [new("1000000001")]
    other = review(records, head=control(insurer="131011"))
    assert other.status == "rejected" and codes(other)[0] == (1, "insurer_mismatch")
    misnamed = review(records, name="10_531122010202405.csv")
    assert misnamed.status == "rejected" and (None, "csv_file_name") in codes(misnamed)
    assert misnamed.accepted == () and misnamed.rejected == 1
    data = encode_file(TransmissionFile.build(control(), records))
    broken = review(records, data=data.replace(b'"3","3"\r\n', b""))  # no end record
    assert broken.status == "rejected" and (None, "csv_structure") in codes(broken)


def test_record_rules_refuse_one_record_each() -> None:
    records: list[DataRecord] = [
        new("1000000001"),
        new("1000000002", certificate_insurer_number="131011"),
        new("0000000000"),
        new("1000000004", birth_date=date(2024, 4, 2)),
        new("1000000005", care_level=None, certification_start=None, certification_end=None),
        new(
            "1000000006",
            change_reason=ChangeReason.QUALIFICATION_LOST,
            change_kind=ChangeKind.NEW,
        ),
        new("1000000007", certification_end=date(2028, 4, 1)),
        new("1000000008", certification_end=date(2028, 3, 31)),  # 48 months: fine
    ]
    result = review(records)
    assert result.status == "partially_accepted"
    assert codes(result) == [
        (3, "certificate_insurer_mismatch"),
        (4, "insured_number_invalid"),
        (5, "birth_date_inconsistent"),
        (6, "care_level_required"),
        (7, "disqualification_date_required"),
        (8, "certification_period_too_long"),
    ]
    assert [item.record_number for item in result.accepted] == [2, 9]
    assert {e.field for e in result.errors} >= {"被保険者番号", "生年月日"}


def test_a_change_dated_after_the_month_is_refused() -> None:
    late = new("1000000001", changed_on=date(2024, 5, 1), certification_start=date(2024, 5, 1))
    assert codes(review([late])) == [(2, "change_date_after_month")]
    assert month_end(YearMonth(2024, 2)) == date(2024, 2, 29)


def test_duplicates_within_a_month_are_refused() -> None:
    register = Register(month_keys={("1000000009", date(2024, 4, 3))})
    again = new("1000000001", change_kind=ChangeKind.CHANGE)
    result = review([new("1000000001"), again, new("1000000009", 3)], register)
    assert codes(result) == [(3, "duplicate_record"), (4, "duplicate_record")]


def test_the_register_decides_new_change_and_end() -> None:
    register = Register(changes={"1000000001": {date(2023, 4, 1): ChangeKind.NEW}})
    result = review(
        [
            new("1000000001"),  # already registered
            new("1000000002", change_kind=ChangeKind.CHANGE),  # unknown
            new(
                "1000000001",
                2,
                change_kind=ChangeKind.END,
                change_reason=ChangeReason.QUALIFICATION_LOST,
                disqualified_on=date(2024, 4, 2),
                care_level=None,
                certification_start=None,
                certification_end=None,
            ),
            new("1000000001", 3),  # a new 新規 after the 終了: re-registered
        ],
        register,
    )
    assert codes(result) == [(2, "recipient_already_registered"), (3, "recipient_unknown")]
    assert [item.record_number for item in result.accepted] == [4, 5]
    assert register.is_active("1000000001")


def test_corrections_need_an_accepted_target() -> None:
    register = Register(
        changes={"1000000001": {date(2024, 4, 1): ChangeKind.NEW}},
    )
    corrected = RecipientCorrection(
        new("1000000001", care_level=CareLevel.CARE_4), date(2024, 4, 10), CorrectionKind.CORRECT
    )
    orphan = RecipientCorrection(new("1000000002"), date(2024, 4, 10), CorrectionKind.CORRECT)
    result = review([corrected, orphan], register, head=control(DataType.CORRECTION))
    assert codes(result) == [(3, "correction_target_unknown")]
    deleted = RecipientCorrection(new("1000000001"), date(2024, 4, 11), CorrectionKind.DELETE)
    # A second correction of the same 異動 in the same month is a duplicate…
    assert codes(review([deleted], register, head=control(DataType.CORRECTION))) == [
        (2, "duplicate_record")
    ]
    register.month_keys.clear()  # …but not in another month's file.
    result = review([deleted], register, head=control(DataType.CORRECTION))
    assert result.status == "accepted"
    assert not register.is_active("1000000001")


def test_layout_errors_of_one_record_leave_the_others_accepted() -> None:
    data = encode_file(TransmissionFile.build(control(), [new("1000000001"), new("1000000002")]))
    result = review([], data=data.replace(b'"1000000002"', b'"100000000X"'))
    assert result.status == "partially_accepted"
    assert codes(result) == [(3, "csv_field_invalid")]
    assert result.errors[0].field == "被保険者番号"
