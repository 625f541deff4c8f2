"""国保連 CSV codec: 受給者異動連絡票 (531/5311) and 受給者訂正連絡票 (532/5321).

All names and numbers here are synthetic; the golden files are written out
byte by byte so that the exact wire format is pinned.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import unicodedata
from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chukan.codecs.errors import (
    CsvCharsetError,
    CsvCountMismatchError,
    CsvDataTypeError,
    CsvError,
    CsvFieldError,
    CsvFileNameError,
    CsvStructureError,
    KokuhorenCsvError,
)
from chukan.codecs.kokuhoren import (
    CHANGE_COLUMNS,
    CONTROL_COLUMNS,
    CORRECTION_COLUMNS,
    BurdenRatio,
    CareLevel,
    ChangeKind,
    ChangeReason,
    ControlRecord,
    CorrectionKind,
    CsvLimits,
    DataRecord,
    DataType,
    DecodeResult,
    EndRecord,
    FileName,
    Medium,
    NumberedRecord,
    RecipientChange,
    RecipientCorrection,
    RecordError,
    Sex,
    TransmissionFile,
    YearMonth,
    check_file_name,
    decode_file,
    decode_record,
    decode_records,
    encode_file,
    encode_record,
    file_name,
    insurer_check_digit,
    is_valid_insurer_number,
    parse_file_name,
)
from chukan.codecs.kokuhoren_fields import Column, join_values, split_values

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- golden files

GOLDEN_531 = (
    b'"1","1","1","2","531","","121004","","12","1","202404","0000000001"\r\n'
    b'"2","2","5311","20240401","1","03","121004","0000012345",'
    b'"\xc3\xbd\xc4 \xca\xc5\xba","\xee\xe0\xed\x95 \x89\xd4\x8e\x71","19450310","2",'
    b'"20100310","","21","20240401","20260331","16765","20240401","20260331","1","0",""\r\n'
    b'"2","3","5311","20240415","3","02","121004","0000067890",'
    b'"\x83\x65\x83\x58\x83\x67\x81\x40\x83\x5c\x83\x45\x83\x5e","","19400101","1",'
    b'"20050101","20240410","","","","","","","2","1","131011"\r\n'
    b'"3","4"\r\n'
)

CONTROL_531 = ControlRecord(
    volume_number=1,
    record_count=2,
    data_type=DataType.CHANGE,
    welfare_office_number=None,
    insurer_number="121004",
    prefecture_number="12",
    medium=Medium.TRANSMISSION,
    processing_month=YearMonth(2024, 4),
    file_management_number="0000000001",
)

CHANGE_A = RecipientChange(
    changed_on=date(2024, 4, 1),
    change_kind=ChangeKind.NEW,
    change_reason=ChangeReason.CERTIFICATION_NEW,
    certificate_insurer_number="121004",
    insured_number="0000012345",
    name_kana="ﾃｽﾄ ﾊﾅｺ",
    name="髙﨑 花子",
    birth_date=date(1945, 3, 10),
    sex=Sex.FEMALE,
    qualified_on=date(2010, 3, 10),
    disqualified_on=None,
    care_level=CareLevel.CARE_1,
    certification_start=date(2024, 4, 1),
    certification_end=date(2026, 3, 31),
    benefit_limit=16765,
    limit_start=date(2024, 4, 1),
    limit_end=date(2026, 3, 31),
    burden_ratio=BurdenRatio.ONE,
    special_address=False,
    facility_insurer_number=None,
)

CHANGE_B = RecipientChange(
    changed_on=date(2024, 4, 15),
    change_kind=ChangeKind.END,
    change_reason=ChangeReason.QUALIFICATION_LOST,
    certificate_insurer_number="121004",
    insured_number="0000067890",
    name_kana="テスト　ソウタ",
    name=None,
    birth_date=date(1940, 1, 1),
    sex=Sex.MALE,
    qualified_on=date(2005, 1, 1),
    disqualified_on=date(2024, 4, 10),
    care_level=None,
    certification_start=None,
    certification_end=None,
    benefit_limit=None,
    limit_start=None,
    limit_end=None,
    burden_ratio=BurdenRatio.TWO,
    special_address=True,
    facility_insurer_number="131011",
)

FILE_531 = TransmissionFile(CONTROL_531, (CHANGE_A, CHANGE_B))

GOLDEN_532 = (
    b'"1","1","1","1","532","01","121004","","12","1","202405","0000000002"\r\n'
    b'"2","2","5321","20240401","2","05","121004","0000012345",'
    b'"\xbc\xb9\xdd \xc0\xdb\xb3","\x8e\x8e\x8c\xb1""\x91\xbe\x98\x59""","19450310","2",'
    b'"20100310","","12","20240401","20250331","5032","20240401","20250331","1","0","",'
    b'"20240501","1"\r\n'
    b'"3","3"\r\n'
)

CORRECTION_A = RecipientCorrection(
    change=replace(
        CHANGE_A,
        change_kind=ChangeKind.CHANGE,
        change_reason=ChangeReason.CERTIFICATION_LEVEL_CHANGE,
        name_kana="ｼｹﾝ ﾀﾛｳ",
        name='試験"太郎"',
        care_level=CareLevel.SUPPORT_1,
        certification_end=date(2025, 3, 31),
        benefit_limit=5032,
        limit_end=date(2025, 3, 31),
    ),
    corrected_on=date(2024, 5, 1),
    correction_kind=CorrectionKind.CORRECT,
)

FILE_532 = TransmissionFile(
    replace(
        CONTROL_531,
        record_count=1,
        data_type=DataType.CORRECTION,
        welfare_office_number="01",
        processing_month=YearMonth(2024, 5),
        file_management_number="0000000002",
    ),
    (CORRECTION_A,),
)


def test_golden_531_encodes_byte_for_byte() -> None:
    assert encode_file(FILE_531) == GOLDEN_531


def test_golden_531_decodes() -> None:
    assert decode_file(GOLDEN_531) == FILE_531


def test_golden_532_encodes_byte_for_byte() -> None:
    assert encode_file(FILE_532) == GOLDEN_532


def test_golden_532_decodes() -> None:
    assert decode_file(GOLDEN_532) == FILE_532


def test_golden_files_are_accepted_whole_by_the_lenient_decoder() -> None:
    result = decode_records(GOLDEN_531)
    assert result.ok
    assert result.control == CONTROL_531
    assert result.records == (NumberedRecord(2, CHANGE_A), NumberedRecord(3, CHANGE_B))


def test_build_sets_the_record_count() -> None:
    built = TransmissionFile.build(replace(CONTROL_531, record_count=99), [CHANGE_A, CHANGE_B])
    assert built == FILE_531


def test_ibm_extension_bytes_decode_like_nec_selected_ones() -> None:
    # 髙 is 0xEEE0 (NEC-selected IBM extension, what we write) and 0xFBFC (IBM extension).
    ibm = GOLDEN_531.replace(b"\xee\xe0", b"\xfb\xfc")
    assert decode_file(ibm) == FILE_531


def test_single_records_round_trip() -> None:
    for number, record in ((1, CONTROL_531), (2, CHANGE_A), (7, CORRECTION_A), (4, EndRecord())):
        line = encode_record(record, number)
        assert line.endswith(b"\r\n")
        assert decode_record(line) == NumberedRecord(number, record)
        assert decode_record(line.removesuffix(b"\r\n")) == NumberedRecord(number, record)


def test_golden_lines_decode_one_by_one() -> None:
    lines = GOLDEN_531.split(b"\r\n")[:-1]
    assert [decode_record(line).record for line in lines] == [
        CONTROL_531,
        CHANGE_A,
        CHANGE_B,
        EndRecord(),
    ]


def test_layouts_match_the_documented_value_counts() -> None:
    assert (len(CONTROL_COLUMNS), len(CHANGE_COLUMNS), len(CORRECTION_COLUMNS)) == (12, 23, 25)


# --------------------------------------------------------------------------- check digit


@pytest.mark.parametrize("number", ["131011", "131029", "131037", "131045"])
def test_check_digit_of_published_insurer_numbers(number: str) -> None:
    # 介護保険 保険者番号 of Tokyo's 千代田区, 中央区, 港区 and 新宿区.
    assert insurer_check_digit(number[:5]) == int(number[5])
    assert is_valid_insurer_number(number)


def test_check_digit_worked_example_with_two_digit_product() -> None:
    # 1 2 3 4 5 × 2 1 2 1 2 → 2 2 6 4 10; 10 counts 1+0; sum 15 → 10 - 5 = 5.
    assert insurer_check_digit("12345") == 5
    # 0 0 0 1 9 → 0 0 0 1 18; 18 counts 1+8; sum 10 ends in 0 → check digit 0.
    assert insurer_check_digit("00019") == 0


def _luhn_ok(number: str) -> bool:
    """An independent statement of the rule: the Luhn check over all six digits."""
    total = 0
    for position, char in enumerate(reversed(number)):
        product = int(char) * (2 if position % 2 == 1 else 1)
        total += product - 9 if product > 9 else product
    return total % 10 == 0


@FAST
@given(st.from_regex(r"[0-9]{5}", fullmatch=True))
def test_check_digit_is_the_only_luhn_digit(body: str) -> None:
    fitting = [d for d in range(10) if _luhn_ok(f"{body}{d}")]
    assert fitting == [insurer_check_digit(body)]


@FAST
@given(st.integers(1, 47), st.integers(0, 999), st.integers(0, 4), st.integers(1, 9))
def test_any_single_digit_error_is_detected(pref: int, rest: int, index: int, delta: int) -> None:
    body = f"{pref:02d}{rest:03d}"
    number = body + str(insurer_check_digit(body))
    assert is_valid_insurer_number(number)
    wrong = number[:index] + str((int(number[index]) + delta) % 10) + number[index + 1 :]
    assert insurer_check_digit(wrong[:5]) != int(wrong[5])


@pytest.mark.parametrize("body", ["1234", "123456", "12a45", "１２３４５", ""])
def test_check_digit_refuses_bad_bodies(body: str) -> None:
    with pytest.raises(ValueError, match="five digits"):
        insurer_check_digit(body)


@pytest.mark.parametrize("number", ["121005", "12100", "1210045", "001008", "481004", "12100a"])
def test_invalid_insurer_numbers(number: str) -> None:
    assert not is_valid_insurer_number(number)


# --------------------------------------------------------------------------- strategies


def _cp932_printable() -> str:
    """Every character CP932 carries and gives back unchanged, controls and 外字 excepted."""
    found: set[str] = set()
    singles = [bytes([b]) for b in itertools.chain(range(0x20, 0x7F), range(0xA1, 0xE0))]
    doubles = [
        bytes([lead, trail])
        for lead in itertools.chain(range(0x81, 0xA0), range(0xE0, 0xFD))
        for trail in itertools.chain(range(0x40, 0x7F), range(0x80, 0xFD))
    ]
    for raw in singles + doubles:
        try:
            char = raw.decode("cp932")
        except UnicodeDecodeError:
            continue
        if unicodedata.category(char) in {"Cc", "Co", "Cf"}:
            continue
        if char.encode("cp932").decode("cp932") == char:
            found.add(char)
    return "".join(sorted(found))


CP932_TEXT = _cp932_printable()
CP932_ONLY = "髙﨑①Ⅲ㈱№∵纊"  # NEC special, NEC-selected IBM and IBM extension characters
FULL_KANA = "".join(chr(c) for c in range(0x30A1, 0x30F7)) + "ー・\u3000"
HALF_KANA = "".join(chr(c) for c in range(0xFF65, 0xFFA0)) + " "

dates = st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31))
ordered_dates = st.tuples(dates, dates).map(sorted)


@st.composite
def insurer_numbers(draw: st.DrawFn) -> str:
    body = f"{draw(st.integers(1, 47)):02d}{draw(st.integers(0, 999)):03d}"
    return body + str(insurer_check_digit(body))


kana_names = st.one_of(
    st.text(alphabet=FULL_KANA, min_size=1, max_size=25),
    st.text(alphabet=HALF_KANA, min_size=1, max_size=25),
    st.text(alphabet=FULL_KANA + HALF_KANA, min_size=1, max_size=25),
)
kanji_names = st.one_of(
    st.none(),
    st.text(alphabet=CP932_TEXT, min_size=1, max_size=25),
    st.text(alphabet=CP932_ONLY + '"," 試験', min_size=1, max_size=25),
)


@st.composite
def changes(draw: st.DrawFn) -> RecipientChange:
    qualified, disqualified = draw(ordered_dates)
    level = draw(st.none() | st.sampled_from(CareLevel))
    certification: tuple[date | None, date | None] = (None, None)
    if level is not None and level.is_certified:
        start, end = draw(ordered_dates)
        certification = (start, end)
    limit = draw(st.none() | st.tuples(st.integers(0, 999_999), ordered_dates))
    special = draw(st.booleans())
    return RecipientChange(
        changed_on=draw(dates),
        change_kind=draw(st.sampled_from(ChangeKind)),
        change_reason=draw(st.sampled_from(ChangeReason)),
        certificate_insurer_number=draw(insurer_numbers()),
        insured_number=draw(st.from_regex(r"[0-9]{10}", fullmatch=True)),
        name_kana=draw(kana_names),
        name=draw(kanji_names),
        birth_date=draw(dates),
        sex=draw(st.sampled_from(Sex)),
        qualified_on=qualified,
        disqualified_on=draw(st.sampled_from([None, disqualified])),
        care_level=level,
        certification_start=certification[0],
        certification_end=certification[1],
        benefit_limit=None if limit is None else limit[0],
        limit_start=None if limit is None else limit[1][0],
        limit_end=None if limit is None else limit[1][1],
        burden_ratio=draw(st.sampled_from(BurdenRatio)),
        special_address=special,
        facility_insurer_number=draw(insurer_numbers()) if special else None,
    )


corrections = st.builds(
    RecipientCorrection,
    change=changes(),
    corrected_on=dates,
    correction_kind=st.sampled_from(CorrectionKind),
)


@st.composite
def controls(draw: st.DrawFn, data_type: DataType) -> ControlRecord:
    insurer = draw(insurer_numbers())
    return ControlRecord(
        volume_number=draw(st.integers(1, 999)),
        record_count=0,
        data_type=data_type,
        welfare_office_number=draw(st.none() | st.from_regex(r"[0-9]{1,10}", fullmatch=True)),
        insurer_number=insurer,
        prefecture_number=insurer[:2],
        medium=draw(st.sampled_from(Medium)),
        processing_month=YearMonth(draw(st.integers(1, 9999)), draw(st.integers(1, 12))),
        file_management_number=draw(st.from_regex(r"[0-9]{1,10}", fullmatch=True)),
    )


@st.composite
def files(draw: st.DrawFn, data_type: DataType) -> TransmissionFile:
    control = draw(controls(data_type))
    records: list[DataRecord] = (
        list(draw(st.lists(changes(), min_size=1, max_size=4)))
        if data_type is DataType.CHANGE
        else list(draw(st.lists(corrections, min_size=1, max_size=4)))
    )
    return TransmissionFile.build(control, records)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("data_type", list(DataType))
@FAST
@given(data=st.data())
def test_file_round_trip(data_type: DataType, data: st.DataObject) -> None:
    file = data.draw(files(data_type))
    encoded = encode_file(file)
    assert decode_file(encoded) == file
    result = decode_records(encoded)
    assert result.ok
    assert [item.record_number for item in result.records] == list(range(2, len(file.records) + 2))
    assert tuple(item.record for item in result.records) == file.records


@FAST
@given(st.one_of(changes(), corrections), st.integers(1, 9_999_999_999))
def test_record_round_trip(record: DataRecord, number: int) -> None:
    assert decode_record(encode_record(record, number)) == NumberedRecord(number, record)


@FAST
@given(files(DataType.CHANGE))
def test_wire_shape(file: TransmissionFile) -> None:
    encoded = encode_file(file)
    assert encoded.endswith(b"\r\n")
    lines = encoded.split(b"\r\n")[:-1]
    assert len(lines) == len(file.records) + 2
    for line in lines:
        assert b"\n" not in line
        assert b"\r" not in line
        text = line.decode("cp932")
        assert text.startswith('"')
        assert text.endswith('"')
        assert join_values(split_values(text)) == text


def test_cp932_only_characters_round_trip_in_names() -> None:
    change = replace(CHANGE_A, name=CP932_ONLY)
    file = TransmissionFile.build(CONTROL_531, [change])
    assert decode_file(encode_file(file)).records == (change,)


# --------------------------------------------------------------------------- helpers for bad input


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def _layout(line: bytes) -> tuple[Column, ...]:
    values = split_values(line.decode("cp932"))
    if values[0] == "1":
        return CONTROL_COLUMNS
    return CORRECTION_COLUMNS if values[2] == "5321" else CHANGE_COLUMNS


def _with_values(data: bytes, line_number: int, changes: dict[str, str]) -> bytes:
    """``data`` with some values of one line replaced, quoting kept correct."""
    lines = _lines(data)
    line = lines[line_number - 1]
    names = [col.name for col in _layout(line)]
    values = split_values(line.decode("cp932"))
    for name, value in changes.items():
        values[names.index(name)] = value
    lines[line_number - 1] = join_values(values).encode("cp932")
    return _join(lines)


def _expect_error(data: bytes, code: str, record_number: int | None, field: str | None) -> None:
    """Strict decoding raises it first, lenient decoding reports it first."""
    with pytest.raises(KokuhorenCsvError) as caught:
        decode_file(data)
    error = caught.value
    assert (error.code, error.record_number, error.field) == (code, record_number, field)
    result = decode_records(data)
    assert not result.ok
    assert result.errors[0] == RecordError(record_number, field, code, error.message)
    assert record_number not in {item.record_number for item in result.records}


# --------------------------------------------------------------------------- field errors

FIELD_CASES = [
    ("short number", 2, {"被保険者番号": "123456789"}, "csv_field_invalid", "被保険者番号"),
    ("long number", 2, {"被保険者番号": "12345678901"}, "csv_field_invalid", "被保険者番号"),
    ("non-digit", 2, {"被保険者番号": "12345678A9"}, "csv_field_invalid", "被保険者番号"),
    (
        "full-width digits",
        2,
        {"被保険者番号": "１２３４５６７８９０"},
        "csv_field_invalid",
        "被保険者番号",
    ),
    ("empty required", 2, {"生年月日": ""}, "csv_field_invalid", "生年月日"),
    ("short date", 2, {"生年月日": "1945031"}, "csv_field_invalid", "生年月日"),
    ("29 February 1945", 2, {"生年月日": "19450229"}, "csv_field_invalid", "生年月日"),
    ("month 13", 2, {"異動年月日": "20241301"}, "csv_field_invalid", "異動年月日"),
    ("day 32", 3, {"資格喪失年月日": "20240432"}, "csv_field_invalid", "資格喪失年月日"),
    ("year zero", 2, {"資格取得年月日": "00000310"}, "csv_field_invalid", "資格取得年月日"),
    ("month 13 (control)", 1, {"処理対象年月": "202413"}, "csv_field_invalid", "処理対象年月"),
    ("short month", 1, {"処理対象年月": "20244"}, "csv_field_invalid", "処理対象年月"),
    ("異動区分 4", 2, {"異動区分コード": "4"}, "csv_code_unknown", "異動区分コード"),
    ("異動事由 98", 2, {"異動事由": "98"}, "csv_code_unknown", "異動事由"),
    ("異動事由 3", 2, {"異動事由": "3"}, "csv_code_unknown", "異動事由"),
    ("性別 3", 2, {"性別コード": "3"}, "csv_code_unknown", "性別コード"),
    ("要介護 11", 2, {"要介護状態区分コード": "11"}, "csv_code_unknown", "要介護状態区分コード"),
    ("負担割合 4", 2, {"利用者負担割合": "4"}, "csv_code_unknown", "利用者負担割合"),
    ("住所地特例 2", 2, {"住所地特例対象者区分": "2"}, "csv_code_unknown", "住所地特例対象者区分"),
    ("データ種別 533", 1, {"データ種別": "533"}, "csv_code_unknown", "データ種別"),
    ("媒体区分 9", 1, {"媒体区分": "9"}, "csv_code_unknown", "媒体区分"),
    ("都道府県 48", 1, {"都道府県番号": "48"}, "csv_code_unknown", "都道府県番号"),
    ("都道府県 mismatch", 1, {"都道府県番号": "13"}, "csv_field_invalid", "都道府県番号"),
    ("事業所番号 given", 1, {"事業所番号": "1210000001"}, "csv_field_invalid", "事業所番号"),
    ("ボリューム通番 0", 1, {"ボリューム通番": "0"}, "csv_field_invalid", "ボリューム通番"),
    (
        "ファイル管理番号 empty",
        1,
        {"ファイル管理番号": ""},
        "csv_field_invalid",
        "ファイル管理番号",
    ),
    ("check digit", 2, {"証記載保険者番号": "121005"}, "csv_check_digit", "証記載保険者番号"),
    ("control check digit", 1, {"保険者番号": "121009"}, "csv_check_digit", "保険者番号"),
    ("prefecture 00", 2, {"証記載保険者番号": "001008"}, "csv_field_invalid", "証記載保険者番号"),
    (
        "facility digit",
        3,
        {"施設所在保険者番号": "131012"},
        "csv_check_digit",
        "施設所在保険者番号",
    ),
    (
        "kana with kanji",
        2,
        {"被保険者氏名カナ": "テスト花子"},
        "csv_field_invalid",
        "被保険者氏名カナ",
    ),
    ("kana hiragana", 2, {"被保険者氏名カナ": "てすと"}, "csv_field_invalid", "被保険者氏名カナ"),
    ("kana latin", 2, {"被保険者氏名カナ": "TESUTO"}, "csv_field_invalid", "被保険者氏名カナ"),
    ("kana too long", 2, {"被保険者氏名カナ": "ア" * 26}, "csv_field_invalid", "被保険者氏名カナ"),
    ("kana empty", 2, {"被保険者氏名カナ": ""}, "csv_field_invalid", "被保険者氏名カナ"),
    ("name too long", 2, {"被保険者氏名": "試" * 26}, "csv_field_invalid", "被保険者氏名"),
    ("name with tab", 2, {"被保険者氏名": "試\t験"}, "csv_charset", "被保険者氏名"),
    (
        "認定 start > end",
        2,
        {"認定有効期間開始年月日": "20260401", "認定有効期間終了年月日": "20240331"},
        "csv_period_invalid",
        "認定有効期間終了年月日",
    ),
    (
        "限度額 start > end",
        2,
        {"限度額適用期間開始年月日": "20260401", "限度額適用期間終了年月日": "20260331"},
        "csv_period_invalid",
        "限度額適用期間終了年月日",
    ),
    (
        "喪失 before 取得",
        3,
        {"資格喪失年月日": "20041231"},
        "csv_period_invalid",
        "資格喪失年月日",
    ),
    (
        "認定 without end",
        2,
        {"認定有効期間終了年月日": ""},
        "csv_field_invalid",
        "認定有効期間終了年月日",
    ),
    (
        "非該当 with a period",
        2,
        {"要介護状態区分コード": "01"},
        "csv_field_invalid",
        "認定有効期間開始年月日",
    ),
    (
        "非認定 with a period",
        3,
        {"認定有効期間開始年月日": "20240401"},
        "csv_field_invalid",
        "認定有効期間開始年月日",
    ),
    (
        "限度額 without its period",
        3,
        {"居宅サービス等区分支給限度基準額": "16765"},
        "csv_field_invalid",
        "限度額適用期間開始年月日",
    ),
    (
        "限度額 period without amount",
        2,
        {"居宅サービス等区分支給限度基準額": ""},
        "csv_field_invalid",
        "居宅サービス等区分支給限度基準額",
    ),
    (
        "住所地特例 without facility",
        2,
        {"住所地特例対象者区分": "1"},
        "csv_field_invalid",
        "施設所在保険者番号",
    ),
    (
        "facility without 住所地特例",
        3,
        {"住所地特例対象者区分": "0"},
        "csv_field_invalid",
        "施設所在保険者番号",
    ),
    ("レコード番号 gap", 3, {"レコード番号": "4"}, "csv_record_number", "レコード番号"),
    ("レコード番号 repeated", 3, {"レコード番号": "2"}, "csv_record_number", "レコード番号"),
    ("レコード件数 too high", 1, {"レコード件数": "3"}, "csv_count_mismatch", "レコード件数"),
    ("レコード件数 too low", 1, {"レコード件数": "1"}, "csv_count_mismatch", "レコード件数"),
    ("レコード件数 zero", 1, {"レコード件数": "0"}, "csv_field_invalid", "レコード件数"),
    ("交換情報 5312", 2, {"交換情報識別番号": "5312"}, "csv_code_unknown", "交換情報識別番号"),
    ("レコード種別 4", 2, {"レコード種別": "4"}, "csv_code_unknown", "レコード種別"),
]


@pytest.mark.parametrize(
    ("line", "changes", "code", "field"),
    [case[1:] for case in FIELD_CASES],
    ids=[case[0] for case in FIELD_CASES],
)
def test_field_errors(line: int, changes: dict[str, str], code: str, field: str) -> None:
    data = _with_values(GOLDEN_531, line, changes)
    _expect_error(data, code, line, field)
    with pytest.raises(KokuhorenCsvError) as caught:
        decode_file(data)
    for value in changes.values():
        if len(value) >= 3:  # never echo a value: names and numbers are personal data
            assert value not in str(caught.value)


def test_record_number_that_is_not_a_number_also_fails_its_format() -> None:
    result = decode_records(_with_values(GOLDEN_531, 2, {"レコード番号": "x"}))
    assert [(e.record_number, e.field, e.code) for e in result.errors] == [
        (2, "レコード番号", "csv_field_invalid")
    ]


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"訂正区分コード": "3"}, "csv_code_unknown", "訂正区分コード"),
        ({"訂正年月日": "20240532"}, "csv_field_invalid", "訂正年月日"),
        ({"訂正年月日": ""}, "csv_field_invalid", "訂正年月日"),
    ],
)
def test_correction_field_errors(changes: dict[str, str], code: str, field: str) -> None:
    _expect_error(_with_values(GOLDEN_532, 2, changes), code, 2, field)


def test_a_record_reports_every_bad_field() -> None:
    data = _with_values(GOLDEN_531, 2, {"性別コード": "9", "生年月日": "19451301"})
    result = decode_records(data)
    assert [(e.record_number, e.field) for e in result.errors] == [
        (2, "生年月日"),
        (2, "性別コード"),
    ]


def test_lenient_decoding_keeps_the_good_records() -> None:
    file = TransmissionFile.build(CONTROL_531, [CHANGE_A, CHANGE_B, CHANGE_A])
    data = _with_values(encode_file(file), 3, {"被保険者番号": "12345"})
    result = decode_records(data)
    assert result.control == replace(CONTROL_531, record_count=3)
    assert result.records == (NumberedRecord(2, CHANGE_A), NumberedRecord(4, CHANGE_A))
    assert result.errors == (
        RecordError(3, "被保険者番号", "csv_field_invalid", "value has 5 digits, expected 10"),
    )
    assert str(CsvFieldError("x", record_number=3, field="被保険者番号")) == (
        "x (at record 3, 被保険者番号)"
    )


# --------------------------------------------------------------------------- file-level errors


def test_data_type_must_agree_with_the_exchange_id() -> None:
    lines = _lines(GOLDEN_531)
    lines[2] = encode_record(CORRECTION_A, 3).removesuffix(b"\r\n")
    _expect_error(_join(lines), "csv_data_type_mismatch", 3, "交換情報識別番号")


def test_data_type_mismatch_in_a_532_file() -> None:
    lines = _lines(GOLDEN_532)
    lines[1] = encode_record(CHANGE_A, 2).removesuffix(b"\r\n")
    _expect_error(_join(lines), "csv_data_type_mismatch", 2, "交換情報識別番号")


def test_encoder_refuses_records_of_the_other_data_type() -> None:
    with pytest.raises(CsvDataTypeError) as caught:
        encode_file(TransmissionFile.build(CONTROL_531, [CHANGE_A, CORRECTION_A]))
    assert (caught.value.record_number, caught.value.field) == (3, "交換情報識別番号")


def test_encoder_refuses_a_wrong_record_count() -> None:
    with pytest.raises(CsvCountMismatchError) as caught:
        encode_file(TransmissionFile(CONTROL_531, (CHANGE_A,)))
    assert (caught.value.record_number, caught.value.field) == (1, "レコード件数")


def test_encoder_refuses_an_empty_file() -> None:
    with pytest.raises(CsvFieldError) as caught:
        encode_file(TransmissionFile.build(CONTROL_531, []))
    assert (caught.value.record_number, caught.value.field) == (1, "レコード件数")


def test_missing_end_record() -> None:
    _expect_error(_join(_lines(GOLDEN_531)[:-1]), "csv_structure", None, None)


def test_control_record_must_come_first() -> None:
    lines = _lines(GOLDEN_531)
    _expect_error(_join([lines[1], lines[0], *lines[2:]]), "csv_structure", 1, "レコード種別")


def test_end_record_must_come_last() -> None:
    lines = _lines(_with_values(GOLDEN_531, 1, {"レコード件数": "3"}))
    _expect_error(_join([lines[0], b'"3","2"', *lines[1:]]), "csv_structure", 2, "レコード種別")


def test_only_one_control_record() -> None:
    lines = _lines(_with_values(GOLDEN_531, 1, {"レコード件数": "3"}))
    _expect_error(_join([lines[0], lines[0], *lines[1:]]), "csv_structure", 2, "レコード種別")


def test_control_record_alone() -> None:
    # レコード件数 2 but no data records, and no end record.
    result = decode_records(_join(_lines(GOLDEN_531)[:1]))
    assert [(e.record_number, e.code) for e in result.errors] == [
        (1, "csv_count_mismatch"),
        (None, "csv_structure"),
    ]


def test_too_many_values() -> None:
    lines = _lines(GOLDEN_531)
    lines[1] += b',""'
    _expect_error(_join(lines), "csv_field_count", 2, None)


def test_too_few_values() -> None:
    lines = _lines(GOLDEN_531)
    lines[1] = b'"2"'
    _expect_error(_join(lines), "csv_field_count", 2, None)


def test_empty_file() -> None:
    _expect_error(b"", "csv_structure", None, None)


# --------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("old", "new", "record", "column"),
    [
        (b'"2","2","5311"', b'"2",2,"5311"', 2, "column 2"),
        (b'"0000012345"', b"0000012345", 2, "column 8"),
        (b'"0000012345"', b'"00000"12345"', 2, "column 8"),
        (b'"0000012345"', b'"00000""12345', 2, "column 8"),
        (b'"3","4"', b'"3","4', 4, "column 2"),
        (b'"3","4"', b'"3","4",', 4, "column 3"),
        (b'"3","4"', b'"3", "4"', 4, "column 2"),
        (b'"2","2","5311"', b"'2','2','5311'", 2, "column 1"),
        (b'"3","4"', b'"3";"4"', 4, "column 1"),
    ],
)
def test_quoting_errors(old: bytes, new: bytes, record: int, column: str) -> None:
    assert old in GOLDEN_531
    _expect_error(GOLDEN_531.replace(old, new, 1), "csv_syntax", record, column)


def test_empty_line() -> None:
    lines = _lines(_with_values(GOLDEN_531, 1, {"レコード件数": "3"}))
    _expect_error(_join([*lines[:2], b"", *lines[2:]]), "csv_syntax", 3, None)


def test_split_values_unquotes_doubled_quotes() -> None:
    assert split_values('"a""b","",""""') == ['a"b', "", '"']
    assert join_values(['a"b', "", '"']) == '"a""b","",""""'


# --------------------------------------------------------------------------- line ends


def test_lf_only_line_ends() -> None:
    _expect_error(GOLDEN_531.replace(b"\r\n", b"\n"), "csv_line_end", None, None)


def test_cr_only_line_ends() -> None:
    _expect_error(GOLDEN_531.replace(b"\r\n", b"\r"), "csv_line_end", None, None)


def test_one_lf_only_line_end() -> None:
    _expect_error(GOLDEN_531.replace(b"\r\n", b"\n", 1), "csv_line_end", 1, None)


def test_lf_inside_a_value() -> None:
    data = GOLDEN_531.replace(b'"0000067890"', b'"00000\n67890"')
    _expect_error(data, "csv_line_end", 3, None)


def test_missing_final_crlf() -> None:
    _expect_error(GOLDEN_531[:-2], "csv_line_end", 4, None)


# --------------------------------------------------------------------------- character set


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"name": "𠮷田 花子"}, "被保険者氏名"),
        ({"name": "テスト 😀"}, "被保険者氏名"),
        ({"name": "試験〜太郎"}, "被保険者氏名"),  # U+301C WAVE DASH folds onto U+FF5E
        ({"name": "試験\u2212太郎"}, "被保険者氏名"),  # U+2212 MINUS folds onto U+FF0D
        ({"name_kana": "テスト😀"}, "被保険者氏名カナ"),
        ({"name_kana": "ヷテスト"}, "被保険者氏名カナ"),  # U+30F7 is not in CP932
    ],
)
def test_characters_outside_cp932_name_their_record(bad: dict[str, Any], field: str) -> None:
    file = TransmissionFile.build(CONTROL_531, [CHANGE_A, CHANGE_B, replace(CHANGE_A, **bad)])
    with pytest.raises(CsvCharsetError) as caught:
        encode_file(file)
    error = caught.value
    assert (error.code, error.record_number, error.field) == ("csv_charset", 4, field)
    assert "record 4" in str(error)
    assert next(iter(bad.values())) not in str(error)


def test_undecodable_bytes_name_their_record() -> None:
    data = GOLDEN_531.replace(b"\x89\xd4\x8e\x71", b"\x81\x7f")
    _expect_error(data, "csv_charset", 2, None)
    assert decode_records(data).records == (NumberedRecord(3, CHANGE_B),)


def test_truncated_double_byte_character() -> None:
    _expect_error(GOLDEN_531.replace(b"\x89\xd4\x8e\x71", b"\x89"), "csv_charset", 2, None)


@pytest.mark.parametrize(
    "raw",
    [b"\xf0\x40", b"\x80", b"\xa0", b"\xfd"],
    ids=["gaiji", "0x80", "0xA0", "0xFD"],
)
def test_gaiji_and_control_bytes_are_refused(raw: bytes) -> None:
    data = GOLDEN_531.replace(b"\x89\xd4\x8e\x71", raw)
    _expect_error(data, "csv_charset", 2, "被保険者氏名")


def test_utf8_byte_order_mark() -> None:
    _expect_error(b"\xef\xbb\xbf" + GOLDEN_531, "csv_charset", None, None)


# --------------------------------------------------------------------------- encoder checks


def test_encoder_checks_types_instead_of_crashing() -> None:
    bad = replace(CHANGE_A, birth_date="19450310")  # type: ignore[arg-type]
    with pytest.raises(CsvFieldError) as caught:
        encode_record(bad, 2)
    assert (caught.value.record_number, caught.value.field) == (2, "生年月日")


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"sex": "1"}, "性別コード"),
        ({"benefit_limit": True}, "居宅サービス等区分支給限度基準額"),
        ({"benefit_limit": -1}, "居宅サービス等区分支給限度基準額"),
        ({"insured_number": 12345}, "被保険者番号"),
        ({"special_address": 1}, "住所地特例対象者区分"),
        ({"name": ""}, "被保険者氏名"),
        ({"name_kana": None}, "被保険者氏名カナ"),
    ],
)
def test_encoder_refuses_bad_values(bad: dict[str, object], field: str) -> None:
    with pytest.raises(CsvFieldError) as caught:
        encode_record(replace(CHANGE_A, **bad), 5)  # type: ignore[arg-type]
    assert (caught.value.record_number, caught.value.field) == (5, field)


def test_encoder_refuses_a_bad_control_month_type() -> None:
    control = replace(CONTROL_531, processing_month=date(2024, 4, 1))  # type: ignore[arg-type]
    with pytest.raises(CsvFieldError) as caught:
        encode_record(control, 1)
    assert caught.value.field == "処理対象年月"


def test_encoder_refuses_record_number_zero() -> None:
    with pytest.raises(CsvFieldError) as caught:
        encode_record(CHANGE_A, 0)
    assert caught.value.field == "レコード番号"


def test_encoder_refuses_non_records() -> None:
    with pytest.raises(CsvStructureError):
        encode_record(object(), 1)  # type: ignore[arg-type]


def test_decode_record_errors_carry_the_wire_record_number() -> None:
    line = _lines(_with_values(GOLDEN_531, 3, {"被保険者番号": "1"}))[2]
    with pytest.raises(CsvFieldError) as caught:
        decode_record(line)
    assert (caught.value.record_number, caught.value.field) == (3, "被保険者番号")


# --------------------------------------------------------------------------- hostile input


def test_file_size_limit() -> None:
    _expect_limit(GOLDEN_531, CsvLimits(max_bytes=100), None)


def test_line_length_limit() -> None:
    _expect_limit(GOLDEN_531, CsvLimits(max_line_bytes=100), 2)


def test_record_count_limit() -> None:
    _expect_limit(GOLDEN_531 * 3, CsvLimits(max_records=1), None)


def _expect_limit(data: bytes, limits: CsvLimits, record_number: int | None) -> None:
    with pytest.raises(KokuhorenCsvError) as caught:
        decode_file(data, limits)
    assert (caught.value.code, caught.value.record_number) == ("csv_too_large", record_number)
    result = decode_records(data, limits)
    assert (result.errors[0].code, result.errors[0].record_number) == (
        "csv_too_large",
        record_number,
    )


def test_lenient_decoding_stops_after_max_errors() -> None:
    data = b'"x"\r\n' * 50
    result = decode_records(data, CsvLimits(max_errors=5))
    assert len(result.errors) == 6
    assert result.errors[-1].code == "csv_too_large"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_codec_errors(data: bytes) -> None:
    _only_codec_errors(data)


@st.composite
def mutated_golden(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([GOLDEN_531, GOLDEN_532])))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(
            st.sampled_from([0x22, 0x2C, 0x0D, 0x0A, 0x81, 0x5C, 0xF0]) | st.integers(0, 255)
        )
        if action == "replace":
            data[position] = byte
        elif action == "insert":
            data.insert(position, byte)
        else:
            del data[position]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(mutated_golden())
def test_mutated_files_only_raise_codec_errors(data: bytes) -> None:
    _only_codec_errors(data)


def _only_codec_errors(data: bytes) -> None:
    # Anything but a CsvError propagates and fails the test.
    with contextlib.suppress(CsvError):
        decode_file(data)
    result = decode_records(data)
    assert isinstance(result, DecodeResult)
    assert all(isinstance(error, RecordError) for error in result.errors)
    for line in data.split(b"\r\n")[:3]:
        with contextlib.suppress(CsvError):
            decode_record(line)


GARBAGE_SIZE = 10 * 1024 * 1024


@pytest.mark.parametrize(
    "kind",
    ["random", "no line ends", "empty lines", "short bad lines", "quote storm"],
)
def test_ten_megabytes_of_garbage_are_refused_with_bounded_errors(kind: str) -> None:
    """How fast garbage is refused is measured by bench/kokuhoren_csv.py, never asserted."""
    rng = random.Random(6)
    data = {
        "random": lambda: rng.randbytes(GARBAGE_SIZE),
        "no line ends": lambda: b'"' * GARBAGE_SIZE,
        "empty lines": lambda: b"\r\n" * (GARBAGE_SIZE // 2),
        "short bad lines": lambda: b'"2",x\r\n' * (GARBAGE_SIZE // 8),
        "quote storm": lambda: (b'"' + b'""' * 400 + b",\r\n") * (GARBAGE_SIZE // 804),
    }[kind]()
    with pytest.raises(CsvError):
        decode_file(data)
    result = decode_records(data)
    assert not result.ok
    assert len(result.errors) <= CsvLimits().max_errors + 1


# --------------------------------------------------------------------------- file names


def test_file_names() -> None:
    assert file_name(DataType.CHANGE, "121004", YearMonth(2024, 4)) == "10_531121004202404.csv"
    assert file_name(DataType.CORRECTION, "131011", YearMonth(2025, 12)) == (
        "10_532131011202512.csv"
    )
    assert FILE_531.file_name == "10_531121004202404.csv"
    assert FILE_532.file_name == "10_532121004202405.csv"
    assert parse_file_name("10_532121004202405.csv") == FileName(
        DataType.CORRECTION, "121004", YearMonth(2024, 5)
    )


@FAST
@given(st.sampled_from(DataType), insurer_numbers(), st.integers(1, 9999), st.integers(1, 12))
def test_file_name_round_trip(data_type: DataType, insurer: str, year: int, month: int) -> None:
    name = file_name(data_type, insurer, YearMonth(year, month))
    assert parse_file_name(name) == FileName(data_type, insurer, YearMonth(year, month))


@pytest.mark.parametrize(
    "name",
    [
        "10_533121004202404.csv",
        "11_531121004202404.csv",
        "10_531121005202404.csv",
        "10_531121004202413.csv",
        "10_531121004000004.csv",
        "10_531121004202404.CSV",
        "10_531121004202404.csv\n",
        "10_531121004202404.txt",
        "../10_531121004202404.csv",
        "10_53112100420244.csv",
        "10_531１２１００４202404.csv",
        "",
    ],
)
def test_bad_file_names(name: str) -> None:
    with pytest.raises(CsvFileNameError) as caught:
        parse_file_name(name)
    assert caught.value.code == "csv_file_name"


def test_file_name_refuses_bad_parts() -> None:
    with pytest.raises(CsvFileNameError):
        file_name(DataType.CHANGE, "121005", YearMonth(2024, 4))
    with pytest.raises(CsvFileNameError):
        file_name("531", "121004", YearMonth(2024, 4))  # type: ignore[arg-type]
    with pytest.raises(CsvFileNameError):
        file_name(DataType.CHANGE, "121004", "202404")  # type: ignore[arg-type]


def test_check_file_name_against_the_control_record() -> None:
    check_file_name("10_531121004202404.csv", CONTROL_531)
    for name in ("10_532121004202404.csv", "10_531131011202404.csv", "10_531121004202405.csv"):
        with pytest.raises(CsvFileNameError):
            check_file_name(name, CONTROL_531)


# --------------------------------------------------------------------------- small values


def test_year_month() -> None:
    assert str(YearMonth(987, 3)) == "098703"
    assert YearMonth.of(date(2024, 4, 30)) == YearMonth(2024, 4)
    assert YearMonth(2024, 12) < YearMonth(2025, 1)
    for year, month in ((2024, 0), (2024, 13), (0, 1), (10000, 1)):
        with pytest.raises(ValueError, match="month"):
            YearMonth(year, month)


def test_code_lists() -> None:
    assert DataType.CHANGE.exchange_id.value == "5311"
    assert DataType.CORRECTION.exchange_id.data_type is DataType.CORRECTION
    assert [level.value for level in CareLevel if level.is_certified] == [
        "12",
        "13",
        "21",
        "22",
        "23",
        "24",
        "25",
    ]


def test_every_error_code_is_a_csv_error() -> None:
    import chukan.codecs.errors as fields

    codes = {
        cls.code
        for cls in vars(fields).values()
        if isinstance(cls, type) and issubclass(cls, KokuhorenCsvError)
    }
    assert codes == {
        "csv_invalid",
        "csv_syntax",
        "csv_line_end",
        "csv_charset",
        "csv_structure",
        "csv_field_count",
        "csv_field_invalid",
        "csv_code_unknown",
        "csv_check_digit",
        "csv_period_invalid",
        "csv_record_number",
        "csv_count_mismatch",
        "csv_data_type_mismatch",
        "csv_too_large",
        "csv_file_name",
    }
    assert issubclass(KokuhorenCsvError, CsvError)
