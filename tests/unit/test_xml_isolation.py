"""XML safety of the codecs: each parse reports only its own error, hostile markup
(DTD, processing instruction, XInclude) is refused wherever XML comes in, and every
item code that is accepted has a schema.

lxml keeps a per-thread *global* error log; when a parse fails without an entry in
its parser's own log (an empty stream, for one), the exception's ``error_log`` is a
copy of that global log — the earlier parses of the thread. Reading it made an empty
registration message report the previous message's encoding error.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import io
import random
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from chukan.codecs import catalog
from chukan.codecs.envelope import HUB, CodeRequest, Header, decode_message, encode_message
from chukan.codecs.errors import (
    CodecError,
    ItemCodeUnsupportedError,
    SchemaError,
    XmlEncodingError,
    XmlError,
    XmlForbiddenError,
    XmlStructureError,
)
from chukan.codecs.item_schema import lxml_schema
from chukan.codecs.item_stream import syntax_error
from chukan.codecs.items import ITEM_CODES, decode_item, encode_item, validate_item_fast
from chukan.codecs.registration import (
    MessageHeader,
    MessageMode,
    RawRecord,
    RegistrationEntry,
    RegistrationMessage,
    Segment,
    decode_record,
    decode_registration,
    encode_registration,
    iter_registration,
    iter_registration_records,
)
from chukan.codecs.sample_items import local_tax_item, sample_item
from chukan.codecs.schema_items import (
    SCHEMA_ITEMS,
    accepted_item_codes,
    canonical_item_bytes,
    is_accepted_item_code,
    schema_item_xmlschema,
)
from chukan.codecs.xmlsafe import XINCLUDE_NAMESPACE, parse_xml

TODAY = dt.date(2024, 4, 1)
LOCAL_TAX = catalog.LOCAL_TAX_INCOME.code
BURDEN = "TM00000000010202"
PI = b"<?chukan-test run?>"
XINCLUDE = (
    f'<xi:include xmlns:xi="{XINCLUDE_NAMESPACE}" href="file:///etc/passwd" parse="text"/>'
).encode()


# ----------------------------------------------------------------- error isolation


def _stream_error(data: bytes) -> CodecError | None:
    """The error of streaming ``data`` as a registration message (the API's path)."""
    try:
        for _ in iter_registration(io.BytesIO(data)):
            pass
    except CodecError as exc:
        return exc
    return None


def _tree_error(data: bytes) -> CodecError | None:
    """The error of decoding ``data`` in memory (``parse_xml``)."""
    try:
        decode_registration(data)
    except CodecError as exc:
        return exc
    return None


Parse = Callable[[bytes], CodecError | None]


def _described(error: CodecError | None) -> tuple[str, str, str] | None:
    return None if error is None else (type(error).__name__, error.code, str(error))


INVALID_UTF8 = b'<?xml version="1.0" encoding="UTF-8"?><a>\xc3\x28</a>'


@pytest.mark.parametrize("parse", [_stream_error, _tree_error], ids=["stream", "tree"])
@pytest.mark.parametrize("empty", [b"", b" \r\n\t "], ids=["empty", "whitespace"])
def test_empty_document_after_an_encoding_error_names_only_itself(
    parse: Parse, empty: bytes
) -> None:
    first = parse(INVALID_UTF8)
    assert isinstance(first, XmlEncodingError)
    second = parse(empty)
    assert type(second) is XmlError, repr(second)
    assert second.code == "xml_malformed"
    assert "empty" in str(second)
    assert "ENCODING" not in str(second) and "UTF-8" not in str(second)


@pytest.mark.parametrize("parse", [_stream_error, _tree_error], ids=["stream", "tree"])
def test_a_document_without_element_after_an_encoding_error_names_only_itself(
    parse: Parse,
) -> None:
    """No element at all: libxml2 logs nothing for this parse, lxml raises regardless."""
    for data in (b"<?xml version='1.0' encoding='UTF-8'?>", b"<!-- only a comment -->"):
        first = parse(INVALID_UTF8)
        assert isinstance(first, XmlEncodingError)
        second = parse(data)
        assert second is not None and second.code == "xml_malformed", repr(second)
        assert "ENCODING" not in str(second) and "UTF-8" not in str(second)


def test_syntax_errors_are_described_from_their_own_parse() -> None:
    """lxml hands this thread's global log to an exception its parse did not log."""
    assert _stream_error(INVALID_UTF8) is not None  # leaves an entry in the global log
    with pytest.raises(etree.XMLSyntaxError) as caught:
        for _ in etree.iterparse(io.BytesIO(b""), events=("start",)):
            pass
    assert "ERR_INVALID_ENCODING" in str(caught.value.error_log)  # the trap is real
    error = syntax_error(caught.value)
    assert type(error) is XmlError
    assert "ENCODING" not in str(error) and "UTF-8" not in str(error)


def test_errors_do_not_travel_between_calls_on_one_worker_thread() -> None:
    """As ``asyncio.to_thread`` does: one worker thread serves request after request."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        for _ in range(3):
            bad = worker.submit(_stream_error, INVALID_UTF8).result()
            assert bad is not None and bad.code == "xml_encoding"
            mismatch = worker.submit(_stream_error, b"<a><b></a>").result()
            assert "ERR_TAG_NAME_MISMATCH" in str(mismatch)
            empty = worker.submit(_stream_error, b"").result()
            assert _described(empty) == (
                "XmlError",
                "xml_malformed",
                "the document is empty (at /)",
            )


def _in_fresh_thread(parse: Parse, data: bytes) -> tuple[str, str, str] | None:
    """The error ``data`` gets in a thread that has parsed nothing before."""
    result: list[tuple[str, str, str] | None] = []
    thread = threading.Thread(target=lambda: result.append(_described(parse(data))))
    thread.start()
    thread.join()
    assert len(result) == 1, "the parse raised something other than a codec error"
    return result[0]


HOSTILE_DOCUMENTS: list[bytes] = [
    b"",
    b"   ",
    INVALID_UTF8,
    b"<a>\x82\xa0</a>",
    b"<a><b></a>",
    b"<a>",
    b"<a/><b/>",
    b"<a>&nope;</a>",
    b"<a>&#0;</a>",
    b"<a b></a>",
    b"<a b='1' b='2'/>",
    b"<1a/>",
    b"<a>" * 300 + b"</a>" * 300,
    b"<?xml version='1.0' encoding='Shift_JIS'?><a/>",
    b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
    PI + b"<a/>",
    b"<a>" + XINCLUDE + b"</a>",
    b"\xef\xbb\xbf",
    b"<?xml version='1.0' encoding='UTF-8'?>",  # no element: libxml2 logs nothing
    b"<!-- only a comment -->",
    b"<",
    b"<a></b>",
    b"<x:a/>",
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.sampled_from(HOSTILE_DOCUMENTS) | st.binary(max_size=64),
    second=st.sampled_from(HOSTILE_DOCUMENTS) | st.binary(max_size=64),
    parse=st.sampled_from([_stream_error, _tree_error]),
)
def test_an_error_is_the_same_whatever_was_parsed_before(
    first: bytes, second: bytes, parse: Parse
) -> None:
    """Property: the error of ``second`` does not depend on the thread's history."""
    parse(first)
    assert _described(parse(second)) == _in_fresh_thread(parse, second)


# ----------------------------------------------------------------- hostile markup


_ITEM = encode_item(sample_item(BURDEN, random.Random(1), TODAY))
_ITEM_DECLARATION, _ITEM_REST = _ITEM.split(b"?>\n", 1)
PI_IN_ITEMS = {
    "before the root": _ITEM_DECLARATION + b"?>\n" + PI + _ITEM_REST,
    "inside": _ITEM.replace(b"<k:InsuredNumber", PI + b"<k:InsuredNumber", 1),
    "after the root": _ITEM + PI,
    "xml-stylesheet": b'<?xml-stylesheet href="http://127.0.0.1:9/x.xsl"?>' + _ITEM_REST,
}


@pytest.mark.parametrize("where", sorted(PI_IN_ITEMS))
def test_processing_instructions_are_refused_not_dropped(where: str) -> None:
    data = PI_IN_ITEMS[where]
    checks: list[Callable[[bytes], object]] = [
        parse_xml,
        lambda d: decode_item(BURDEN, d),
        lambda d: validate_item_fast(BURDEN, d),
        lambda d: canonical_item_bytes(BURDEN, d),
    ]
    for check in checks:
        with pytest.raises(XmlForbiddenError, match="processing instruction"):
            check(data)


def test_xinclude_is_refused_wherever_it_is() -> None:
    nested = _ITEM.replace(b"<k:InsuredNumber", XINCLUDE + b"<k:InsuredNumber", 1)
    fallback = _ITEM.replace(
        b"<k:InsuredNumber",
        f'<x:fallback xmlns:x="{XINCLUDE_NAMESPACE}"/><k:InsuredNumber'.encode(),
        1,
    )
    for data in (nested, fallback, XINCLUDE):
        with pytest.raises(XmlForbiddenError, match="XInclude"):
            parse_xml(data)
        with pytest.raises(XmlForbiddenError):
            decode_item(BURDEN, data)
    # Declaring the namespace is harmless; only its elements are refused.
    declared = _ITEM.replace(
        b"<k:BurdenRatio ", f'<k:BurdenRatio xmlns:xi="{XINCLUDE_NAMESPACE}" '.encode()
    )
    assert decode_item(BURDEN, declared) == decode_item(BURDEN, _ITEM)


def test_lookalikes_of_forbidden_markup_in_text_are_data() -> None:
    root = parse_xml(b"<a><![CDATA[<?pi no?> <xi:include/>]]></a>")
    assert root.text == "<?pi no?> <xi:include/>"
    assert parse_xml(b"<a><!-- <?pi no?> --></a>").text is None  # comments are dropped


def _message(codes: tuple[str, ...] = (BURDEN, "TM00000000010201")) -> bytes:
    entries = tuple(
        RegistrationEntry(
            f"R{index}",
            Segment.REGISTRATION,
            "123456789012345",
            code,
            "K1",
            1,
            TODAY,
            item=sample_item(code, random.Random(index), TODAY),
        )
        for index, code in enumerate(codes)
    )
    header = MessageHeader("MSG-XML-SAFETY", MessageMode.PRODUCTION, "KAIGO01", "CHUKAN01")
    return encode_registration(RegistrationMessage(header, entries))


def _placements(message: bytes) -> dict[str, bytes]:
    declaration, rest = message.split(b"?>\n", 1)
    return {
        "PI before the root": declaration + b"?>\n" + PI + rest,
        "PI in the header": message.replace(b"<r:MSGID>", PI + b"<r:MSGID>", 1),
        "PI between entries": message.replace(
            b"</r:Record><r:Record>", b"</r:Record>" + PI + b"<r:Record>", 1
        ),
        "PI in an item": message.replace(b"<k:InsuredNumber", PI + b"<k:InsuredNumber", 1),
        "PI in the last item": message[::-1].replace(
            b"<k:InsuredNumber"[::-1], (PI + b"<k:InsuredNumber")[::-1], 1
        )[::-1],
        "PI after the root": message + PI,
        "XInclude in an item": message.replace(
            b"<k:InsuredNumber", XINCLUDE + b"<k:InsuredNumber", 1
        ),
        "XInclude in the body": message.replace(
            b"<r:MessageBody>", b"<r:MessageBody>" + XINCLUDE, 1
        ),
        "XInclude in a record": message.replace(
            b"<r:DataSetRecordKey>", XINCLUDE + b"<r:DataSetRecordKey>", 1
        ),
        "DOCTYPE": declaration + b"?>\n<!DOCTYPE r:IF_DBM_20113_R01>" + rest,
    }


@pytest.mark.parametrize("where", sorted(_placements(_message())))
def test_registration_messages_with_hostile_markup_are_refused_whole(where: str) -> None:
    message = _message()
    data = _placements(message)[where]
    assert data != message
    with pytest.raises(XmlForbiddenError):
        decode_registration(data)
    with pytest.raises(XmlForbiddenError):
        for _ in iter_registration(io.BytesIO(data)):
            pass
    with pytest.raises(XmlForbiddenError):  # the bulk import's splitting pass
        for _ in iter_registration_records(io.BytesIO(data)):
            pass


def test_a_raw_entry_with_hostile_markup_is_refused() -> None:
    records = [
        r for r in iter_registration_records(io.BytesIO(_message())) if isinstance(r, RawRecord)
    ]
    assert records
    for record in records:
        assert isinstance(decode_record(record.data, record.position), RegistrationEntry)
        for bad in (
            record.data.replace(b"<r:DataSetRecordKey>", PI + b"<r:DataSetRecordKey>", 1),
            record.data.replace(b"<r:DataSetRecordKey>", XINCLUDE + b"<r:DataSetRecordKey>", 1),
            record.data + PI,
        ):
            with pytest.raises(XmlForbiddenError):
                decode_record(bad, record.position)


def test_network_envelopes_with_hostile_markup_are_refused() -> None:
    body = CodeRequest("acquisition-number-0001")
    header = Header("MSG-0001", "CodeRequest", "121002", HUB, dt.datetime.now(dt.UTC))
    message = encode_message(header, body)
    assert decode_message(message).body == body
    declaration, rest = message.split(b"?>", 1)
    for data in (
        declaration + b"?>" + PI + rest,
        message + PI,
        message.replace(b"acquisition-number-0001<", b"acquisition-number-0001" + PI + b"<", 1),
        message.replace(
            b"acquisition-number-0001<", b"acquisition-number-0001" + XINCLUDE + b"<", 1
        ),
    ):
        assert data != message
        with pytest.raises(XmlForbiddenError):
            decode_message(data)


# ------------------------------------------------------------- items need a schema


def test_every_item_code_of_the_catalog_is_accepted_with_a_schema() -> None:
    assert {item.code for item in catalog.ITEMS} <= accepted_item_codes()
    assert accepted_item_codes() == set(ITEM_CODES) | set(SCHEMA_ITEMS)
    for spec in SCHEMA_ITEMS.values():
        lxml_schema(spec.xsd_file)  # compiles with libxml2
        assert schema_item_xmlschema(spec.code) is not None  # and with xmlschema


@pytest.mark.parametrize("code", ["TM99999999999999", "TM00000000020002", "", "tm00000000020001"])
def test_items_of_codes_without_a_schema_are_refused(code: str) -> None:
    assert not is_accepted_item_code(code)
    with pytest.raises(ItemCodeUnsupportedError) as caught:
        canonical_item_bytes(code, b"<a/>")
    assert caught.value.code == "item_code_unsupported"


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), year=st.integers(1990, 2100))
def test_local_tax_samples_validate_and_are_stored_as_given(seed: int, year: int) -> None:
    data = local_tax_item(random.Random(seed), dt.date(year, 6, 1))
    assert canonical_item_bytes(LOCAL_TAX, data) == data
    assert schema_item_xmlschema(LOCAL_TAX).is_valid(data)


def test_local_tax_item_is_stored_as_parsed() -> None:
    """Comments dropped, UTF-8 declaration written: what the hardened parser read."""
    data = local_tax_item(random.Random(3), TODAY)
    body = data.split(b"?>\n", 1)[1]
    sent = "<!-- 船橋市 -->".encode() + body.replace(b"<TaxYear>", b"<!-- year --><TaxYear>")
    assert canonical_item_bytes(LOCAL_TAX, sent) == data


_LOCAL = local_tax_item(random.Random(4), TODAY)
LOCAL_TAX_REFUSED: list[tuple[str, bytes, type[CodecError]]] = [
    (
        "wrong namespace",
        _LOCAL.replace(b"urn:chukan:item:local-tax:1", b"urn:x"),
        XmlStructureError,
    ),
    (
        "wrong root",
        _LOCAL.replace(b"LocalTaxIncome", b"LocalTaxes"),
        XmlStructureError,
    ),
    ("another item", encode_item(sample_item(BURDEN, random.Random(5), TODAY)), XmlStructureError),
    (
        "extra element",
        _LOCAL.replace(b"</LocalTaxIncome>", b"<Note>x</Note></LocalTaxIncome>"),
        SchemaError,
    ),
    (
        "missing element",
        _LOCAL.replace(b"<TaxableStatus>1</TaxableStatus>", b"").replace(
            b"<TaxableStatus>2</TaxableStatus>", b""
        ),
        SchemaError,
    ),
    (
        "bad status",
        _LOCAL.replace(b"<TaxableStatus>1<", b"<TaxableStatus>9<").replace(
            b"<TaxableStatus>2<", b"<TaxableStatus>9<"
        ),
        SchemaError,
    ),
    ("negative income", _LOCAL.replace(b"<TotalIncome>", b"<TotalIncome>-"), SchemaError),
    ("other version", _LOCAL.replace(b'Version="1"', b'Version="2"'), SchemaError),
    ("extra attribute", _LOCAL.replace(b'Version="1"', b'Version="1" Extra="x"'), SchemaError),
    ("PI", _LOCAL.replace(b"<TaxYear>", PI + b"<TaxYear>"), XmlForbiddenError),
    ("XInclude", _LOCAL.replace(b"<TaxYear>", XINCLUDE + b"<TaxYear>"), XmlForbiddenError),
    ("DOCTYPE", b"<!DOCTYPE LocalTaxIncome>" + _LOCAL.split(b"?>\n", 1)[1], XmlForbiddenError),
    ("empty", b"", XmlError),
]


@pytest.mark.parametrize(
    ("name", "data", "expected"), LOCAL_TAX_REFUSED, ids=[case[0] for case in LOCAL_TAX_REFUSED]
)
def test_local_tax_items_outside_the_schema_are_refused(
    name: str, data: bytes, expected: type[CodecError]
) -> None:
    assert data != _LOCAL, name
    with pytest.raises(expected) as caught:
        canonical_item_bytes(LOCAL_TAX, data)
    assert type(caught.value) is expected, repr(caught.value)
    if expected is SchemaError:
        assert not schema_item_xmlschema(LOCAL_TAX).is_valid(data)


def test_schema_errors_do_not_echo_values() -> None:
    income = etree.fromstring(_LOCAL).findtext("{urn:chukan:item:local-tax:1}TotalIncome")
    assert income
    data = _LOCAL.replace(b"<TotalIncome>", b"<TotalIncome>-", 1)
    with pytest.raises(SchemaError) as caught:
        canonical_item_bytes(LOCAL_TAX, data)
    assert caught.value.where == "/LocalTaxIncome/TotalIncome"
    assert income not in str(caught.value)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_local_tax_items_raise_only_codec_errors(data: st.DataObject) -> None:
    """Property: whatever the bytes, a codec error or bytes that both validators accept."""
    original = bytearray(_LOCAL)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    damaged = bytes(original)
    try:
        stored = canonical_item_bytes(LOCAL_TAX, damaged)
    except CodecError:
        return
    assert schema_item_xmlschema(LOCAL_TAX).is_valid(stored)


def test_schema_item_specs_agree_with_the_catalog() -> None:
    for spec in SCHEMA_ITEMS.values():
        known = catalog.ITEMS_BY_CODE[spec.code]
        assert (known.name, known.data_set) == (spec.name, spec.data_set)
