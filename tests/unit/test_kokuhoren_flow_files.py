"""The 給付管理票 / 償還払い実績 / 特別徴収 file codec: round trips, rules, hostile input."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.codecs.errors import KokuhorenCsvError
from chukan.codecs.item_model import CareLevel
from chukan.codecs.kokuhoren import CsvLimits
from chukan.codecs.kokuhoren_fields import Sex, YearMonth
from chukan.codecs.kokuhoren_flows import (
    BENEFIT_PLAN,
    COLLECTION_REQUEST,
    COLLECTION_RESULT,
    REIMBURSEMENT,
    BenefitPlan,
    CollectionRequest,
    CollectionRequestKind,
    CollectionResult,
    CollectionResultKind,
    CreationKind,
    FlowControl,
    FlowSpec,
    PlanLine,
    PlanMaker,
    ProviderKind,
    Reimbursement,
    decode_flow_file,
    decode_flow_records,
    encode_flow_file,
    flow_file_name,
    parse_flow_file_name,
)
from chukan.gateway.kokuhoren.flow_json import record_from_json, record_to_json

INSURER = "122010"
MONTH = YearMonth(2023, 10)
CONTROL = FlowControl(1, 0, INSURER, MONTH, "0000000042")

digits = st.integers(0, 10**10 - 1).map(lambda n: f"{n:010d}")
kana = st.text(
    alphabet="アイウエオカキクケコサシスセソタチツテトヤマダ ・ｱｲｳ", min_size=1, max_size=25
)
months = st.builds(YearMonth, st.integers(2000, 2023), st.integers(1, 9))
lines = st.builds(
    PlanLine,
    provider_number=digits,
    provider_kind=st.sampled_from(ProviderKind),
    service_type=st.sampled_from(["11", "13", "15", "17", "2A", "A1"]),
    units=st.integers(0, 99999),
)


@st.composite
def plans(draw: Any) -> BenefitPlan:
    month = draw(months)
    maker = draw(st.sampled_from(PlanMaker))
    return BenefitPlan(
        target_month=month,
        certificate_insurer_number=INSURER,
        support_office=None if maker is PlanMaker.SELF else draw(digits),
        creation_kind=draw(st.sampled_from(CreationKind)),
        created_on=draw(st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1))),
        insured_number=draw(digits),
        birth_date=draw(st.dates(dt.date(1900, 1, 1), dt.date(2000, 1, 1))),
        sex=draw(st.sampled_from(Sex)),
        care_level=draw(st.sampled_from([c for c in CareLevel if c.is_certified])),
        limit_start=YearMonth(month.year, 1),
        limit_end=YearMonth(month.year, 12),
        limit_units=draw(st.integers(0, 999999)),
        plan_maker=maker,
        lines=tuple(draw(st.lists(lines, min_size=1, max_size=12))),
    )


@st.composite
def reimbursements(draw: Any) -> Reimbursement:
    units = draw(st.integers(0, 99_999_999 // 10))
    copay = draw(st.integers(0, units * 10))
    month = draw(months)
    return Reimbursement(
        creation_kind=draw(st.sampled_from(CreationKind)),
        reference_number=draw(digits),
        service_month=month,
        certificate_insurer_number=INSURER,
        insured_number=draw(digits),
        provider_number=draw(digits),
        service_type=draw(st.sampled_from(["11", "43", "2A"])),
        units=units,
        benefit_amount=units * 10 - copay,
        copayment=copay,
        decided_on=dt.date(month.year, month.month, draw(st.integers(1, 28))),
    )


@st.composite
def requests(draw: Any) -> CollectionRequest:
    kind = draw(st.sampled_from(CollectionRequestKind))
    amount = st.just(0) if kind is CollectionRequestKind.NOT_TARGET else st.integers(1, 10**9)
    return CollectionRequest(
        obligor_code=draw(st.sampled_from(["001", "501", "700"])),
        request_kind=kind,
        pension_number=draw(digits),
        pension_code=draw(st.integers(0, 9999).map(lambda n: f"{n:04d}")),
        insured_number=draw(digits),
        birth_date=draw(st.dates(dt.date(1900, 1, 1), dt.date(2000, 1, 1))),
        sex=draw(st.sampled_from(Sex)),
        name_kana=draw(kana),
        fiscal_year=draw(st.integers(2000, 2030)),
        start_month=draw(months),
        amount_1=draw(amount),
        amount_2=draw(
            st.just(0) if kind is CollectionRequestKind.NOT_TARGET else st.integers(0, 10**9)
        ),
        amount_3=0,
    )


@st.composite
def results(draw: Any) -> CollectionResult:
    return CollectionResult(
        obligor_code="001",
        result_kind=draw(st.sampled_from(CollectionResultKind)),
        pension_number=draw(digits),
        pension_code="1150",
        insured_number=draw(digits),
        fiscal_year=draw(st.integers(2000, 2030)),
        result_on=draw(st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1))),
        amount_1=draw(st.integers(0, 10**9)),
        amount_2=0,
        amount_3=0,
        request_file_management_number=draw(digits),
        request_record_number=draw(st.integers(2, 10**6)),
    )


@settings(max_examples=60)
@given(st.lists(plans(), min_size=1, max_size=5))
def test_benefit_plans_round_trip(items: list[BenefitPlan]) -> None:
    data = encode_flow_file(BENEFIT_PLAN, CONTROL, items)
    decoded = decode_flow_file(BENEFIT_PLAN, data)
    assert decoded.items == tuple(items)
    assert decoded.control.record_count == sum(len(p.lines) + 1 for p in items)
    assert (
        data.endswith(b'"\r\n')
        and data.decode("cp932").count("\r\n") == decoded.control.record_count + 2
    )


@settings(max_examples=60)
@given(st.lists(reimbursements(), min_size=1, max_size=5))
def test_reimbursements_round_trip(items: list[Reimbursement]) -> None:
    assert decode_flow_file(
        REIMBURSEMENT, encode_flow_file(REIMBURSEMENT, CONTROL, items)
    ).items == tuple(items)


@settings(max_examples=60)
@given(st.lists(requests(), min_size=1, max_size=5))
def test_collection_requests_round_trip_and_through_json(items: list[CollectionRequest]) -> None:
    data = encode_flow_file(COLLECTION_REQUEST, CONTROL, items)
    assert decode_flow_file(COLLECTION_REQUEST, data).items == tuple(items)
    for item in items:
        again = record_from_json(
            COLLECTION_REQUEST, record_to_json(item) | {"record_id": "x"}, insurer=INSURER
        )
        assert again == item


@settings(max_examples=40)
@given(st.lists(results(), min_size=1, max_size=5))
def test_collection_results_round_trip(items: list[CollectionResult]) -> None:
    data = encode_flow_file(COLLECTION_RESULT, CONTROL, items)
    assert decode_flow_file(COLLECTION_RESULT, data).items == tuple(items)


@settings(max_examples=40)
@given(plans())
def test_plan_json_round_trip(plan: BenefitPlan) -> None:
    control_month = max(plan.target_month, MONTH)
    del control_month
    assert record_from_json(BENEFIT_PLAN, record_to_json(plan), insurer=INSURER) == plan


def _plan() -> BenefitPlan:
    return BenefitPlan(
        MONTH, INSURER, None, CreationKind.NEW, dt.date(2023, 10, 5), "1234567890",
        dt.date(1944, 5, 6), Sex.FEMALE, CareLevel.CARE_1, YearMonth(2023, 4), YearMonth(2024, 3),
        16765, PlanMaker.SELF,
        (PlanLine("1210000001", ProviderKind.DESIGNATED, "11", 1200),
         PlanLine("1210000002", ProviderKind.STANDARD, "15", 800)),
    )  # fmt: skip


def test_the_wire_form_of_a_benefit_plan_follows_the_published_8221_order() -> None:
    text = encode_flow_file(BENEFIT_PLAN, CONTROL, [_plan()]).decode("cp932").split("\r\n")
    assert text[0] == '"1","1","1","3","821","","122010","","12","1","202310","0000000042"'
    detail = text[1].split(",")
    assert detail[:4] == ['"2"', '"2"', '"8221"', '"202310"']
    assert detail[4] == '"00122010"'  # 証記載保険者番号, 8 digits
    assert detail[9] == '"01"' and detail[21] == '"1200"'
    terminal = text[3].split(",")
    assert terminal[9] == '"99"' and terminal[16] == '"16765"'
    assert terminal[-3:] == ['"1200"', '"800"', '"2000"']  # 指定 / 基準該当 小計, 合計
    assert text[4] == '"3","5"'


@pytest.mark.parametrize(
    ("old", "new", "code", "record"),
    [
        (b'"800","","","",""', b'"801","","","",""', "csv_count_mismatch", 4),  # totals disagree
        (b'"02","1234567890"', b'"03","1234567890"', "csv_record_number", 3),  # 明細行番号 gap
        (b'"00122010"', b'"00122011"', "csv_field_invalid", 2),  # check digit
        (b'"202304"', b'"202311"', "csv_field_invalid", 2),  # 限度額適用期間 reversed
    ],
)
def test_defects_of_a_plan_are_named_and_the_plan_is_not_returned(
    old: bytes, new: bytes, code: str, record: int
) -> None:
    data = encode_flow_file(BENEFIT_PLAN, CONTROL, [_plan(), _plan()])
    broken = data.replace(old, new, 1)
    result = decode_flow_records(BENEFIT_PLAN, broken)
    assert code in {e.code for e in result.errors if e.record_number == record}
    assert [i.first_record for i in result.items] == [5]  # the second plan survives
    with pytest.raises(KokuhorenCsvError):
        decode_flow_file(BENEFIT_PLAN, broken)


def test_a_plan_without_its_terminal_line_is_refused() -> None:
    data = encode_flow_file(BENEFIT_PLAN, CONTROL, [_plan()])
    lines = data.split(b"\r\n")
    cut = b"\r\n".join(
        [lines[0].replace(b'"3","821"', b'"2","821"'), lines[1], lines[2], b'"3","4"', b""]
    )
    result = decode_flow_records(BENEFIT_PLAN, cut)
    assert result.items == ()
    assert "csv_structure" in {e.code for e in result.errors}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xef\xbb\xbf" + b'"1"\r\n',
        b'"1","1"\n"3","2"\n',
        b"\x82" * 5000 + b"\r\n",
        b'"1",' * 3000 + b'"1"\r\n',
        b'"2","1","9511"\r\n"3","2"\r\n',
        b'"1","1","1","0","951","","122010","","12","1","202310","1"\r\n"3","2"',
        ("\r\n".join(['"2","2","9511"'] * 3000)).encode(),
        b'"1","1","1","1","951","","122010","","12","1","202310","1"\r\n"2","2","5311"\r\n"3","3"\r\n',
    ],
)
def test_hostile_or_broken_input_gives_errors_never_an_exception(data: bytes) -> None:
    specs: tuple[FlowSpec[Any], ...] = (
        BENEFIT_PLAN,
        REIMBURSEMENT,
        COLLECTION_REQUEST,
        COLLECTION_RESULT,
    )
    for spec in specs:
        result = decode_flow_records(spec, data, CsvLimits(max_errors=20))
        assert not result.ok
        assert len(result.errors) <= 21
        assert result.items == ()


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_and_errors_stay_bounded(data: bytes) -> None:
    result = decode_flow_records(COLLECTION_REQUEST, data, CsvLimits(max_errors=5))
    assert len(result.errors) <= 6


def test_errors_never_quote_values() -> None:
    item = record_to_json(
        CollectionRequest(
            "001", CollectionRequestKind.TARGET, "9876543210", "1150", "1234567890",
            dt.date(1944, 5, 6), Sex.MALE, "ヤマダ", 2023, MONTH, 1, 0, 0,
        )
    )  # fmt: skip
    data = encode_flow_file(
        COLLECTION_REQUEST, CONTROL, [record_from_json(COLLECTION_REQUEST, item, insurer=INSURER)]
    )
    broken = data.replace("ヤマダ".encode("cp932"), "山田".encode("cp932"))
    result = decode_flow_records(
        COLLECTION_REQUEST, broken.replace(b'"9876543210"', b'"98765432X0"')
    )
    text = repr(result.errors)
    assert {"カナ氏名", "基礎年金番号"} <= {e.field for e in result.errors}
    assert "山田" not in text and "98765432X0" not in text


def test_file_names() -> None:
    name = flow_file_name(BENEFIT_PLAN, INSURER, MONTH)
    assert name == "10_821122010202310.csv"
    assert parse_flow_file_name(name) == (BENEFIT_PLAN, INSURER, MONTH)
    for bad in ("10_531122010202310.csv", "10_821122011202310.csv", "10_821122010202313.csv", "x"):
        with pytest.raises(KokuhorenCsvError):
            parse_flow_file_name(bad)
