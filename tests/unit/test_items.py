"""Unit tests of the 介護保険 item XSDs and codec (chukan.codecs.items); synthetic data only."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
import threading
import typing
from collections.abc import Callable
from datetime import date
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chukan.codecs import item_model as m
from chukan.codecs.errors import (
    CodecError,
    ItemUnknownError,
    SchemaError,
    XmlEncodingError,
    XmlError,
    XmlForbiddenError,
    XmlLimitError,
    XmlStructureError,
)
from chukan.codecs.item_model import Nil, ReasonOfNull, YearMonth
from chukan.codecs.item_schema import XSD_DIR
from chukan.codecs.items import (
    ITEM_CODES,
    ITEM_LIMITS,
    ITEM_NAMESPACE,
    canonical_item_from_element,
    decode_item,
    encode_item,
    item_code_of,
    item_from_element,
    item_xmlschema,
    validate_item_fast,
)
from chukan.codecs.xmlsafe import XmlLimits, check_prolog, parse_xml

NA = Nil(ReasonOfNull.NOT_APPLICABLE)
INSURED = m.InsuredNumber("0000012345")
INSURER = m.InsurerNumber("129999")
UPDATED = date(2024, 4, 1)

# One valid sample per item, with nil and non-nil values and repeated groups.
SAMPLES: dict[str, m.Item] = {
    "TM00000000010101": m.InsuredQualification(
        INSURED,
        INSURER,
        (
            m.QualificationRecord(
                UPDATED,
                m.InsuredCategory.SECOND,
                date(2001, 5, 20),
                m.AcquisitionReason.SECOND_CATEGORY,
                date(2019, 5, 19),
                m.LossReason.MOVED_OUT,
            ),
            m.QualificationRecord(
                UPDATED,
                m.InsuredCategory.FIRST,
                date(2020, 4, 1),
                m.AcquisitionReason.MOVED_IN,
                NA,
                NA,
            ),
        ),
        (m.ExclusionRecord(UPDATED, date(2021, 1, 4), NA, m.ExclusionFacility.MEDICAL_CARE),),
    ),
    "TM00000000010102": m.AddressException(
        INSURED,
        INSURER,
        (
            m.AddressExceptionRecord(
                UPDATED,
                date(2022, 6, 1),
                Nil(ReasonOfNull.NOT_RECORDED),
                NA,
                m.InsurerNumber("128888"),
                m.AddressExceptionFacility.SPECIFIED_FACILITY,
            ),
        ),
    ),
    "TM00000000010201": m.CareCertification(
        INSURED,
        INSURER,
        (
            m.CertificationRecord(
                UPDATED,
                date(2023, 9, 1),
                m.ApplicationReason.NEW,
                date(2023, 10, 2),
                m.CareLevel.CARE_3,
                date(2023, 9, 1),
                date(2024, 8, 31),
                NA,
                m.DeemedCertification.REGULAR,
            ),
            m.CertificationRecord(
                UPDATED,
                date(2024, 7, 1),
                m.ApplicationReason.RENEWAL,
                NA,
                NA,
                NA,
                NA,
                m.SpecificDiseaseCode("07"),
                m.DeemedCertification.MOVED_IN,
            ),
        ),
    ),
    "TM00000000010202": m.BurdenRatio(
        INSURED,
        INSURER,
        (m.BurdenRatioRecord(UPDATED, m.BurdenRatioCode.TWO_TENTHS, date(2024, 8, 1), NA),),
    ),
    "TM00000000010300": m.Benefit(
        INSURED,
        INSURER,
        (
            m.BenefitRecord(
                UPDATED,
                YearMonth(2024, 3),
                m.ServiceTypeCode("11"),
                m.ProviderNumber("1270000001"),
                m.Units(12345),
                m.Yen(111105),
                m.Yen(12345),
            ),
            m.BenefitRecord(
                UPDATED,
                YearMonth(2024, 3),
                m.ServiceTypeCode("A1"),
                Nil(ReasonOfNull.UNKNOWN),
                NA,
                m.Yen(0),
                NA,
            ),
        ),
    ),
    "TM00000000010400": m.ComprehensiveProgram(
        INSURED,
        INSURER,
        (
            m.ProgramEligibilityRecord(
                UPDATED,
                date(2024, 2, 5),
                date(2024, 2, 5),
                date(2024, 2, 9),
                date(2024, 2, 9),
                NA,
                NA,
                m.ProviderNumber("1290000001"),
            ),
        ),
        (
            m.ProgramServiceRecord(
                UPDATED,
                YearMonth(2024, 3),
                m.ServiceTypeCode("A5"),
                m.ProviderNumber("127000000A"),
                m.Units(1672),
                m.Yen(15048),
                m.Yen(1672),
            ),
        ),
    ),
    "TM00000000010500": m.PremiumAssessment(
        INSURED,
        INSURER,
        (
            m.AssessmentRecord(
                UPDATED,
                m.FiscalYear(2024),
                m.IncomeCategoryCode("05"),
                m.CollectionMethod.SPECIAL,
                m.Yen(78000),
                m.Yen(78000),
                NA,
            ),
            m.AssessmentRecord(
                UPDATED,
                m.FiscalYear(2024),
                m.IncomeCategoryCode("03"),
                m.CollectionMethod.COMBINED,
                m.Yen(50000),
                m.Yen(52000),
                m.Reduction.DISASTER,
            ),
        ),
    ),
}
CODES = sorted(ITEM_CODES)
XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


# ------------------------------------------------------------------- the table


def test_item_code_table_is_complete_and_well_formed() -> None:
    assert set(ITEM_CODES) == set(SAMPLES)
    assert len({spec.data_set for spec in ITEM_CODES.values()}) == len(ITEM_CODES)
    for code, spec in ITEM_CODES.items():
        assert re.fullmatch(r"TM[0-9]{14}", code)
        assert spec.code == code
        assert code.endswith(spec.data_set)
        assert (XSD_DIR / spec.xsd_file).is_file()
        assert spec.name
        assert spec.major_version == 1
        assert item_code_of(SAMPLES[code]) == code


@pytest.mark.parametrize("code", CODES)
def test_model_matches_the_xsd(code: str) -> None:
    """Element names, order, repetition and nillability agree between model and XSD."""
    spec = ITEM_CODES[code]
    schema = item_xmlschema(code)
    root = schema.elements[spec.root_element]

    def check(cls: type[Any], element: Any) -> None:
        hints = typing.get_type_hints(cls)
        children = list(element.type.content.iter_elements())
        # (name, nillable, repeating, optional)
        expected: list[tuple[str, bool, bool, bool]] = []
        for field in dataclasses.fields(cls):
            if field.name == "updated":
                assert element.type.attributes["TimeAndDateOfUpdate"].use == "required"
                continue
            tp = hints[field.name]
            args = typing.get_args(tp)
            optional = field.default is not dataclasses.MISSING
            if typing.get_origin(tp) is tuple:
                expected.append((args[0].__name__, False, True, optional))
            else:
                assert optional == (type(None) in args)  # an added field defaults to None
                expected.append((_pascal(field.name), Nil in args, False, optional))
        actual = [
            (child.local_name, child.nillable, child.max_occurs is None, child.min_occurs == 0)
            for child in children
        ]
        assert actual == expected
        assert element.type.attributes["Version"].fixed == "1"
        for child in children:
            if child.max_occurs is None:
                group_cls = next(
                    typing.get_args(hints[f.name])[0]
                    for f in dataclasses.fields(cls)
                    if typing.get_origin(hints[f.name]) is tuple
                    and typing.get_args(hints[f.name])[0].__name__ == child.local_name
                )
                check(group_cls, child)

    check(spec.item_type, root)


# ------------------------------------------------------------- valid samples


@pytest.mark.parametrize("code", CODES)
def test_valid_sample_round_trips(code: str) -> None:
    item = SAMPLES[code]
    data = encode_item(item)
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert decode_item(code, data) == item
    validate_item_fast(code, data)
    assert item_xmlschema(code).is_valid(data)
    assert encode_item(decode_item(code, data)) == data  # deterministic, canonical


#: 負担割合 as a person might write it: default namespace, indentation, xsi:nil="1",
#: padded values.
HAND_WRITTEN: Final = f"""<?xml version="1.0" encoding="UTF-8"?>
<BurdenRatio xmlns="{ITEM_NAMESPACE}" {XSI} Version="1">
  <InsuredNumber Version="1">0000012345</InsuredNumber>
  <InsurerNumber Version="1">129999</InsurerNumber>
  <BurdenRatioRecord TimeAndDateOfUpdate=" 2024-04-01 " Version="1">
    <Ratio Version="1">2</Ratio>
    <ValidFrom Version="1"> 2024-08-01
    </ValidFrom>
    <ValidTo ReasonOfNull="1" xsi:nil="1" Version="1"/>
  </BurdenRatioRecord>
</BurdenRatio>
""".encode()


def test_hand_written_item_decodes_to_the_canonical_form() -> None:
    """Default namespace, indentation, xsi:nil="1" and padded values are all accepted."""
    data = HAND_WRITTEN.replace(b"?>\n", b"?>\n<!-- a comment the parser drops -->\n", 1)
    item = decode_item("TM00000000010202", data)
    assert item == SAMPLES["TM00000000010202"]
    assert encode_item(item) == encode_item(SAMPLES["TM00000000010202"])


def test_validation_works_from_other_threads() -> None:
    """Validators are cached per thread; another thread compiles and uses its own."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for code in CODES:
                assert decode_item(code, encode_item(SAMPLES[code])) == SAMPLES[code]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# ----------------------------------------------------------- invalid samples


def _mutate(code: str, old: str, new: str) -> bytes:
    text = encode_item(SAMPLES[code]).decode()
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1).encode()


# (code, old, new, expected fragment of ``where``)
INVALID_VALUES = [
    (
        "TM00000000010101",
        '<k:InsuredCategory Version="1">2<',
        '<k:InsuredCategory Version="1">3<',
        "InsuredCategory",
    ),
    ("TM00000000010101", ">2001-05-20<", ">2001-02-30<", "AcquisitionDate"),
    (
        "TM00000000010101",
        '<k:ExclusionFacility Version="1">3<',
        '<k:ExclusionFacility Version="1">5<',
        "ExclusionFacility",
    ),
    ("TM00000000010102", ">128888<", ">12888<", "FacilityInsurerNumber"),
    (
        "TM00000000010102",
        '<k:FacilityType Version="1">2<',
        '<k:FacilityType Version="1">4<',
        "FacilityType",
    ),
    (
        "TM00000000010201",
        '<k:CareLevel Version="1">23<',
        '<k:CareLevel Version="1">11<',
        "CareLevel",
    ),
    (
        "TM00000000010201",
        '<k:SpecificDisease Version="1">07<',
        '<k:SpecificDisease Version="1">17<',
        "SpecificDisease",
    ),
    ("TM00000000010201", ">2023-10-02<", ">2023-10-02+09:00<", "CertificationDate"),
    ("TM00000000010202", '<k:Ratio Version="1">2<', '<k:Ratio Version="1">4<', "Ratio"),
    ("TM00000000010300", ">A1<", ">a1<", "ServiceType"),
    ("TM00000000010300", ">111105<", ">-111105<", "BenefitAmount"),
    ("TM00000000010300", ">2024-03<", ">2024-13<", "ServiceMonth"),
    ("TM00000000010300", ">12345</k:Units", ">123456789</k:Units", "Units"),
    ("TM00000000010500", ">2024<", ">20245<", "FiscalYear"),
    (
        "TM00000000010500",
        '<k:CollectionMethod Version="1">1<',
        '<k:CollectionMethod Version="1">4<',
        "CollectionMethod",
    ),
    (
        "TM00000000010500",
        '<k:IncomeCategory Version="1">05<',
        '<k:IncomeCategory Version="1">21<',
        "IncomeCategory",
    ),
    ("TM00000000010500", ">78000<", ">７８０００<", "AssessedAmount"),  # full-width digits
]


@pytest.mark.parametrize(("code", "old", "new", "where"), INVALID_VALUES)
def test_invalid_value_is_a_schema_error_without_the_value(
    code: str, old: str, new: str, where: str
) -> None:
    data = _mutate(code, old, new)
    with pytest.raises(SchemaError) as caught:
        decode_item(code, data)
    assert caught.value.code == "schema_invalid"
    assert caught.value.where is not None
    assert where in caught.value.where
    assert caught.value.where.startswith("/" + ITEM_CODES[code].root_element)
    bad_value = re.sub(r"<[^>]*>", "", new).strip("<>")
    assert f"'{bad_value}'" not in str(caught.value)
    assert len(bad_value) < 3 or bad_value not in str(caught.value)
    with pytest.raises(SchemaError):
        validate_item_fast(code, data)
    assert not item_xmlschema(code).is_valid(data)


@pytest.mark.parametrize("code", CODES)
def test_structural_violations_of_every_item(code: str) -> None:
    root = ITEM_CODES[code].root_element
    cases = [
        _mutate(code, '<k:InsuredNumber Version="1">0000012345</k:InsuredNumber>', ""),
        _mutate(
            code,
            f'<k:{root} xmlns:k="{ITEM_NAMESPACE}" {XSI} Version="1">',
            f'<k:{root} xmlns:k="{ITEM_NAMESPACE}" {XSI} Version="2">',
        ),
        _mutate(
            code,
            '<k:InsurerNumber Version="1">',
            '<k:Extra Version="1">x</k:Extra><k:InsurerNumber Version="1">',
        ),
        _mutate(code, ' TimeAndDateOfUpdate="2024-04-01"', ""),
        _mutate(code, '<k:InsurerNumber Version="1">', "<k:InsurerNumber>"),
        _mutate(code, '<k:InsurerNumber Version="1">', '<k:InsurerNumber Version="1" Other="x">'),
        _mutate(code, ">0000012345<", "><k:Nested/><"),
    ]
    for data in cases:
        with pytest.raises(SchemaError) as caught:
            decode_item(code, data)
        assert caught.value.where is not None
        assert "0000012345" not in str(caught.value)
        assert not item_xmlschema(code).is_valid(data)


def test_where_names_the_repeated_group_and_attribute() -> None:
    data = _mutate("TM00000000010300", ">a1<".upper(), ">zz<")
    with pytest.raises(SchemaError) as caught:
        decode_item("TM00000000010300", data)
    assert caught.value.where == "/Benefit/BenefitRecord[2]/ServiceType"
    data = _mutate("TM00000000010202", '<k:Ratio Version="1">', '<k:Ratio Version="7">')
    with pytest.raises(SchemaError) as caught:
        decode_item("TM00000000010202", data)
    assert caught.value.where == "/BurdenRatio/BurdenRatioRecord/Ratio/@Version"


def test_default_namespace_errors_still_name_the_element() -> None:
    data = f"""<BurdenRatio xmlns="{ITEM_NAMESPACE}" Version="1">
<InsuredNumber Version="1">0000012345</InsuredNumber>
<InsurerNumber Version="1">129999</InsurerNumber>
<BurdenRatioRecord TimeAndDateOfUpdate="2024-04-01" Version="1">
<Ratio Version="1">9</Ratio><ValidFrom Version="1">2024-08-01</ValidFrom>
<ValidTo Version="1">2025-07-31</ValidTo></BurdenRatioRecord></BurdenRatio>""".encode()
    with pytest.raises(SchemaError) as caught:
        decode_item("TM00000000010202", data)
    assert caught.value.where is not None
    assert caught.value.where.endswith("Ratio")


# --------------------------------------------------------------------- nil


def test_nil_without_reason_of_null_is_refused() -> None:
    data = _mutate("TM00000000010202", ' xsi:nil="true" ReasonOfNull="1"', ' xsi:nil="true"')
    assert item_xmlschema("TM00000000010202").is_valid(data)  # XSD 1.0 cannot say it
    for check in (decode_item, validate_item_fast):
        with pytest.raises(SchemaError) as caught:
            check("TM00000000010202", data)
        assert caught.value.where == "/BurdenRatio/BurdenRatioRecord/ValidTo"
        assert "ReasonOfNull" in caught.value.message


def test_reason_of_null_without_nil_is_refused() -> None:
    data = _mutate(
        "TM00000000010202", '<k:Ratio Version="1">', '<k:Ratio Version="1" ReasonOfNull="2">'
    )
    for check in (decode_item, validate_item_fast):
        with pytest.raises(SchemaError) as caught:
            check("TM00000000010202", data)
        assert caught.value.where == "/BurdenRatio/BurdenRatioRecord/Ratio/@ReasonOfNull"
    explicit_false = _mutate(
        "TM00000000010202", ' xsi:nil="true" ReasonOfNull="1"', ' xsi:nil="false" ReasonOfNull="1"'
    )
    with pytest.raises(SchemaError):
        decode_item("TM00000000010202", explicit_false)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # nil on an element that is not nillable
        (
            '<k:Ratio Version="1">2</k:Ratio>',
            '<k:Ratio Version="1" xsi:nil="true" ReasonOfNull="1"/>',
        ),
        # nil with content
        (
            ' xsi:nil="true" ReasonOfNull="1"/>',
            ' xsi:nil="true" ReasonOfNull="1">2025-01-01</k:ValidTo>',
        ),
        # unknown reason
        (' ReasonOfNull="1"', ' ReasonOfNull="4"'),
        # an empty value without nil
        (' xsi:nil="true" ReasonOfNull="1"/>', "/>"),
    ],
)
def test_nil_rules_of_the_xsd(old: str, new: str) -> None:
    data = _mutate("TM00000000010202", old, new)
    with pytest.raises(SchemaError):
        decode_item("TM00000000010202", data)
    assert not item_xmlschema("TM00000000010202").is_valid(data)


def test_nil_values_carry_their_reason() -> None:
    item = SAMPLES["TM00000000010102"]
    decoded = decode_item("TM00000000010102", encode_item(item))
    assert isinstance(decoded, m.AddressException)
    record = decoded.address_exception_records[0]
    assert record.change_date == Nil(ReasonOfNull.NOT_RECORDED)
    assert record.end_date == Nil(ReasonOfNull.NOT_APPLICABLE)


# ------------------------------------------------------- codes and encoding


@pytest.mark.parametrize("code", ["TM00000000019999", "TM0000", "JT00000000010101", "", None, 7])
def test_unknown_item_code(code: Any) -> None:
    with pytest.raises(ItemUnknownError) as caught:
        decode_item(code, encode_item(SAMPLES["TM00000000010101"]))
    assert caught.value.code == "item_unknown"
    assert isinstance(caught.value, CodecError)
    with pytest.raises(ItemUnknownError):
        validate_item_fast(code, b"<x/>")


def test_item_of_another_code_is_a_structure_error() -> None:
    data = encode_item(SAMPLES["TM00000000010101"])
    with pytest.raises(XmlStructureError) as caught:
        decode_item("TM00000000010201", data)
    assert caught.value.where == "/"


def test_encode_refuses_what_is_not_an_item() -> None:
    with pytest.raises(ItemUnknownError):
        encode_item("not an item")  # type: ignore[arg-type]
    with pytest.raises(ItemUnknownError):
        encode_item(m.Nil(ReasonOfNull.UNKNOWN))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"insured_number": "12345"}, "/BurdenRatio/InsuredNumber"),
        ({"insured_number": 12345}, "/BurdenRatio/InsuredNumber"),
        ({"burden_ratio_records": ()}, "/BurdenRatio"),
        ({"burden_ratio_records": ["x"]}, "/BurdenRatio/BurdenRatioRecord[1]"),
        ({"burden_ratio_records": None}, "/BurdenRatio/BurdenRatioRecord"),
    ],
)
def test_encode_refuses_invalid_values(change: dict[str, Any], where: str) -> None:
    item = dataclasses.replace(SAMPLES["TM00000000010202"], **change)
    with pytest.raises(SchemaError) as caught:
        encode_item(item)
    assert caught.value.where is not None
    assert caught.value.where.startswith(where)


@pytest.mark.parametrize(
    "record_change",
    [
        {"valid_from": "2024-08-01"},
        {"valid_to": Nil("1")},  # type: ignore[arg-type]
        {"ratio": 2},
        {"updated": None},
    ],
)
def test_encode_refuses_wrongly_typed_group_values(record_change: dict[str, Any]) -> None:
    base = SAMPLES["TM00000000010202"]
    assert isinstance(base, m.BurdenRatio)
    record = dataclasses.replace(base.burden_ratio_records[0], **record_change)
    with pytest.raises(SchemaError):
        encode_item(dataclasses.replace(base, burden_ratio_records=(record,)))


def test_encode_refuses_bool_and_out_of_range_numbers() -> None:
    base = SAMPLES["TM00000000010300"]
    assert isinstance(base, m.Benefit)
    for value in (True, -1, 10**12):
        record = dataclasses.replace(base.benefit_records[0], benefit_amount=m.Yen(value))
        with pytest.raises(SchemaError):
            encode_item(dataclasses.replace(base, benefit_records=(record,)))


def test_year_month_bounds() -> None:
    with pytest.raises(ValueError, match="month"):
        YearMonth(2024, 13)
    assert str(YearMonth(987, 6)) == "0987-06"
    assert YearMonth(2024, 1) < YearMonth(2024, 2)


# ------------------------------------------------------- hypothesis round trips

_REGEX: dict[Any, str] = {
    m.InsuredNumber: r"[0-9]{10}",
    m.InsurerNumber: r"[0-9]{6}",
    m.ProviderNumber: r"[0-9A-Z]{10}",
    m.ServiceTypeCode: r"[0-9A-Z]{2}",
    m.SpecificDiseaseCode: r"0[1-9]|1[0-6]",
    m.IncomeCategoryCode: r"0[1-9]|1[0-9]|20",
    m.ObligorCode: r"[0-9]{3}",
    m.PensionCode: r"[0-9]{4}",
}
_INTEGERS: dict[Any, tuple[int, int]] = {
    m.FiscalYear: (1, 9999),
    m.Yen: (0, 10**12 - 1),
    m.Units: (0, 10**8 - 1),
    m.HistoryNumber: (1, 9999),
}


def _values(tp: Any, *, optional_group: bool = False) -> st.SearchStrategy[Any]:
    args = typing.get_args(tp)
    if type(None) in args:  # a field added after the first layout: absent or a value
        base = next(arg for arg in args if arg is not type(None))
        return st.one_of(st.none(), _values(base))
    if Nil in args:
        base = next(arg for arg in args if arg is not Nil)
        return st.one_of(_values(base), st.builds(Nil, st.sampled_from(ReasonOfNull)))
    if typing.get_origin(tp) is tuple:
        return st.lists(_dataclass(args[0]), min_size=0 if optional_group else 1, max_size=3).map(
            tuple
        )
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if tp is date:
        return st.dates()
    if tp is YearMonth:
        return st.builds(YearMonth, st.integers(1, 9999), st.integers(1, 12))
    if tp in _REGEX:
        return st.from_regex(rf"\A(?:{_REGEX[tp]})\Z")
    low, high = _INTEGERS[tp]
    return st.integers(low, high)


def _dataclass(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(
        cls,
        **{
            field.name: _values(
                hints[field.name], optional_group=field.default is not dataclasses.MISSING
            )
            for field in dataclasses.fields(cls)
        },
    )


@pytest.mark.parametrize("code", CODES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_property(code: str, data: st.DataObject) -> None:
    item = data.draw(_dataclass(ITEM_CODES[code].item_type))
    encoded = encode_item(item)
    assert decode_item(code, encoded) == item
    assert encode_item(decode_item(code, encoded)) == encoded


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_round_trip_agrees_with_xmlschema(data: st.DataObject) -> None:
    code = data.draw(st.sampled_from(CODES))
    item = data.draw(_dataclass(ITEM_CODES[code].item_type))
    assert item_xmlschema(code).is_valid(encode_item(item))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_documents_raise_only_codec_errors(data: st.DataObject) -> None:
    """Random byte damage to a valid item: a codec error or a valid item, nothing else."""
    code = data.draw(st.sampled_from(CODES))
    encoded = bytearray(encode_item(SAMPLES[code]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):
        decode_item(code, bytes(encoded))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(blob: bytes) -> None:
    with pytest.raises(CodecError):
        decode_item("TM00000000010101", b"<?xml version='1.0'?>" + blob)


# ----------------------------------------------------------- hostile input

BIG = 50 * 1024 * 1024
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">'
        % (level, b"&lol%d;" % (level - 1) * 10 if level > 1 else b"&lol;" * 10)
        for level in range(1, 10)
    )
    + b"]><lolz>&lol9;</lolz>"
)


def _deep(levels: int) -> bytes:
    return b"<a>" * levels + b"</a>" * levels


HOSTILE: list[tuple[str, Callable[[], bytes], type[CodecError]]] = [
    (
        "xxe",
        lambda: (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<k:BurdenRatio xmlns:k="urn:chukan:kaigo:item:1">&x;</k:BurdenRatio>'
        ),
        XmlForbiddenError,
    ),
    ("billion laughs", lambda: LAUGHS, XmlForbiddenError),
    (
        "external dtd",
        lambda: b'<!DOCTYPE l SYSTEM "http://example.invalid/x.dtd"><l/>',
        XmlForbiddenError,
    ),
    ("50 MB", lambda: b"<l>" + b"a" * BIG + b"</l>", XmlLimitError),
    ("10,000 deep", lambda: _deep(10_000), XmlLimitError),
    ("deeper than the item limit", lambda: _deep(20), XmlLimitError),
    (
        "wrong namespace",
        lambda: encode_item(SAMPLES["TM00000000010202"]).replace(
            ITEM_NAMESPACE.encode(), b"urn:example:other"
        ),
        XmlStructureError,
    ),
    (
        "Shift_JIS declaration",
        lambda: '<?xml version="1.0" encoding="Shift_JIS"?><l>介護</l>'.encode("shift_jis"),
        XmlEncodingError,
    ),
    (
        "UTF-16",
        lambda: '<?xml version="1.0" encoding="UTF-16"?><l/>'.encode("utf-16"),
        XmlEncodingError,
    ),
    ("invalid UTF-8", lambda: b"<l>\x82\xa0</l>", XmlEncodingError),
    ("undefined entity", lambda: b"<l>&undefined;</l>", XmlError),
    ("empty", lambda: b"", XmlError),
]


def _refused_before_parsing(data: bytes, limits: XmlLimits) -> CodecError | None:
    """The refusal of the linear pre-check that runs before libxml2, if any."""
    try:
        check_prolog(data, limits)
    except CodecError as exc:
        return exc
    return None


@pytest.mark.parametrize(("name", "make", "expected"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_input_is_refused_within_fixed_limits(
    name: str, make: Callable[[], bytes], expected: type[CodecError]
) -> None:
    """Deterministic bound on the work instead of a clock: libxml2 is given at most
    ``ITEM_LIMITS.max_bytes`` of UTF-8 without DTDs (it never expands entities nor
    nests deeper than its own limit); anything larger, declaring entities or not
    UTF-8 is refused by the linear pre-check, before any parsing."""
    data = make()
    for check in (decode_item, validate_item_fast):
        with pytest.raises(CodecError) as caught:
            check("TM00000000010202", data)
        assert isinstance(caught.value, expected), (name, caught.value)
    early = _refused_before_parsing(data, ITEM_LIMITS)
    if early is None:
        assert len(data) <= ITEM_LIMITS.max_bytes, name
    else:
        assert isinstance(early, expected), (name, early)


def test_text_instead_of_bytes_is_refused() -> None:
    with pytest.raises(XmlError):
        decode_item("TM00000000010202", encode_item(SAMPLES["TM00000000010202"]).decode())  # type: ignore[arg-type]


# ------------------------------------------- canonical bytes without the typed item


def _reference_or_error(code: str, data: bytes) -> bytes | tuple[type[Exception], Any, Any, str]:
    """What the bulk import stored before: encode_item(item_from_element(...)), or its error."""
    try:
        return encode_item(item_from_element(code, parse_xml(data, ITEM_LIMITS)))
    except CodecError as exc:
        return type(exc), exc.code, exc.where, exc.message


def _direct_or_error(code: str, data: bytes) -> bytes | tuple[type[Exception], Any, Any, str]:
    try:
        return canonical_item_from_element(code, parse_xml(data, ITEM_LIMITS))
    except CodecError as exc:
        return type(exc), exc.code, exc.where, exc.message


def _respelled(data: bytes, spelling: str) -> bytes:
    """The same item as another sender might write it (all valid spellings)."""
    text = data.decode()
    if spelling == "prefix":
        return text.replace("k:", "care:").replace("xmlns:k=", "xmlns:care=").encode()
    if spelling == "default namespace":
        return text.replace("k:", "").replace("xmlns:k=", "xmlns=").encode()
    if spelling == "indented":
        return text.replace("><", ">\n   <").replace("?>\n   <", "?>\n<").encode()
    if spelling == "nil as 1, attributes reordered":
        return text.replace(
            'Version="1" xsi:nil="true" ReasonOfNull="', 'xsi:nil=" 1 " Version="1" ReasonOfNull="'
        ).encode()
    if spelling == "padded values":
        text = re.sub(r'(TimeAndDateOfUpdate=")([0-9-]+)"', r'\1 \2 "', text)
        return re.sub(r">([0-9]{4}-[0-9]{2}-[0-9]{2})<", r"> \1\n<", text).encode()
    if spelling == "leading zeros":
        for element in ("Units", "BenefitAmount", "UserBurden", "AssessedAmount", "AnnualAmount"):
            text = re.sub(rf'(<k:{element} Version="1">)([0-9]{{1,6}})<', r"\g<1>00\2<", text)
        return text.encode()
    assert spelling == "as written"
    return data


SPELLINGS = [
    "as written",
    "prefix",
    "default namespace",
    "indented",
    "nil as 1, attributes reordered",
    "padded values",
    "leading zeros",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("code", CODES)
def test_canonical_bytes_are_what_encode_item_writes(code: str, spelling: str) -> None:
    """canonical_item_from_element == encode_item(item_from_element(...)), however spelled."""
    data = _respelled(encode_item(SAMPLES[code]), spelling)
    direct = _direct_or_error(code, data)
    assert direct == _reference_or_error(code, data)
    assert direct == encode_item(SAMPLES[code])


def test_canonical_bytes_of_the_hand_written_item() -> None:
    data = HAND_WRITTEN
    expected = encode_item(SAMPLES["TM00000000010202"])
    assert _direct_or_error("TM00000000010202", data) == expected


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("code", CODES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_canonical_bytes_property(code: str, spelling: str, data: st.DataObject) -> None:
    item = data.draw(_dataclass(ITEM_CODES[code].item_type))
    document = _respelled(encode_item(item), spelling)
    assert _direct_or_error(code, document) == _reference_or_error(code, document)
    assert _direct_or_error(code, document) == encode_item(item)


INVALID_FOR_THE_DIRECT_WRITER = [
    *((code, old, new) for code, old, new, _ in INVALID_VALUES),
    ("TM00000000010202", ' xsi:nil="true" ReasonOfNull="1"', ' xsi:nil="true"'),
    ("TM00000000010202", '<k:Ratio Version="1">', '<k:Ratio Version="1" ReasonOfNull="2">'),
    ("TM00000000010202", ' xsi:nil="true" ReasonOfNull="1"', ' xsi:nil="false" ReasonOfNull="1"'),
    ("TM00000000010202", ' xsi:nil="true" ReasonOfNull="1"/>', "/>"),
    ("TM00000000010202", '<k:Ratio Version="1">', '<k:Ratio Version="7">'),
    ("TM00000000010202", "k:BurdenRatio ", "k:BurdenRatioX "),
]


@pytest.mark.parametrize(("code", "old", "new"), INVALID_FOR_THE_DIRECT_WRITER)
def test_canonical_bytes_refuse_what_the_reference_refuses(code: str, old: str, new: str) -> None:
    data = _mutate(code, old, new)
    refused = _reference_or_error(code, data)
    assert not isinstance(refused, bytes)
    assert _direct_or_error(code, data) == refused


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_canonical_bytes_of_damaged_documents(data: st.DataObject) -> None:
    """Random damage: the direct writer and the reference agree (bytes or the same error)."""
    code = data.draw(st.sampled_from(CODES))
    encoded = bytearray(encode_item(SAMPLES[code]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    try:
        parse_xml(bytes(encoded), ITEM_LIMITS)
    except CodecError:
        return
    assert _direct_or_error(code, bytes(encoded)) == _reference_or_error(code, bytes(encoded))
