"""Network envelopes: typed round trips, canonical body bytes, hostile input."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.codecs.envelope import (
    HUB,
    AcquisitionRequest,
    AcquisitionResponse,
    Body,
    CodeRequest,
    CodeResponse,
    ConclusionRequest,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    QueryRefusal,
    QueryRequest,
    decode_message,
    encode_body_c14n,
    encode_message,
    new_message_id,
)
from chukan.codecs.errors import (
    CodecError,
    SchemaError,
    XmlEncodingError,
    XmlForbiddenError,
    XmlLimitError,
    XmlStructureError,
)
from chukan.keys import generate_encryption_key, seal

TOKEN = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    min_size=8,
    max_size=64,
)
AGENCY = st.sampled_from(["121002", "122041", "1234567890123456"])
DIGITS14 = st.text(alphabet="0123456789", min_size=14, max_size=14)
DATES = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 12, 31))
TIMES = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
KEY = generate_encryption_key("121002")


def _sealed(data: bytes) -> object:
    return seal(KEY.public, data, b"aad")


BODIES: st.SearchStrategy[Body] = st.one_of(
    st.builds(AcquisitionRequest, st.text(alphabet="0123456789", min_size=12, max_size=12)),
    st.builds(AcquisitionResponse, TOKEN, TIMES),
    st.builds(CodeRequest, TOKEN),
    st.builds(CodeResponse, TOKEN),
    st.builds(
        QueryRequest,
        TOKEN,
        TOKEN,
        AGENCY,
        DIGITS14.map("JM".__add__),
        DIGITS14.map("JT".__add__),
        DIGITS14.map("TM".__add__),
        st.none() | DATES,
        st.booleans(),
    ),
    st.builds(
        ProvisionRequest,
        TOKEN,
        AGENCY,
        TOKEN,
        DIGITS14.map("JM".__add__),
        DIGITS14.map("JT".__add__),
        DIGITS14.map("TM".__add__),
        st.integers(1, 200),
        st.just(KEY.key_id),
        st.binary(min_size=32, max_size=32),
        st.none() | DATES,
        st.booleans(),
    ),
    st.builds(
        ProvisionAnswer,
        TOKEN,
        TOKEN,
        st.just("provided"),
        st.none(),
        st.binary(max_size=300).map(_sealed),
    ),
    st.builds(
        ProvisionAnswer,
        TOKEN,
        TOKEN,
        st.just("refused"),
        st.sampled_from(["person_unknown", "item_not_found"]),
        st.none(),
    ),
    st.builds(
        QueryRefusal,
        TOKEN,
        st.sampled_from(["not_authorized", "permit_expired"]),
        st.text(max_size=100).filter(lambda t: all(c.isprintable() for c in t)),
        st.none() | TOKEN,
    ),
    st.builds(ConclusionRequest, TOKEN),
)


def _header(body: Body, **changes: object) -> Header:
    values: dict[str, object] = {
        "message_id": new_message_id(),
        "message_type": type(body).__name__,
        "sender": "121002",
        "receiver": HUB,
        "created": dt.datetime.now(dt.UTC),
        "permit": None,
    }
    values.update(changes)
    return Header(**values)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(body=BODIES, created=TIMES, permit=st.none() | TOKEN)
def test_round_trip(body: Body, created: dt.datetime, permit: str | None) -> None:
    header = _header(body, created=created, permit=permit)
    envelope = decode_message(encode_message(header, body))
    assert envelope.header == header
    assert envelope.body == body
    # The canonical body bytes are the same whether built or parsed: permits bind them.
    assert envelope.body_c14n == encode_body_c14n(body)


@settings(max_examples=100, deadline=None)
@given(body=BODIES, data=st.data())
def test_any_corruption_is_a_codec_error_or_harmless(body: Body, data: st.DataObject) -> None:
    message = bytearray(encode_message(_header(body), body))
    index = data.draw(st.integers(0, len(message) - 1))
    message[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):  # refused cleanly, or the change was harmless
        decode_message(bytes(message))


def test_body_c14n_differs_when_a_field_differs() -> None:
    one = QueryRefusal("q" * 10, "not_authorized", "m")
    two = QueryRefusal("q" * 10, "not_authorized", "n")
    assert encode_body_c14n(one) != encode_body_c14n(two)


def test_header_type_must_match_body() -> None:
    body = CodeRequest("a" * 10)
    with pytest.raises(XmlStructureError):
        encode_message(_header(body, message_type="CodeResponse"), body)
    good = encode_message(_header(body), body)
    forged = good.replace(b"<MessageType>CodeRequest<", b"<MessageType>CodeResponse<")
    with pytest.raises(XmlStructureError):
        decode_message(forged)


def test_provided_answer_needs_a_payload() -> None:
    body = ProvisionAnswer("q" * 10, "p" * 10, "refused", "item_not_found")
    message = encode_message(_header(body), body).replace(b">refused<", b">provided<")
    with pytest.raises(XmlStructureError):
        decode_message(message)


HOSTILE = {
    "xxe": (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<Message xmlns="urn:chukan:network:1">&x;</Message>',
        XmlForbiddenError,
    ),
    "billion_laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b"<l>&c;</l>",
        XmlForbiddenError,
    ),
    "deep": (b"<a>" * 10_000 + b"</a>" * 10_000, XmlLimitError),
    "huge": (b"<a>" + b"x" * (9 * 1024 * 1024) + b"</a>", XmlLimitError),
    "wrong_encoding": (
        '<?xml version="1.0" encoding="Shift_JIS"?><a>千葉</a>'.encode("shift_jis"),
        XmlEncodingError,
    ),
    "utf16": ("<a>x</a>".encode("utf-16"), XmlEncodingError),
    "wrong_namespace": (b'<Message xmlns="urn:other" version="1"/>', XmlStructureError),
    "not_xml": (b"\x00\x01garbage", CodecError),
    "schema": (
        b'<Message xmlns="urn:chukan:network:1" version="1"><Header/></Message>',
        SchemaError,
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused(name: str) -> None:
    data, error = HOSTILE[name]
    with pytest.raises(error):
        decode_message(data)
