"""Unit tests of IF_DBM_20113_R01 registration messages (chukan.codecs.registration).

Synthetic data only: 団体内統合宛名番号 and 被保険者番号 are made-up digit strings.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import tracemalloc
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.codecs import item_model as m
from chukan.codecs.errors import (
    CodecError,
    SchemaError,
    XmlEncodingError,
    XmlError,
    XmlForbiddenError,
    XmlLimitError,
    XmlStructureError,
)
from chukan.codecs.item_model import Nil, ReasonOfNull, YearMonth
from chukan.codecs.items import ITEM_NAMESPACE, decode_item, encode_item
from chukan.codecs.registration import (
    REGISTRATION_LIMITS,
    REGISTRATION_NAMESPACE,
    EncodedEntry,
    EntryRejection,
    MessageHeader,
    MessageMode,
    MessageResult,
    RawRecord,
    RegistrationEntry,
    RegistrationMessage,
    RejectionCode,
    Segment,
    StreamLimits,
    decode_registration,
    encode_record_batch,
    encode_registration,
    iter_registration,
    iter_registration_encoded,
    iter_registration_records,
    record_batch,
    registration_xmlschema,
)
from chukan.codecs.xmlsafe import XmlLimits, check_prolog

NA = Nil(ReasonOfNull.NOT_APPLICABLE)
INSURED = m.InsuredNumber("0000054321")
INSURER = m.InsurerNumber("129999")
UPDATED = date(2024, 4, 1)

ITEMS: dict[str, m.Item] = {
    "TM00000000010101": m.InsuredQualification(
        INSURED,
        INSURER,
        (
            m.QualificationRecord(
                UPDATED,
                m.InsuredCategory.FIRST,
                date(2020, 4, 1),
                m.AcquisitionReason.AGE_65,
                NA,
                NA,
            ),
        ),
    ),
    "TM00000000010102": m.AddressException(
        INSURED,
        INSURER,
        (
            m.AddressExceptionRecord(
                UPDATED, date(2022, 6, 1), NA, NA, m.InsurerNumber("128888"), NA
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
                m.CareLevel.SUPPORT_2,
                date(2023, 9, 1),
                date(2024, 8, 31),
                NA,
                m.DeemedCertification.REGULAR,
            ),
        ),
    ),
    "TM00000000010202": m.BurdenRatio(
        INSURED,
        INSURER,
        (m.BurdenRatioRecord(UPDATED, m.BurdenRatioCode.ONE_TENTH, date(2024, 8, 1), NA),),
    ),
    "TM00000000010300": m.Benefit(
        INSURED,
        INSURER,
        (
            m.BenefitRecord(
                UPDATED,
                YearMonth(2024, 3),
                m.ServiceTypeCode("15"),
                NA,
                m.Units(900),
                m.Yen(8100),
                m.Yen(900),
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
                m.IncomeCategoryCode("09"),
                m.CollectionMethod.ORDINARY,
                m.Yen(96000),
                m.Yen(96000),
                NA,
            ),
        ),
    ),
}
HEADER = MessageHeader(
    message_id="MSG-0001",
    mode=MessageMode.TEST,
    source_system_id="KAIGO01",
    destination_system_id="CHUKAN01",
)


def _entry(index: int, code: str, segment: Segment = Segment.REGISTRATION) -> RegistrationEntry:
    return RegistrationEntry(
        record_id=f"R{index:05d}",
        segment=segment,
        integrated_address_number=f"{900000000000000 + index:015d}",
        item_code=code,
        data_set_record_key=f"KEY-{index}",
        major_version=1,
        publication_date=date(2024, 4, 1),
        published_end_date=date(2025, 3, 31) if index % 2 else None,
        item=ITEMS[code] if segment is Segment.REGISTRATION else None,
    )


def _message() -> RegistrationMessage:
    entries = [_entry(i, code) for i, code in enumerate(sorted(ITEMS), start=1)]
    entries += [
        _entry(100 + i, code, Segment.DELETION) for i, code in enumerate(sorted(ITEMS), start=1)
    ]
    header = MessageHeader(
        "MSG-0002", MessageMode.PRODUCTION, "KAIGO01", "CHUKAN01", "RCPT-77", MessageResult.ACCEPTED
    )
    return RegistrationMessage(header, tuple(entries))


def _item_fragment(code: str) -> str:
    return encode_item(ITEMS[code]).decode().split("?>\n", 1)[1]


HEADER_XML = (
    "<MessageHeader><MSGID>MSG-0003</MSGID><MSGTypeID>IF_DBM_20113_R01</MSGTypeID>"
    "<MSGMode>1</MSGMode><SourceSystemID>KAIGO01</SourceSystemID>"
    "<DestinationSystemID>CHUKAN01</DestinationSystemID></MessageHeader>"
)


def _record(
    record_id: str = "R1",
    *,
    segment: str = "1",
    atena: str = "123456789012345",
    code: str = "TM00000000010202",
    key: str = "K1",
    version: str = "1",
    publication: str = "2024-04-01",
    end: str | None = None,
    item: str | None = "default",
) -> str:
    if item == "default":
        item = _item_fragment(code) if segment == "1" else None
    return (
        f"<Record><RecordIdentificationNumber>{record_id}</RecordIdentificationNumber>"
        f"<SegmentOfRegistrationDelete>{segment}</SegmentOfRegistrationDelete>"
        f"<IntegratedAddressNumber>{atena}</IntegratedAddressNumber>"
        f"<SpecificPersonalInformationCode>{code}</SpecificPersonalInformationCode>"
        f"<DataSetRecordKey>{key}</DataSetRecordKey><SPIMajorVersion>{version}</SPIMajorVersion>"
        f"<PublicationDate>{publication}</PublicationDate>"
        + ("" if end is None else f"<PublishedEndDate>{end}</PublishedEndDate>")
        + (
            ""
            if item is None
            else f"<SpecificPersonalInformation>{item}</SpecificPersonalInformation>"
        )
        + "</Record>"
    )


def _document(
    records: list[str], header: str = HEADER_XML, body_open: str = "<MessageBody>"
) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<IF_DBM_20113_R01 xmlns="{REGISTRATION_NAMESPACE}">\n'
        f"  {header}\n  {body_open}\n    " + "\n    ".join(records) + "\n  </MessageBody>\n"
        "</IF_DBM_20113_R01>\n"
    ).encode()


def _both(data: bytes) -> tuple[RegistrationMessage, list[Any]]:
    return decode_registration(data), list(iter_registration(io.BytesIO(data)))


# -------------------------------------------------------------- round trips


def test_round_trip_through_bytes_and_stream() -> None:
    message = _message()
    data = encode_registration(message)
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    decoded, streamed = _both(data)
    assert decoded == message
    assert streamed == [message.header, *message.entries]
    assert encode_registration(decoded) == data
    assert registration_xmlschema().is_valid(data)


def test_item_xml_is_canonical_whatever_the_sender_wrote() -> None:
    """Other prefixes, indentation and xsi:nil="1" give the same stored bytes."""
    item = f"""
      <care:BurdenRatio xmlns:care="{ITEM_NAMESPACE}"
          xmlns:i="http://www.w3.org/2001/XMLSchema-instance" Version="1">
        <care:InsuredNumber Version="1">0000054321</care:InsuredNumber>
        <care:InsurerNumber Version="1">129999</care:InsurerNumber>
        <care:BurdenRatioRecord Version="1" TimeAndDateOfUpdate="2024-04-01">
          <care:Ratio Version="1">1</care:Ratio>
          <care:ValidFrom Version="1">2024-08-01</care:ValidFrom>
          <care:ValidTo i:nil="1" ReasonOfNull="1" Version="1"/>
        </care:BurdenRatioRecord>
      </care:BurdenRatio>
    """
    decoded, streamed = _both(_document([_record(item=item)]))
    for entry in (decoded.entries[0], streamed[1]):
        assert isinstance(entry, RegistrationEntry)
        assert entry.item == ITEMS["TM00000000010202"]
        assert entry.item_xml == encode_item(ITEMS["TM00000000010202"])
        assert entry.item_xml is not None
        assert decode_item("TM00000000010202", entry.item_xml) == entry.item
    assert decoded.entries[0].item_xml == streamed[1].item_xml


_ids = st.from_regex(r"\A[0-9A-Za-z_\-]{1,32}\Z")


@settings(max_examples=25, deadline=None)
@given(
    message_id=st.from_regex(r"\A[0-9A-Za-z_.\-]{1,64}\Z"),
    mode=st.sampled_from(MessageMode),
    source=_ids,
    destination=_ids,
    reception=st.none() | _ids,
    result=st.none() | st.sampled_from(MessageResult),
    entries=st.lists(
        st.tuples(
            _ids,
            st.sampled_from(Segment),
            st.from_regex(r"\A[0-9]{1,15}\Z"),
            st.sampled_from(sorted(ITEMS)),
            st.from_regex(r"\A[0-9A-Za-z_\-]{1,64}\Z"),
            st.dates(),
            st.none() | st.integers(0, 3000),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_round_trip_property(
    message_id: str,
    mode: MessageMode,
    source: str,
    destination: str,
    reception: str | None,
    result: MessageResult | None,
    entries: list[tuple[str, Segment, str, str, str, date, int | None]],
) -> None:
    header = MessageHeader(message_id, mode, source, destination, reception, result)
    values = []
    for record_id, segment, atena, code, key, published, days in entries:
        end = None
        if days is not None:
            end = date.fromordinal(min(published.toordinal() + days, date.max.toordinal()))
        item = ITEMS[code] if segment is Segment.REGISTRATION else None
        values.append(
            RegistrationEntry(record_id, segment, atena, code, key, 1, published, end, item)
        )
    message = RegistrationMessage(header, tuple(values))
    data = encode_registration(message)
    decoded, streamed = _both(data)
    assert decoded == message
    assert streamed == [header, *values]


def test_stream_from_path_and_pathlike(tmp_path: Path) -> None:
    message = _message()
    target = tmp_path / "upload.xml"
    target.write_bytes(encode_registration(message))
    expected = [message.header, *message.entries]
    assert list(iter_registration(target)) == expected
    assert list(iter_registration(str(target))) == expected


# ----------------------------------------------------- per-entry rejections

_BAD_ITEM_0201 = _item_fragment("TM00000000010201").replace(
    '<k:CareLevel Version="1">13<', '<k:CareLevel Version="1">11<'
)
_NIL_WITHOUT_REASON = _item_fragment("TM00000000010202").replace(' ReasonOfNull="1"', "")
_OTHER_NAMESPACE = _item_fragment("TM00000000010202").replace(ITEM_NAMESPACE, "urn:example:x")

# (record, expected record id, expected code, expected where)
REJECTED_CASES = [
    (
        _record("R2", atena="1234567890123456"),
        "R2",
        "schema_invalid",
        "/Record/IntegratedAddressNumber",
    ),
    (
        _record("R3", code="TM00000000019999", item=_item_fragment("TM00000000010202")),
        "R3",
        RejectionCode.ITEM_UNKNOWN,
        "/Record/SpecificPersonalInformationCode",
    ),
    (
        _record("R4", item=None),
        "R4",
        RejectionCode.ITEM_MISSING,
        "/Record/SpecificPersonalInformation",
    ),
    (
        _record("R5", segment="2", item=_item_fragment("TM00000000010202")),
        "R5",
        RejectionCode.ITEM_UNEXPECTED,
        "/Record/SpecificPersonalInformation",
    ),
    (
        _record("R6", version="2"),
        "R6",
        RejectionCode.VERSION_UNSUPPORTED,
        "/Record/SPIMajorVersion",
    ),
    (
        _record("R7", end="2024-03-31"),
        "R7",
        RejectionCode.PERIOD_INVALID,
        "/Record/PublishedEndDate",
    ),
    (
        _record("R8", code="TM00000000010201", item=_BAD_ITEM_0201),
        "R8",
        "schema_invalid",
        "/Record/SpecificPersonalInformation/CareCertification/CertificationRecord/CareLevel",
    ),
    (
        _record("R9", item=_item_fragment("TM00000000010101")),
        "R9",
        "xml_structure",
        "/Record/SpecificPersonalInformation",
    ),
    (
        _record("R10", item=_NIL_WITHOUT_REASON),
        "R10",
        "schema_invalid",
        "/Record/SpecificPersonalInformation/BurdenRatio/BurdenRatioRecord/ValidTo",
    ),
    (_record("R 11"), None, "schema_invalid", "/Record/RecordIdentificationNumber"),
    (
        _record("R12", item=_OTHER_NAMESPACE),
        "R12",
        "schema_invalid",
        "/Record/SpecificPersonalInformation/BurdenRatio",
    ),
    (_record("R13", publication="2024-02-30"), "R13", "schema_invalid", "/Record/PublicationDate"),
    (_record("R14", segment="3"), "R14", "schema_invalid", "/Record/SegmentOfRegistrationDelete"),
]


def test_bad_entries_are_listed_not_fatal() -> None:
    records = [_record("R1")] + [case[0] for case in REJECTED_CASES]
    records.append(_record("R99", segment="2", code="TM00000000010300"))
    decoded, streamed = _both(_document(records))

    assert [entry.record_id for entry in decoded.entries] == ["R1", "R99"]
    assert decoded.entries[1].segment is Segment.DELETION
    assert decoded.entries[1].item is None
    assert decoded.entries[1].item_xml is None
    expected = [
        (record_id, str(code), position)
        for position, (_, record_id, code, _) in enumerate(REJECTED_CASES, start=2)
    ]
    assert [(r.record_id, r.code, r.position) for r in decoded.rejected] == expected
    for rejection, (_, _, _, where) in zip(decoded.rejected, REJECTED_CASES, strict=True):
        assert rejection.where == where, rejection
        for personal in ("1234567890123456", "0000054321", "123456789012345"):
            assert personal not in rejection.message

    # The stream reports the same, in document order, after the header.
    assert streamed[0] == decoded.header
    assert [x for x in streamed[1:] if isinstance(x, RegistrationEntry)] == list(decoded.entries)
    assert [x for x in streamed[1:] if isinstance(x, EntryRejection)] == list(decoded.rejected)
    assert [getattr(x, "position", None) for x in streamed[1:]] == [
        None,
        *range(2, len(records)),
        None,
    ]


# ------------------------------------------------------------ broken envelope

_GOOD = _record("R1")
BROKEN: list[tuple[str, bytes, type[CodecError]]] = [
    (
        "wrong root",
        _document([_GOOD])
        .replace(b"IF_DBM_20113_R01 xmlns", b"IF_DBM_99999_R01 xmlns")
        .replace(b"</IF_DBM_20113_R01>", b"</IF_DBM_99999_R01>"),
        XmlStructureError,
    ),
    (
        "wrong namespace",
        _document([_GOOD]).replace(REGISTRATION_NAMESPACE.encode(), b"urn:x"),
        XmlStructureError,
    ),
    ("no header", _document([_GOOD], header=""), XmlStructureError),
    ("two headers", _document([_GOOD], header=HEADER_XML + HEADER_XML), XmlStructureError),
    (
        "header after body",
        _document([_GOOD], header="").replace(
            b"</MessageBody>", b"</MessageBody>" + HEADER_XML.encode()
        ),
        XmlStructureError,
    ),
    (
        "element after body",
        _document([_GOOD]).replace(b"</MessageBody>", b"</MessageBody><Extra/>"),
        XmlStructureError,
    ),
    (
        "invalid mode",
        _document([_GOOD], header=HEADER_XML.replace("<MSGMode>1", "<MSGMode>5")),
        SchemaError,
    ),
    (
        "missing MSGID",
        _document([_GOOD], header=HEADER_XML.replace("<MSGID>MSG-0003</MSGID>", "")),
        SchemaError,
    ),
    (
        "other message type",
        _document(
            [_GOOD],
            header=HEADER_XML.replace("<MSGTypeID>IF_DBM_20113_R01", "<MSGTypeID>IF_DBM_20114_R01"),
        ),
        SchemaError,
    ),
    ("empty body", _document([]), XmlStructureError),
    ("foreign element in body", _document([_GOOD, "<Other/>", _record("R2")]), XmlStructureError),
    ("foreign element last in body", _document([_GOOD, "<Other/>"]), XmlStructureError),
    ("text in body", _document([_GOOD, "stray text", _record("R2")]), XmlStructureError),
    ("text after last entry", _document([_GOOD, "stray"]), XmlStructureError),
    ("text in root", _document([_GOOD], header="stray" + HEADER_XML), XmlStructureError),
    (
        "attribute on root",
        _document([_GOOD]).replace(b"<IF_DBM_20113_R01 ", b'<IF_DBM_20113_R01 a="1" '),
        XmlStructureError,
    ),
    ("attribute on body", _document([_GOOD], body_open='<MessageBody a="1">'), XmlStructureError),
    ("record outside body", _document([_GOOD], header=HEADER_XML + _GOOD), XmlStructureError),
    ("truncated", _document([_GOOD])[:-40], XmlError),
    ("not xml", b"registration", XmlError),
]


@pytest.mark.parametrize(("name", "data", "expected"), BROKEN, ids=[case[0] for case in BROKEN])
def test_broken_envelope_raises(name: str, data: bytes, expected: type[CodecError]) -> None:
    with pytest.raises(expected):
        decode_registration(data)
    with pytest.raises(expected):
        list(iter_registration(io.BytesIO(data)))


def test_broken_envelope_messages_hold_no_values() -> None:
    data = _document([_GOOD], header=HEADER_XML.replace("<MSGMode>1", "<MSGMode>secret-value"))
    with pytest.raises(SchemaError) as caught:
        decode_registration(data)
    assert "secret-value" not in str(caught.value)
    assert caught.value.where == "/MessageHeader/MSGMode"


# ----------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"item": None}, "/IF_DBM_20113_R01/MessageBody/Record[1]"),
        ({"segment": Segment.DELETION}, "/IF_DBM_20113_R01/MessageBody/Record[1]"),
        ({"item_code": "TM00000000010101"}, "/IF_DBM_20113_R01/MessageBody/Record[1]/Spec"),
        ({"integrated_address_number": "12345678901234567"}, "/IF_DBM_20113_R01/MessageBody"),
        (
            {"item": m.BurdenRatio(m.InsuredNumber("1"), INSURER, ())},
            "/IF_DBM_20113_R01/MessageBody/Record[1]/SpecificPersonalInformation/BurdenRatio",
        ),
    ],
)
def test_encode_refuses_invalid_entries(change: dict[str, Any], where: str) -> None:
    bad = dataclasses.replace(_entry(1, "TM00000000010202"), **change)
    with pytest.raises(SchemaError) as caught:
        encode_registration(RegistrationMessage(HEADER, (bad,)))
    assert caught.value.where is not None
    assert caught.value.where.startswith(where)


def test_encode_refuses_invalid_headers_and_empty_bodies() -> None:
    entry = _entry(1, "TM00000000010202")
    bad_header = MessageHeader("has space", MessageMode.TEST, "KAIGO01", "CHUKAN01")
    with pytest.raises(SchemaError):
        encode_registration(RegistrationMessage(bad_header, (entry,)))
    with pytest.raises(SchemaError):
        encode_registration(RegistrationMessage(HEADER, ()))
    with pytest.raises(SchemaError):
        encode_registration(RegistrationMessage(HEADER, ("not an entry",)))  # type: ignore[arg-type]


# ----------------------------------------------------------- bulk streaming

_STREAM_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<IF_DBM_20113_R01 xmlns="{REGISTRATION_NAMESPACE}">{HEADER_XML}<MessageBody>\n'
)
_DELETION = (
    "<Record><RecordIdentificationNumber>R{0:07d}</RecordIdentificationNumber>"
    "<SegmentOfRegistrationDelete>2</SegmentOfRegistrationDelete>"
    "<IntegratedAddressNumber>{0:015d}</IntegratedAddressNumber>"
    "<SpecificPersonalInformationCode>TM00000000010202</SpecificPersonalInformationCode>"
    "<DataSetRecordKey>K{0}</DataSetRecordKey><SPIMajorVersion>1</SPIMajorVersion>"
    "<PublicationDate>2024-04-01</PublicationDate></Record>\n"
)
_REGISTRATION = _DELETION.replace(
    "<SegmentOfRegistrationDelete>2<", "<SegmentOfRegistrationDelete>1<"
).replace(
    "</Record>",
    "<SpecificPersonalInformation>"
    + _item_fragment("TM00000000010202").replace("{", "{{").replace("}", "}}")
    + "</SpecificPersonalInformation></Record>",
)


def _write_bulk(path: Path, count: int, registration_every: int = 20) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(_STREAM_HEAD)
        for index in range(count):
            template = _REGISTRATION if index % registration_every == 0 else _DELETION
            out.write(template.format(index))
        out.write("</MessageBody></IF_DBM_20113_R01>\n")


def _rss() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def test_streaming_100000_entries_in_bounded_memory(tmp_path: Path) -> None:
    count = 100_000
    bulk = tmp_path / "bulk.xml"
    _write_bulk(bulk, count)
    size = bulk.stat().st_size
    assert size > 30 * 1024 * 1024

    rss_before = _rss()
    tracemalloc.start()
    try:
        registrations = deletions = 0
        first: Any = None
        last: Any = None
        for result in iter_registration(bulk):
            if first is None:
                first = result
                continue
            assert isinstance(result, RegistrationEntry), result
            if result.segment is Segment.REGISTRATION:
                registrations += 1
            else:
                deletions += 1
            last = result
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        bulk.unlink()
    rss_after = _rss()

    assert isinstance(first, MessageHeader)
    assert registrations == count // 20
    assert deletions == count - count // 20
    assert isinstance(last, RegistrationEntry)
    assert last.record_id == f"R{count - 1:07d}"
    # Python-side memory: a few entries at a time, far below the file.
    assert peak < min(size // 20, 8 * 1024 * 1024), (peak, size)
    # libxml2's own memory is invisible to tracemalloc: the resident set must not
    # grow with the file either (decoded entries are dropped from the tree).
    if rss_before is not None and rss_after is not None:
        assert rss_after - rss_before < size // 4, (rss_after - rss_before, size)


def test_stream_yields_before_the_end_of_a_large_file(tmp_path: Path) -> None:
    """Results arrive while the file is read, not after all of it was parsed."""
    bulk = tmp_path / "bulk.xml"
    _write_bulk(bulk, 5_000)
    with bulk.open("rb") as stream:
        results = iter_registration(stream)
        assert isinstance(next(results), MessageHeader)
        assert isinstance(next(results), RegistrationEntry)
        assert stream.tell() < bulk.stat().st_size // 2
        results.close()


# ------------------------------------------------------------- hostile input

_BIG = 50 * 1024 * 1024
_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">'
        % (level, b"&lol%d;" % (level - 1) * 10 if level > 1 else b"&lol;" * 10)
        for level in range(1, 10)
    )
    + b"]><lolz>&lol9;</lolz>"
)


def _deep(levels: int) -> str:
    return "<a>" * levels + "</a>" * levels


def _straddling_doctype() -> bytes:
    """A DOCTYPE split across the parser's 32 KiB reads."""
    prefix = b'<?xml version="1.0"?><!--'
    padding = b"x" * (32 * 1024 - len(prefix) - 3 - 4)
    return (
        prefix
        + padding
        + b"-->"
        + b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    )


def _many_groups(count: int) -> str:
    item = _item_fragment("TM00000000010202")
    start = item.index("<k:BurdenRatioRecord")
    end = item.index("</k:BurdenRatioRecord>") + len("</k:BurdenRatioRecord>")
    return item[:start] + item[start:end] * count + item[end:]


HOSTILE: list[tuple[str, Callable[[], bytes], StreamLimits, type[CodecError]]] = [
    (
        "xxe",
        lambda: (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
        ),
        StreamLimits(),
        XmlForbiddenError,
    ),
    ("billion laughs", lambda: _LAUGHS, StreamLimits(), XmlForbiddenError),
    ("doctype across reads", _straddling_doctype, StreamLimits(), XmlForbiddenError),
    (
        "external dtd",
        lambda: b'<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r/>',
        StreamLimits(),
        XmlForbiddenError,
    ),
    (
        "50 MB entry",
        lambda: _document(
            [_record(item="<k:x xmlns:k='" + ITEM_NAMESPACE + "'>" + "a" * _BIG + "</k:x>")]
        ),
        StreamLimits(),
        XmlLimitError,
    ),
    (
        "50 MB between entries",
        lambda: _document([_GOOD, " " * _BIG, _record("R2")]),
        StreamLimits(),
        XmlLimitError,
    ),
    (
        "document over max_bytes",
        lambda: _document([_record(f"R{i}") for i in range(2_000)]),
        StreamLimits(max_bytes=256 * 1024),
        XmlLimitError,
    ),
    (
        "10,000 deep",
        lambda: _document([_record(item=_deep(10_000))]),
        StreamLimits(),
        XmlLimitError,
    ),
    (
        "deeper than max_depth",
        lambda: _document([_record(item=_deep(12))]),
        StreamLimits(max_depth=10),
        XmlLimitError,
    ),
    (
        "too many elements",
        lambda: _document([_record(item=_many_groups(40))]),
        StreamLimits(max_entry_elements=100),
        XmlLimitError,
    ),
    (
        "Shift_JIS",
        lambda: _document([_GOOD]).replace(b"UTF-8", b"Shift_JIS"),
        StreamLimits(),
        XmlEncodingError,
    ),
    (
        "UTF-16",
        lambda: _document([_GOOD]).decode().replace("UTF-8", "UTF-16").encode("utf-16"),
        StreamLimits(),
        XmlEncodingError,
    ),
    (
        "invalid UTF-8",
        lambda: _document([_GOOD]).replace(b">K1<", b">\x82\xa0<"),
        StreamLimits(),
        XmlEncodingError,
    ),
    ("undefined entity", lambda: _document([_record(key="&undefined;")]), StreamLimits(), XmlError),
]


def _refused_before_parsing(data: bytes, limits: XmlLimits) -> CodecError | None:
    """The refusal of the linear pre-check that runs before libxml2, if any."""
    try:
        check_prolog(data, limits)
    except CodecError as exc:
        return exc
    return None


class _CountingSource(io.BytesIO):
    """The document as a stream that counts the bytes the parser pulled from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.handed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.handed += len(chunk)
        return chunk


#: What the stream may read beyond its limit before refusing: the 1 KiB head, a few
#: 32 KiB parser reads and the envelope before the first entry mark.
_READ_SLACK = 256 * 1024


@pytest.mark.parametrize(
    ("name", "make", "limits", "expected"), HOSTILE, ids=[case[0] for case in HOSTILE]
)
def test_hostile_stream_is_refused_within_its_limits(
    name: str, make: Callable[[], bytes], limits: StreamLimits, expected: type[CodecError]
) -> None:
    """Deterministic bound on the work: bytes pulled from the source before the refusal.

    However large the document, no more than the limit (plus a few reads) is read and
    parsed: entity expansion and DTDs never happen, depth and element counts are
    bounded by the parser and the per-entry check.
    """
    data = make()
    source = _CountingSource(data)
    with pytest.raises(CodecError) as caught:
        for _ in iter_registration(source, limits):
            pass
    assert isinstance(caught.value, expected), (name, repr(caught.value))
    bound = min(len(data), min(limits.max_bytes, limits.max_entry_bytes) + _READ_SLACK)
    assert source.handed <= bound, (name, source.handed, bound)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _LAUGHS, XmlForbiddenError),
        (lambda: b"<r>" + b"a" * _BIG + b"</r>", XmlLimitError),
        (lambda: _document([_record(item=_deep(10_000))]), XmlLimitError),
        (lambda: _document([_GOOD]).replace(b"UTF-8", b"Shift_JIS"), XmlEncodingError),
    ],
)
def test_hostile_input_to_decode_registration(
    make: Callable[[], bytes], expected: type[CodecError]
) -> None:
    """Deterministic bound on the work: libxml2 sees at most ``max_bytes`` of UTF-8
    without DTDs; whatever is larger, declares entities or is not UTF-8 is refused by
    the linear pre-check before any parsing."""
    data = make()
    with pytest.raises(CodecError) as caught:
        decode_registration(data)
    assert isinstance(caught.value, expected), repr(caught.value)
    early = _refused_before_parsing(data, REGISTRATION_LIMITS)
    if early is None:
        assert len(data) <= REGISTRATION_LIMITS.max_bytes
    else:
        assert type(early) is type(caught.value)


def test_text_streams_are_refused() -> None:
    with pytest.raises(XmlError):
        list(iter_registration(io.StringIO(_document([_GOOD]).decode())))  # type: ignore[arg-type]


def test_stream_ending_early_closes_its_file(tmp_path: Path) -> None:
    """An abandoned stream closes the file it opened (a leak would warn, and warnings fail)."""
    target = tmp_path / "upload.xml"
    target.write_bytes(encode_registration(_message()))
    results = iter_registration(target)
    assert isinstance(next(results), MessageHeader)
    results.close()
    del results
    gc.collect()


# ------------------------------------------------ split, then decode elsewhere


def test_raw_records_decode_to_what_the_stream_gives() -> None:
    """iter_registration_records + decode_record == iter_registration, entry by entry."""
    from chukan.codecs.registration import RawRecord, decode_record, iter_registration_records

    records = [_record("R1")] + [case[0] for case in REJECTED_CASES]
    records.append(_record("R99", segment="2", code="TM00000000010300"))
    data = _document(records)
    streamed = list(iter_registration(io.BytesIO(data)))
    raw = list(iter_registration_records(io.BytesIO(data)))
    assert raw[0] == streamed[0]
    assert all(isinstance(x, RawRecord) for x in raw[1:])
    decoded = [decode_record(x.data, x.position) for x in raw[1:] if isinstance(x, RawRecord)]
    assert decoded == streamed[1:]


def test_raw_records_keep_the_stream_checks() -> None:
    from chukan.codecs.registration import iter_registration_records

    with pytest.raises(XmlError):
        list(iter_registration_records(io.BytesIO(_document([_record("R1")]) + b"<x/>")))
    wrong_namespace = _document([_record("R1")]).replace(
        REGISTRATION_NAMESPACE.encode(), b"urn:example:other"
    )
    with pytest.raises(XmlStructureError):
        list(iter_registration_records(io.BytesIO(wrong_namespace)))
    with pytest.raises(XmlForbiddenError):
        list(
            iter_registration_records(
                io.BytesIO(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
            )
        )


def test_decode_record_refuses_what_is_not_a_record() -> None:
    from chukan.codecs.registration import decode_record

    with pytest.raises(XmlStructureError):
        decode_record(f'<MessageBody xmlns="{REGISTRATION_NAMESPACE}"/>'.encode(), 1)
    with pytest.raises(XmlForbiddenError):
        decode_record(b'<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>', 1)


# ---------------------------------------- items as canonical bytes (bulk import)


def _encoded(entry: RegistrationEntry) -> EncodedEntry:
    return EncodedEntry(
        record_id=entry.record_id,
        segment=entry.segment,
        integrated_address_number=entry.integrated_address_number,
        item_code=entry.item_code,
        data_set_record_key=entry.data_set_record_key,
        major_version=entry.major_version,
        publication_date=entry.publication_date,
        published_end_date=entry.published_end_date,
        content=entry.item_xml,
    )


_RESPELLED_0202 = (
    _item_fragment("TM00000000010202")
    .replace("k:", "care:")
    .replace("xmlns:k=", "xmlns:care=")
    .replace('xsi:nil="true"', 'xsi:nil="1"')
    .replace("><", ">\n  <")
)


def _mixed_records() -> list[str]:
    return [
        _record("R1"),
        _record("R1b", item=_RESPELLED_0202),
        *(case[0] for case in REJECTED_CASES),
        _record("R99", segment="2", code="TM00000000010300"),
        *(_record(f"S{code}", code=code) for code in sorted(ITEMS)),
    ]


def test_encoded_stream_gives_what_the_decoded_stream_stores() -> None:
    """iter_registration_encoded: the same entries and rejections, items as item_xml."""
    data = _document(_mixed_records())
    streamed = list(iter_registration(io.BytesIO(data)))
    encoded = list(iter_registration_encoded(io.BytesIO(data)))
    assert encoded[0] == streamed[0]
    assert len(encoded) == len(streamed)
    for decoded, direct in zip(streamed[1:], encoded[1:], strict=True):
        if isinstance(decoded, RegistrationEntry):
            assert direct == _encoded(decoded)
        else:
            assert direct == decoded
    assert sum(isinstance(x, EntryRejection) for x in encoded) == len(REJECTED_CASES)


def test_record_batches_give_what_the_stream_gives() -> None:
    """Entries split off, joined in batches and checked elsewhere: the same, in order."""
    data = _document(_mixed_records())
    encoded = list(iter_registration_encoded(io.BytesIO(data)))[1:]
    raw = [x.data for x in iter_registration_records(io.BytesIO(data)) if isinstance(x, RawRecord)]
    assert encode_record_batch(record_batch(raw), 1) == encoded
    assert encode_record_batch(record_batch(raw[:5]), 1) == encoded[:5]
    assert encode_record_batch(record_batch(raw[5:]), 6) == encoded[5:]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (b"<RecordBatch></RecordBatch>" + b"<x/>", XmlError),
        (f'<MessageBody xmlns="{REGISTRATION_NAMESPACE}"/>'.encode(), XmlStructureError),
        (record_batch([b"<Record/>"]), XmlStructureError),
        (record_batch([b"text"]), XmlStructureError),
        (b'<RecordBatch id="1"></RecordBatch>', XmlStructureError),
        (record_batch([b"<?pi x?>"]), XmlForbiddenError),
        (b'<!DOCTYPE r [<!ENTITY a "b">]><RecordBatch>&a;</RecordBatch>', XmlForbiddenError),
        (
            record_batch(
                [
                    f'<Record xmlns="{REGISTRATION_NAMESPACE}">'.encode()
                    + b"<a>" * 20
                    + b"</a>" * 20
                    + b"</Record>"
                ]
            ),
            XmlLimitError,
        ),
    ],
)
def test_record_batch_refuses_what_is_not_a_batch(batch: bytes, expected: type[CodecError]) -> None:
    with pytest.raises(expected):
        encode_record_batch(batch, 1)
