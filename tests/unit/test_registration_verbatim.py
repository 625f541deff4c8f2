"""Items and entries read verbatim (issue 12): the bytes of an already canonical item reused.

``items.verbatim_item_end`` accepts an item only when it is written exactly as the
reference writer writes it; ``registration_split`` then reads a plain entry's fields by one
pattern. Both must give byte for byte what the reference gives (``encode_item`` of the typed
item; the streaming parser's entries), for every input: anything unusual must not match
and go the element-by-element way. Synthetic data only.
"""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from test_items import CODES, SAMPLES, SPELLINGS, _dataclass, _respelled
from test_registration import _document, _item_fragment, _record
from test_registration_split import same, split

from chukan.codecs.errors import CodecError
from chukan.codecs.item_schema import lxml_schema
from chukan.codecs.items import (
    _LAYOUTS,
    CANONICAL_DECLARATION,
    ITEM_CODES,
    ITEM_LIMITS,
    XSI_NAMESPACE,
    _canonical_group,
    canonical_item_verbatim,
    encode_item,
    item_from_element,
)
from chukan.codecs.registration import (
    REGISTRATION_NAMESPACE,
    EncodedEntry,
    EntryRejection,
    StreamLimits,
)
from chukan.codecs.registration_split import (
    RecordSlice,
    _verbatim_records,
    slice_schema,
    split_registration,
)
from chukan.codecs.xmlsafe import parse_xml

_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _examples(count: int) -> settings:
    return settings(_SETTINGS, max_examples=count)


def _body(document: bytes) -> bytes:
    """An item document without its XML declaration (as it is embedded in an entry)."""
    if document.startswith(b"<?xml"):
        document = document[document.index(b"?>") + 2 :].lstrip()
    return document


def _valid(code: str, document: bytes) -> etree._Element | None:
    """The parsed item if it is well-formed and valid against its XSD (as in a validated slice)."""
    try:
        root = parse_xml(document, ITEM_LIMITS)
    except CodecError:
        return None
    return root if lxml_schema(ITEM_CODES[code].xsd_file).validate(root) else None


def _reference(code: str, root: etree._Element) -> bytes | None:
    """What the import stored before: encode_item of the typed item (None: refused)."""
    try:
        return encode_item(item_from_element(code, root))
    except CodecError:
        return None


def check_verbatim(code: str, document: bytes) -> bytes | None:
    """Assert the verbatim reading agrees with the reference; return it."""
    got = canonical_item_verbatim(code, _body(document))
    root = _valid(code, document)
    if got is not None and root is not None:
        assert got == _reference(code, root)
    return got


# ------------------------------------------------------------------ items


@pytest.mark.parametrize("code", CODES)
@_SETTINGS
@given(data=st.data())
def test_canonical_items_are_read_verbatim(code: str, data: st.DataObject) -> None:
    item = data.draw(_dataclass(ITEM_CODES[code].item_type))
    encoded = encode_item(item)
    assert encoded.startswith(CANONICAL_DECLARATION)
    assert check_verbatim(code, encoded) == encoded


#: Other ways to write the same (or nearly the same) item; none is canonical.
UNUSUAL: list[tuple[str, str, str]] = [
    ("single quotes", ' Version="1">', " Version='1'>"),
    ("attributes reordered", 'Version="1" xsi:nil="true"', 'xsi:nil="true" Version="1"'),
    ("nil as 1", 'xsi:nil="true"', 'xsi:nil="1"'),
    ("space before >", ' Version="1">', ' Version="1" >'),
    ("empty element written long", '"/>', '"></k:X>'),
    ("comment", "</k:InsurerNumber>", "</k:InsurerNumber><!-- c -->"),
    ("processing instruction", "</k:InsurerNumber>", "</k:InsurerNumber><?p x?>"),
    ("CDATA", 'Version="1">1', 'Version="1"><![CDATA[1]]>'),
    ("character reference", 'Version="1">1', 'Version="1">&#49;'),
    ("hex character reference", 'Version="1">1', 'Version="1">&#x31;'),
    ("whitespace between", "</k:InsurerNumber>", "</k:InsurerNumber>\n  "),
    ("padded value", 'Version="1">1', 'Version="1"> 1'),
    ("carriage return", 'Version="1">1', 'Version="1">1\r'),
    ("non-ASCII", 'Version="1">1', 'Version="1">１'),
    ("extra attribute", ' Version="1">', ' Version="1" a="b">'),
    ("extra namespace", ' Version="1">', ' xmlns:z="urn:z" Version="1">'),
    ("declarations swapped", 'xmlns:k="urn:chukan:kaigo:item:1" xmlns:xsi=', "xmlns:xsi="),
    ("xml:lang", ' Version="1">', ' xml:lang="ja" Version="1">'),
]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("code", CODES)
def test_other_spellings_agree_with_the_reference(code: str, spelling: str) -> None:
    document = _respelled(encode_item(SAMPLES[code]), spelling)
    got = check_verbatim(code, document)
    if document == encode_item(SAMPLES[code]):  # as written, or nothing to respell
        assert got == document
    else:
        assert got is None


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize(("name", "old", "new"), UNUSUAL, ids=[u[0] for u in UNUSUAL])
def test_unusual_items_are_not_read_verbatim(code: str, name: str, old: str, new: str) -> None:
    text = encode_item(SAMPLES[code]).decode()
    if name == "declarations swapped":
        k, xsi = 'xmlns:k="urn:chukan:kaigo:item:1"', f'xmlns:xsi="{XSI_NAMESPACE}"'
        text = text.replace(f"{k} {xsi}", f"{xsi} {k}")
    elif name == "empty element written long":
        text = re.sub(
            r'<k:(\w+)( Version="1" xsi:nil="true" ReasonOfNull="\d")/>', r"<k:\1\2></k:\1>", text
        )
    elif old in text:
        text = text.replace(old, new, 1)
    else:
        pytest.skip("the sample has no such place")
    assert text != encode_item(SAMPLES[code]).decode()
    # Read verbatim only when the XSD refuses it (a slice holding it is never read so).
    got = check_verbatim(code, text.encode())
    assert got is None or _valid(code, text.encode()) is None


@_examples(300)
@given(data=st.data())
def test_damaged_items_agree_with_the_reference(data: st.DataObject) -> None:
    """Random byte damage: never read verbatim into anything but the reference's bytes."""
    code = data.draw(st.sampled_from(CODES))
    encoded = bytearray(encode_item(data.draw(_dataclass(ITEM_CODES[code].item_type))))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(len(CANONICAL_DECLARATION), len(encoded) - 1))
        encoded[position] = data.draw(st.sampled_from(b"0123456789-<>&/\"' =:kx\r\n;#"))
    check_verbatim(code, bytes(encoded))


_DIGITS = st.text("0123456789", min_size=1, max_size=5)


@_SETTINGS
@given(
    year=st.text("0123456789", min_size=4, max_size=4),
    month=st.text("0123456789", min_size=2, max_size=2),
    day=st.text("0123456789", min_size=2, max_size=2),
)
def test_dates_are_read_verbatim_exactly_when_they_are_dates(
    year: str, month: str, day: str
) -> None:
    """Every day of every month (29 February of leap years only), no year 0000."""
    code = "TM00000000010202"
    value = f"{year}-{month}-{day}"
    text = re.sub(
        r'(<k:ValidFrom Version="1">)[0-9-]+<',
        rf"\g<1>{value}<",
        encode_item(SAMPLES[code]).decode(),
    )
    got = check_verbatim(code, text.encode())
    root = _valid(code, text.encode())
    if root is not None and _reference(code, root) is not None:
        assert got == _reference(code, root)
    else:
        assert got is None


@_SETTINGS
@given(amount=_DIGITS, sign=st.sampled_from(["", "-", "+"]))
def test_integers_are_read_verbatim_only_in_canonical_form(amount: str, sign: str) -> None:
    code = "TM00000000010500"
    value = sign + amount
    text = re.sub(
        r'(<k:AssessedAmount Version="1">)[0-9]+<',
        rf"\g<1>{value}<",
        encode_item(SAMPLES[code]).decode(),
    )
    got = check_verbatim(code, text.encode())
    # "-1" is written as read; the XSD refuses it (a slice holding it is never read so).
    assert (got is not None) == (value == str(int(value)))


#: XML characters, the ones the writer escapes (or might) often.
_XML_CHARS = st.one_of(
    st.sampled_from(list("&<>\r\n\t\"' ];#é１")),
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
)


@_examples(200)
@given(text=st.text(_XML_CHARS, min_size=0, max_size=12), spelling=st.integers(0, 3))
def test_string_texts_read_verbatim_are_what_the_writer_writes(text: str, spelling: int) -> None:
    """Strings the XSDs would refuse too: the verbatim bytes are the direct writer's (which the
    unit tests of items hold equal to encode_item), whatever escapes the sender used."""
    code = "TM00000000010202"
    root = parse_xml(encode_item(SAMPLES[code]), ITEM_LIMITS)
    leaf = root[0]
    leaf.text = text
    written = etree.tostring(root, encoding="UTF-8")
    if spelling == 1:  # everything escaped by number
        written = written.replace(b"&amp;", b"&#38;").replace(b"&lt;", b"&#60;")
    elif spelling == 2:  # > and carriage returns as they are
        written = written.replace(b"&gt;", b">").replace(b"&#13;", b"\r")
    elif spelling == 3:
        written = written.replace(b"&#13;", b"&#xD;")
    got = canonical_item_verbatim(code, written)
    if spelling == 0 and text:  # as libxml2 writes it: what encode_item would write
        assert got is not None
    if got is None:
        return
    parsed = parse_xml(CANONICAL_DECLARATION + written, ITEM_LIMITS)
    direct = _canonical_group(_LAYOUTS[type(SAMPLES[code])], parsed, root=True)
    assert direct is not None
    assert got == CANONICAL_DECLARATION + direct.encode()
    assert text and parsed[0].text == text


# ------------------------------------------------------------------ entries


def _flagged(record: str, flag: str) -> str:
    """The entry with its AutomaticResponseDisabledFlag (after the dates, before the item)."""
    place = (
        "<SpecificPersonalInformation>"
        if "<SpecificPersonalInformation>" in record
        else "</Record>"
    )
    return record.replace(
        place, f"<AutomaticResponseDisabledFlag>{flag}</AutomaticResponseDisabledFlag>{place}", 1
    )


def _fragment(code: str) -> str:
    return _body(encode_item(SAMPLES[code])).decode()


def _entry(record_id: str, code: str = "TM00000000010202", **fields: str) -> str:
    """An entry with the sample item of ``code`` (every code, not only test_registration's)."""
    item = _fragment(code) if fields.get("segment", "1") == "1" else None
    return _record(record_id, code=code, item=item, **fields)


PLAIN: list[str] = [
    _entry("P1"),
    _entry("P2", code="TM00000000010101", end="2025-03-31"),
    _entry("P3", segment="2", code="TM00000000010300", key="K-2_b"),
    _flagged(_entry("P4", code="TM00000000010500"), "1"),
    _flagged(_entry("P5", code="TM00000000010201"), "0"),
    _flagged(_entry("P6", segment="2", code="TM00000000010202"), "1"),
    _entry("P7", code="TM00000000010400", publication="2024-02-29"),
    _entry("P8", code="TM00000000010102", atena="7"),
]

UNUSUAL_ENTRIES: list[str] = [
    _record("U1").replace("<DataSetRecordKey>", "<!-- c -->\n      <DataSetRecordKey>"),
    _record("U2").replace("<DataSetRecordKey>", "<!-- c --><DataSetRecordKey>"),
    _record("U3", key="<![CDATA[K3]]>"),
    _record("U4", key="K&#52;"),
    _record("U5", item=_item_fragment("TM00000000010202").replace("k:", "care:")),
    _record("U6", item=_item_fragment("TM00000000010202").replace("><", ">\n<")),
    _record("U7", item=_item_fragment("TM00000000010202").replace('xsi:nil="true"', 'xsi:nil="1"')),
    _record("U8", publication=" 2024-04-01"),
    _record("U10", end="2024-03-31"),
    _record("U11", code="TM00000000019999", item=_item_fragment("TM00000000010202")),
    _record("U12", item=None),
    _record("U13", segment="2", item=_item_fragment("TM00000000010202")),
    _record("U14", item=_item_fragment("TM00000000010300")),
    _record(
        "U15",
        item=_item_fragment("TM00000000010202").replace(
            'Ratio Version="1">1<', 'Ratio Version="1">7<'
        ),
    ),
    _record("U16", publication="2023-02-29"),
    _record("U17").replace("<Record>", f'<Record xmlns="{REGISTRATION_NAMESPACE}">'),
    _record("U18").replace("</Record>", "</Record >"),
    _record("U19", item=" <!-- c -->" + _item_fragment("TM00000000010202") + "\n"),
    _record(
        "U20",
        item=_item_fragment("TM00000000010202").replace('Version="1">1<', 'Version="1">１<', 1),
    ),
    # Written in canonical form, but invalid (nine digits): validated entry by entry, refused.
    _record(
        "U21",
        item=re.sub(
            r'(<k:InsuredNumber Version="1">)[0-9]{10}<',
            r"\g<1>123456789<",
            _item_fragment("TM00000000010202"),
        ),
    ),
]


def _record_id(entry: str) -> str:
    found = re.search(r"<RecordIdentificationNumber>([^<]*)<", entry)
    assert found is not None
    return found.group(1)


def _slices(data: bytes) -> list[RecordSlice]:
    return [
        p
        for p in split_registration(io.BytesIO(data), batch_size=1000)
        if isinstance(p, RecordSlice)
    ]


def test_plain_entries_are_read_verbatim_and_agree() -> None:
    data = _document(PLAIN)
    assert not same(data, batch_size=1000)
    (part,) = _slices(data)
    root = etree.fromstring(part.data)
    assert len(_verbatim_records(part.data, root, StreamLimits())) == len(PLAIN)


@pytest.mark.parametrize("at", [0, 3, 7])
@pytest.mark.parametrize("unusual", UNUSUAL_ENTRIES, ids=[_record_id(u) for u in UNUSUAL_ENTRIES])
def test_an_unusual_entry_ends_the_verbatim_reading(unusual: str, at: int) -> None:
    """The plain entries before it are read verbatim, it and the rest element by element;
    the result is the streaming parser's, rejections included. (A slice that fails its
    validation, as with U21, is not read verbatim at all: every entry is validated alone.)"""
    records = [*PLAIN[:at], unusual, *PLAIN[at:]]
    data = _document(records)
    same(data, batch_size=1000)
    got, fell_back = split(data, StreamLimits(), 1000)
    if not fell_back:
        (part,) = _slices(data)
        root = etree.fromstring(part.data)
        schema = slice_schema()
        assert schema is not None
        if schema.validate(root):
            assert len(_verbatim_records(part.data, root, StreamLimits())) <= at
        else:  # an entry fails its schema: each is validated alone, that one refused
            assert any(
                isinstance(result, EntryRejection) and result.code == "schema_invalid"
                for result in got
            )


def test_prefixed_envelopes_are_read_verbatim() -> None:
    records = [
        r.replace("<", "<r:")
        .replace("<r:/", "</r:")
        .replace("<r:k:", "<k:")
        .replace("</r:k:", "</k:")
        for r in PLAIN
    ]
    header = (
        "<r:MessageHeader><r:MSGID>MSG-1</r:MSGID><r:MSGTypeID>IF_DBM_20113_R01</r:MSGTypeID>"
        "<r:MSGMode>1</r:MSGMode><r:SourceSystemID>S</r:SourceSystemID>"
        "<r:DestinationSystemID>D</r:DestinationSystemID></r:MessageHeader>"
    )
    data = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<r:IF_DBM_20113_R01 xmlns:r="{REGISTRATION_NAMESPACE}">{header}<r:MessageBody>'
        + "\n".join(records)
        + "</r:MessageBody></r:IF_DBM_20113_R01>"
    ).encode()
    assert not same(data, batch_size=1000)
    (part,) = _slices(data)
    assert len(_verbatim_records(part.data, etree.fromstring(part.data), StreamLimits())) == len(
        PLAIN
    )


def test_a_prefix_bound_elsewhere_is_refused_as_before() -> None:
    """Entries written with a prefix the body binds to another namespace are not entries: the
    message is refused as the streaming parser refuses it."""
    records = [
        r.replace("<Record>", "<z:Record>").replace("</Record>", "</z:Record>") for r in PLAIN[:2]
    ]
    data = _document(records, body_open='<MessageBody xmlns:z="urn:other">')
    same(data, batch_size=1000)


#: Plain too: whitespace between the envelope's elements, a version with a leading zero are
#: read as the tree path reads them.
SPACED: list[str] = [
    _record("S0", version="01"),
    _entry("S1").replace("<DataSetRecordKey>", "\n      <DataSetRecordKey>"),
    _record("S2", item=" \n" + _fragment("TM00000000010202") + "\n\t"),
    _entry("S3").replace("<", "\n  <").replace("\n  </", "</").replace("\n  <k:", "<k:"),
]


def test_whitespace_in_the_envelope_is_read_verbatim() -> None:
    records = [*PLAIN, *SPACED]
    data = _document(records)
    assert not same(data, batch_size=1000)
    (part,) = _slices(data)
    assert len(_verbatim_records(part.data, etree.fromstring(part.data), StreamLimits())) == len(
        records
    )


_PIECES = [*PLAIN, *SPACED, *UNUSUAL_ENTRIES, "<!-- x -->", " \n"]


@_examples(120)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=10),
    batch_size=st.integers(1, 5),
)
def test_mixed_messages_give_what_the_streaming_parser_gives(
    pieces: list[str], batch_size: int
) -> None:
    ids: dict[str, int] = {}
    records = []
    for piece in pieces:  # distinct record ids, so that entries stay told apart
        ids[piece] = ids.get(piece, 0) + 1
        records.append(
            piece.replace(
                "</RecordIdentificationNumber>", f"x{ids[piece]}</RecordIdentificationNumber>", 1
            )
        )
    same(_document(records), batch_size=batch_size)


@pytest.mark.parametrize(
    "limits",
    [
        StreamLimits(max_entry_elements=10),
        StreamLimits(max_entry_elements=25),
        StreamLimits(max_depth=6),
        StreamLimits(max_depth=7),
    ],
    ids=["10 elements", "25 elements", "depth 6", "depth 7"],
)
def test_entries_read_verbatim_keep_the_limits(limits: StreamLimits) -> None:
    """Entries over the element or depth limit are refused as the streaming parser refuses
    them, whether or not they were written plainly."""
    data = _document([*PLAIN, *SPACED])
    same(data, limits, batch_size=1000)
    (part,) = _slices(data)
    read = _verbatim_records(part.data, etree.fromstring(part.data), limits)
    if limits.max_depth < 7:
        assert read == []


def test_items_in_canonical_form_are_still_validated() -> None:
    """An item written exactly in canonical form but invalid (a 被保険者番号 of nine digits) is
    refused with the schema's code, and the plain entries beside it are accepted."""
    invalid = UNUSUAL_ENTRIES[-1]
    assert _record_id(invalid) == "U21"
    got, fell_back = split(_document([*PLAIN[:2], invalid, *PLAIN[2:]]), StreamLimits(), 1000)
    assert not fell_back and isinstance(got, list)
    rejected = [r for r in got if isinstance(r, EntryRejection)]
    assert [(r.record_id, r.code, r.position) for r in rejected] == [("U21", "schema_invalid", 3)]
    assert sum(isinstance(r, EncodedEntry) for r in got) == len(PLAIN)
