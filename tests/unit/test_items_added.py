"""The 副本's added items and fields (0400 総合事業; 0201 認定 and 0500 賦課・収滞納 fields) and
the 自動応答不可 flag of registration entries; synthetic data only."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from chukan.codecs import item_model as m
from chukan.codecs.errors import CodecError, SchemaError, XmlForbiddenError
from chukan.codecs.items import (
    ITEM_CODES,
    ITEM_NAMESPACE,
    canonical_item_from_element,
    decode_item,
    encode_item,
    item_xmlschema,
)
from chukan.codecs.registration import (
    REGISTRATION_NAMESPACE,
    EncodedEntry,
    EntryRejection,
    MessageHeader,
    MessageMode,
    RegistrationEntry,
    Segment,
    decode_registration,
    encode_registration_parts,
    iter_registration_encoded,
)
from chukan.codecs.registration_split import (
    RecordSlice,
    encode_record_slice,
    slice_schema,
    split_registration,
)
from chukan.codecs.xmlsafe import parse_xml
from chukan.gateway.replica.decoding import STAGING_COLUMNS, entry_row

NA: Final = m.Nil(m.ReasonOfNull.NOT_APPLICABLE)
UPDATED: Final = dt.date(2024, 4, 1)
CERTIFICATION: Final = "TM00000000010201"
PROGRAM: Final = "TM00000000010400"
PREMIUM: Final = "TM00000000010500"

#: 0201 and 0500 items exactly as the codec stored them before the fields were added
#: (written by the previous commit's encode_item): they must stay valid, decode with the
#: added fields absent and keep their canonical bytes, so digests of stored items hold.
STORED_BEFORE: Final = {
    CERTIFICATION: (
        b"<?xml version='1.0' encoding='UTF-8'?>\n"
        b'<k:CareCertification xmlns:k="urn:chukan:kaigo:item:1" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="1">'
        b'<k:InsuredNumber Version="1">0000012345</k:InsuredNumber>'
        b'<k:InsurerNumber Version="1">129999</k:InsurerNumber>'
        b'<k:CertificationRecord Version="1" TimeAndDateOfUpdate="2024-04-01">'
        b'<k:ApplicationDate Version="1">2023-09-01</k:ApplicationDate>'
        b'<k:ApplicationReason Version="1">3</k:ApplicationReason>'
        b'<k:CertificationDate Version="1">2023-10-02</k:CertificationDate>'
        b'<k:CareLevel Version="1">23</k:CareLevel>'
        b'<k:ValidFrom Version="1">2023-09-01</k:ValidFrom>'
        b'<k:ValidTo Version="1">2024-08-31</k:ValidTo>'
        b'<k:SpecificDisease Version="1" xsi:nil="true" ReasonOfNull="1"/>'
        b'<k:DeemedCertification Version="1">0</k:DeemedCertification>'
        b"</k:CertificationRecord></k:CareCertification>"
    ),
    PREMIUM: (
        b"<?xml version='1.0' encoding='UTF-8'?>\n"
        b'<k:PremiumAssessment xmlns:k="urn:chukan:kaigo:item:1" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" Version="1">'
        b'<k:InsuredNumber Version="1">0000012345</k:InsuredNumber>'
        b'<k:InsurerNumber Version="1">129999</k:InsurerNumber>'
        b'<k:AssessmentRecord Version="1" TimeAndDateOfUpdate="2024-04-01">'
        b'<k:FiscalYear Version="1">2024</k:FiscalYear>'
        b'<k:IncomeCategory Version="1">05</k:IncomeCategory>'
        b'<k:CollectionMethod Version="1">1</k:CollectionMethod>'
        b'<k:AssessedAmount Version="1">78000</k:AssessedAmount>'
        b'<k:AnnualAmount Version="1">78000</k:AnnualAmount>'
        b'<k:Reduction Version="1" xsi:nil="true" ReasonOfNull="1"/>'
        b"</k:AssessmentRecord></k:PremiumAssessment>"
    ),
}

FULL_CERTIFICATION: Final = m.CareCertification(
    m.InsuredNumber("0000012345"),
    m.InsurerNumber("129999"),
    (
        m.CertificationRecord(
            UPDATED,
            dt.date(2024, 1, 10),
            m.ApplicationReason.LEVEL_CHANGE,
            dt.date(2024, 2, 1),
            m.CareLevel.CARE_3,
            dt.date(2024, 1, 10),
            dt.date(2025, 1, 31),
            NA,
            m.DeemedCertification.REGULAR,
            history_number=m.HistoryNumber(4),
            previous_history_number=m.HistoryNumber(3),
            previous_care_level=m.CareLevel.CARE_1,
            limit_period_from=dt.date(2024, 1, 10),
            limit_period_to=dt.date(2025, 1, 31),
            withdrawal_date=dt.date(2024, 1, 20),
            withdrawal_reason=m.WithdrawalReason.BY_APPLICANT,
            suspension_date=dt.date(2024, 1, 25),
            suspension_reason=m.SuspensionReason.HOSPITALISED,
            cancellation_date=dt.date(2024, 3, 31),
            cancellation_reason=m.CancellationReason.REFUSED_EXAMINATION,
        ),
    ),
)
FULL_PREMIUM: Final = m.PremiumAssessment(
    m.InsuredNumber("0000012345"),
    m.InsurerNumber("129999"),
    (
        m.AssessmentRecord(
            UPDATED,
            m.FiscalYear(2024),
            m.IncomeCategoryCode("07"),
            m.CollectionMethod.COMBINED,
            m.Yen(78000),
            m.Yen(78000),
            NA,
            obligor_code=m.ObligorCode("001"),
            pension_code=m.PensionCode("0120"),
            special_collection_stop=m.SpecialCollectionStop.PENSION_STOPPED,
            provisional_amount=m.Yen(6500),
            provisional_change_date=dt.date(2024, 7, 15),
            deferral=m.Deferral.DISASTER,
            deferral_from=dt.date(2024, 9, 1),
            deferral_to=dt.date(2025, 2, 28),
            payment_status=m.PaymentStatus.IN_ARREARS,
            arrears_amount=m.Yen(19500),
            payment_status_date=dt.date(2025, 3, 31),
        ),
    ),
)
PROGRAM_ITEM: Final = m.ComprehensiveProgram(
    m.InsuredNumber("0000012345"),
    m.InsurerNumber("129999"),
    (
        m.ProgramEligibilityRecord(
            UPDATED,
            dt.date(2023, 4, 3),
            dt.date(2023, 4, 3),
            dt.date(2023, 4, 10),
            dt.date(2023, 4, 10),
            dt.date(2024, 1, 9),
            m.EligibilityEndReason.CERTIFIED,
            NA,
        ),
    ),
)
FULL: Final[dict[str, m.Item]] = {
    CERTIFICATION: FULL_CERTIFICATION,
    PREMIUM: FULL_PREMIUM,
    PROGRAM: PROGRAM_ITEM,
}


# ----------------------------------------------------------- stored items stay valid


@pytest.mark.parametrize("code", sorted(STORED_BEFORE))
def test_items_stored_before_stay_valid_and_canonical(code: str) -> None:
    data = STORED_BEFORE[code]
    item = decode_item(code, data)
    records = item.certification_records if code == CERTIFICATION else item.assessment_records  # type: ignore[union-attr]
    added = [f.name for f in dataclasses.fields(records[0]) if f.default is None]
    assert added and all(getattr(records[0], name) is None for name in added)
    assert encode_item(item) == data
    assert canonical_item_from_element(code, parse_xml(data)) == data
    assert item_xmlschema(code).is_valid(data)


# ------------------------------------------------------------------ added fields


@pytest.mark.parametrize("code", sorted(FULL))
def test_added_fields_round_trip_on_every_path(code: str) -> None:
    item = FULL[code]
    data = encode_item(item)
    assert decode_item(code, data) == item
    assert canonical_item_from_element(code, parse_xml(data)) == data
    assert item_xmlschema(code).is_valid(data)
    # Spelled otherwise (default namespace, indentation): the same canonical form.
    text = data.decode().split("?>\n", 1)[1]
    loose = text.replace("k:", "").replace('xmlns:k="', 'xmlns="').replace("><", ">\n  <")
    assert encode_item(decode_item(code, loose.encode())) == data
    assert canonical_item_from_element(code, parse_xml(loose.encode())) == data


def test_added_fields_are_written_in_schema_order() -> None:
    text = encode_item(FULL_PREMIUM).decode()
    names = [
        "Reduction",
        "ObligorCode",
        "PensionCode",
        "SpecialCollectionStop",
        "ProvisionalAmount",
        "ProvisionalChangeDate",
        "Deferral ",
        "DeferralFrom",
        "DeferralTo",
        "PaymentStatus ",
        "ArrearsAmount",
        "PaymentStatusDate",
    ]
    positions = [text.index(f"<k:{name}") for name in names]
    assert positions == sorted(positions)


def _replace(data: bytes, old: str, new: str) -> bytes:
    text = data.decode()
    assert old in text, old
    return text.replace(old, new, 1).encode()


INVALID: Final = [
    # (code, old, new, where)
    (
        PREMIUM,
        '<k:ObligorCode Version="1">001<',
        '<k:ObligorCode Version="1">01<',
        "/PremiumAssessment/AssessmentRecord/ObligorCode",
    ),
    (
        PREMIUM,
        '<k:PensionCode Version="1">0120<',
        '<k:PensionCode Version="1">０１２０<',
        "/PremiumAssessment/AssessmentRecord/PensionCode",
    ),
    (
        PREMIUM,
        '<k:PaymentStatus Version="1">3<',
        '<k:PaymentStatus Version="1">7<',
        "/PremiumAssessment/AssessmentRecord/PaymentStatus",
    ),
    (
        PREMIUM,
        '<k:ArrearsAmount Version="1">19500<',
        '<k:ArrearsAmount Version="1">-19500<',
        "/PremiumAssessment/AssessmentRecord/ArrearsAmount",
    ),
    (
        CERTIFICATION,
        '<k:HistoryNumber Version="1">4<',
        '<k:HistoryNumber Version="1">0<',
        "/CareCertification/CertificationRecord/HistoryNumber",
    ),
    (
        CERTIFICATION,
        '<k:CancellationReason Version="1">2<',
        '<k:CancellationReason Version="1">5<',
        "/CareCertification/CertificationRecord/CancellationReason",
    ),
    (
        PROGRAM,
        '<k:EndReason Version="1">1<',
        '<k:EndReason Version="1">8<',
        "/ComprehensiveProgram/ProgramEligibilityRecord/EndReason",
    ),
]


@pytest.mark.parametrize(("code", "old", "new", "where"), INVALID)
def test_invalid_added_values_are_named_without_the_value(
    code: str, old: str, new: str, where: str
) -> None:
    data = _replace(encode_item(FULL[code]), old, new)
    with pytest.raises(SchemaError) as caught:
        decode_item(code, data)
    assert caught.value.where == where
    value = new.split(">")[1].rstrip("<")
    assert value not in caught.value.message.replace(code, "")
    with pytest.raises(SchemaError):
        canonical_item_from_element(code, parse_xml(data))


OBLIGOR: Final = '<k:ObligorCode Version="1">001</k:ObligorCode>'
PENSION: Final = '<k:PensionCode Version="1">0120</k:PensionCode>'


def test_added_fields_are_never_nil_and_keep_their_order() -> None:
    data = encode_item(FULL_PREMIUM)
    nil = _replace(
        data,
        '<k:ObligorCode Version="1">001</k:ObligorCode>',
        '<k:ObligorCode Version="1" xsi:nil="true" ReasonOfNull="1"/>',
    )
    with pytest.raises(SchemaError):
        decode_item(PREMIUM, nil)
    swapped = _replace(
        data,
        OBLIGOR + PENSION,
        PENSION + OBLIGOR,
    )
    with pytest.raises(SchemaError):
        decode_item(PREMIUM, swapped)
    twice = _replace(
        data,
        '<k:ObligorCode Version="1">001</k:ObligorCode>',
        '<k:ObligorCode Version="1">001</k:ObligorCode>' * 2,
    )
    with pytest.raises(SchemaError):
        decode_item(PREMIUM, twice)


def test_encode_refuses_wrong_values_in_added_fields() -> None:
    record = FULL_PREMIUM.assessment_records[0]
    for change in (
        {"obligor_code": 1},
        {"provisional_amount": "6500"},
        {"provisional_amount": True},
        {"deferral": "1"},
        {"payment_status_date": "2025-03-31"},
    ):
        broken = dataclasses.replace(
            FULL_PREMIUM, assessment_records=(dataclasses.replace(record, **change),)
        )
        with pytest.raises(SchemaError):
            encode_item(broken)
    nil_added = dataclasses.replace(record, deferral_from=NA)  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        encode_item(dataclasses.replace(FULL_PREMIUM, assessment_records=(nil_added,)))


def test_program_item_may_hold_no_groups_but_needs_its_keys() -> None:
    empty = m.ComprehensiveProgram(m.InsuredNumber("0000012345"), m.InsurerNumber("129999"))
    assert decode_item(PROGRAM, encode_item(empty)) == empty
    data = _replace(encode_item(empty), '<k:InsurerNumber Version="1">129999</k:InsurerNumber>', "")
    with pytest.raises(SchemaError):
        decode_item(PROGRAM, data)


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=200), at=st.integers(0, 3000))
def test_damaged_added_items_raise_only_codec_errors(blob: bytes, at: int) -> None:
    data = encode_item(FULL[[CERTIFICATION, PREMIUM, PROGRAM][at % 3]])
    damaged = data[: at % len(data)] + blob + data[at % len(data) :]
    code = [CERTIFICATION, PREMIUM, PROGRAM][at % 3]
    with contextlib.suppress(CodecError):
        decode_item(code, damaged)


def test_every_item_xsd_compiles_into_the_slice_schema() -> None:
    assert PROGRAM in ITEM_CODES
    assert slice_schema() is not None


# --------------------------------------------------- 自動応答不可 in registration entries

HEADER: Final = MessageHeader("MSG-FLAG", MessageMode.PRODUCTION, "KAIGO01", "CHUKAN01")


def _entry(position: int, item: m.Item | None, flag: bool | None) -> RegistrationEntry:
    code = PROGRAM if item is None else next(c for c, v in FULL.items() if v is item)
    return RegistrationEntry(
        f"R{position}",
        Segment.REGISTRATION if item is not None else Segment.DELETION,
        "123456789012345",
        code,
        "K1",
        1,
        dt.date(2024, 4, 1),
        item=item,
        manual_review=flag,
    )


def _split(data: bytes) -> list[Any]:
    results: list[Any] = []
    for part in split_registration(io.BytesIO(data), batch_size=2):
        if isinstance(part, RecordSlice):
            results += encode_record_slice(part.data, part.first_position, part.count)
    return results


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([CERTIFICATION, PREMIUM, PROGRAM, None]),
            st.sampled_from([None, True, False]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_flag_round_trips_through_every_decoder(
    picks: list[tuple[str | None, bool | None]],
) -> None:
    entries = [
        _entry(n, None if code is None else FULL[code], flag)
        for n, (code, flag) in enumerate(picks, start=1)
    ]
    data = encode_registration_parts(HEADER, entries)
    message = decode_registration(data)
    assert message.rejected == ()
    assert [e.manual_review for e in message.entries] == [flag for _, flag in picks]
    streamed = [
        e for e in iter_registration_encoded(io.BytesIO(data)) if isinstance(e, EncodedEntry)
    ]
    assert [e.manual_review for e in streamed] == [flag for _, flag in picks]
    assert _split(data) == streamed
    staged = [entry_row(e, n) for n, e in enumerate(streamed, start=1)]
    assert STAGING_COLUMNS[-1] == "manual_review"
    assert [row[-1] for row in staged] == [flag for _, flag in picks]


def _flag_record(flag_xml: str, *, after_item: bool = False) -> bytes:
    item = encode_item(PROGRAM_ITEM).decode().split("?>\n", 1)[1]
    container = f"<SpecificPersonalInformation>{item}</SpecificPersonalInformation>"
    middle = container + flag_xml if after_item else flag_xml + container
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<IF_DBM_20113_R01 xmlns="{REGISTRATION_NAMESPACE}"><MessageHeader><MSGID>M1</MSGID>'
        "<MSGTypeID>IF_DBM_20113_R01</MSGTypeID><MSGMode>0</MSGMode>"
        "<SourceSystemID>KAIGO01</SourceSystemID><DestinationSystemID>CHUKAN01</DestinationSystemID>"
        "</MessageHeader><MessageBody><Record><RecordIdentificationNumber>R1</RecordIdentificationNumber>"
        "<SegmentOfRegistrationDelete>1</SegmentOfRegistrationDelete>"
        "<IntegratedAddressNumber>123456789012345</IntegratedAddressNumber>"
        f"<SpecificPersonalInformationCode>{PROGRAM}</SpecificPersonalInformationCode>"
        "<DataSetRecordKey>K1</DataSetRecordKey><SPIMajorVersion>1</SPIMajorVersion>"
        f"<PublicationDate>2024-04-01</PublicationDate>{middle}</Record></MessageBody>"
        "</IF_DBM_20113_R01>"
    ).encode()


@pytest.mark.parametrize(
    ("flag_xml", "after_item", "expected"),
    [
        ("<AutomaticResponseDisabledFlag>1</AutomaticResponseDisabledFlag>", False, True),
        ("<AutomaticResponseDisabledFlag> 0 </AutomaticResponseDisabledFlag>", False, None),
        ("<AutomaticResponseDisabledFlag>0</AutomaticResponseDisabledFlag>", False, False),
        ("", False, None),
        ("<AutomaticResponseDisabledFlag>2</AutomaticResponseDisabledFlag>", False, None),
        ("<AutomaticResponseDisabledFlag>true</AutomaticResponseDisabledFlag>", False, None),
        ("<AutomaticResponseDisabledFlag/>", False, None),
        ("<AutomaticResponseDisabledFlag>1</AutomaticResponseDisabledFlag>", True, None),
        ("<AutomaticResponseDisabledFlag>1</AutomaticResponseDisabledFlag>" * 2, False, None),
    ],
)
def test_flag_values_and_places(flag_xml: str, after_item: bool, expected: bool | None) -> None:
    """Only 0 or 1 in its place before the item; anything else rejects the entry by name."""
    data = _flag_record(flag_xml, after_item=after_item)
    message = decode_registration(data)
    well_formed = (
        flag_xml
        in (
            "",
            "<AutomaticResponseDisabledFlag>1</AutomaticResponseDisabledFlag>",
            "<AutomaticResponseDisabledFlag>0</AutomaticResponseDisabledFlag>",
        )
        and not after_item
    )
    if well_formed:
        assert message.rejected == () and message.entries[0].manual_review is expected
    else:
        (rejection,) = message.rejected
        assert isinstance(rejection, EntryRejection)
        assert (rejection.record_id, rejection.code) == ("R1", "schema_invalid")
        assert rejection.where is not None and rejection.where.startswith("/Record/")
    assert _split(data) == [
        e for e in iter_registration_encoded(io.BytesIO(data)) if not isinstance(e, MessageHeader)
    ]


def test_flag_is_refused_when_hostile() -> None:
    data = _flag_record("<AutomaticResponseDisabledFlag>&flag;</AutomaticResponseDisabledFlag>")
    hostile = data.replace(b"?>\n", b'?>\n<!DOCTYPE IF_DBM_20113_R01 [<!ENTITY flag "1">]>\n', 1)
    with pytest.raises(XmlForbiddenError):
        decode_registration(hostile)
    with pytest.raises(CodecError):
        list(iter_registration_encoded(io.BytesIO(hostile)))


def test_encode_refuses_a_flag_that_is_not_a_bool() -> None:
    entry = dataclasses.replace(_entry(1, PROGRAM_ITEM, None), manual_review=1)  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        encode_registration_parts(HEADER, [entry])
    # The flag travels with a deletion too (it belongs to the person and item, not a version).
    deletion = _entry(2, None, True)
    message = decode_registration(encode_registration_parts(HEADER, [deletion]))
    assert message.entries[0].manual_review is True and message.entries[0].item is None


def test_item_namespace_is_the_one_of_every_item() -> None:
    root = etree.fromstring(encode_item(PROGRAM_ITEM))
    assert etree.QName(root).namespace == ITEM_NAMESPACE
