"""Authorization list (照会許可照合リスト): sample contents, formats, lookups, signing."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from chukan.codecs import catalog
from chukan.keys import SigningKeyPair, b64d, b64e, generate_signing_key
from chukan.permits import (
    CSV_COLUMNS,
    LIST_NAMESPACE,
    AuthorizationList,
    AuthorizationListError,
    AuthorizationRow,
    ListExpiredError,
    ListSignatureError,
    NotAuthorizedError,
    PermitsError,
    list_to_csv,
    list_to_xml,
    load_sample_list,
    parse_list_csv,
    parse_list_xml,
    sign_list,
    verify_signed_list,
)
from chukan.permits.sample_list import (
    EVERY_CITY,
    UNCONFIRMED_MARK,
    expand_rules,
    generate_rows,
    load_table,
)

ISSUED = datetime(2025, 4, 1, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(days=30)
VERSION = 3

CHIBA_PROVIDES = {
    2, 3, 6, 7, 11, 15, 27, 38, 42, 56, 65, 69, 70, 80, 83, 86, 87, 108, 115, 116,
    125, 128, 132, 137, 144, 158, 161,
}  # fmt: skip
CHIBA_QUERIES = {131, 132}
CHIBA_ITEMS = {
    item.code for item in catalog.ITEMS if re.fullmatch(r"TM0000000001[0-9]{4}", item.code)
}

HUB = generate_signing_key("hub")
OTHER = generate_signing_key("other")
TRUSTED = {HUB.key_id: HUB.public}


def _row(**changes: object) -> AuthorizationRow:
    base = AuthorizationRow(
        requester=catalog.FUNABASHI_CITY,
        provider=catalog.CHIBA_CITY,
        business_code=catalog.LTC_BUSINESS,
        procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
        item_code=catalog.CERTIFICATION.code,
        legal_basis=132,
        valid_from=date(2020, 4, 1),
        valid_to=None,
        note="船橋市長：要介護認定",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _list(*rows: AuthorizationRow) -> AuthorizationList:
    return AuthorizationList(rows=rows, version=VERSION, issued_at=ISSUED, expires_at=EXPIRES)


def _parse_csv(data: bytes) -> AuthorizationList:
    return parse_list_csv(data, version=VERSION, issued_at=ISSUED, expires_at=EXPIRES)


def _csv_line(values: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def sample() -> AuthorizationList:
    return load_sample_list(issued_at=ISSUED, expires_at=EXPIRES)


# -- the sample list ----------------------------------------------------------------


def test_sample_list_chiba_provides_under_exactly_its_27_items(sample: AuthorizationList) -> None:
    rows = sample.rows_for_provider(catalog.CHIBA_CITY)
    assert {row.legal_basis for row in rows} == CHIBA_PROVIDES


def test_sample_list_chiba_queries_exactly_131_and_132(sample: AuthorizationList) -> None:
    rows = sample.rows_for_requester(catalog.CHIBA_CITY)
    assert {row.legal_basis for row in rows} == CHIBA_QUERIES
    assert {row.provider for row in sample.rows if row.provider != catalog.CHIBA_CITY} == {
        row.provider for row in rows
    }


def test_sample_list_every_city_of_chiba_prefecture_for_131_and_132(
    sample: AuthorizationList,
) -> None:
    others = {city.code for city in catalog.CHIBA_PREFECTURE_CITIES} - {catalog.CHIBA_CITY}
    assert len(others) == 36
    for basis in CHIBA_QUERIES:
        providers = {
            row.provider
            for row in sample.rows_for_requester(catalog.CHIBA_CITY)
            if row.legal_basis == basis
        }
        assert providers == others, basis
    requesters = {
        row.requester
        for row in sample.rows_for_provider(catalog.CHIBA_CITY)
        if row.legal_basis == 132
    }
    assert requesters == others


def test_sample_list_rows_are_sourced_or_marked(sample: AuthorizationList) -> None:
    table = load_table()
    assert set(table) == CHIBA_PROVIDES | CHIBA_QUERIES
    for row in sample.rows:
        entry = table[row.legal_basis]
        assert row.note.startswith(UNCONFIRMED_MARK) is not entry.confirmed
        assert catalog.AGENCY_NAMES[row.requester] in row.note
    for entry in table.values():
        assert entry.finding, entry.legal_basis
        if entry.predecessor:
            assert entry.source.startswith("番号法 別表第二"), entry.legal_basis
        if entry.confirmed:
            assert entry.source, entry.legal_basis


def test_sample_list_has_no_duplicate_keys(sample: AuthorizationList) -> None:
    keys = [row.key for row in sample.rows]
    assert len(keys) == len(set(keys))


def test_sample_list_demo_rows(sample: AuthorizationList) -> None:
    on = date(2025, 4, 1)
    provision = sample.check(
        catalog.FUNABASHI_CITY,
        catalog.CHIBA_CITY,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        on,
    )
    assert (provision.legal_basis, provision.business_code) == (132, catalog.LTC_BUSINESS)
    premium = sample.check(
        catalog.CHIBA_CITY,
        catalog.FUNABASHI_CITY,
        catalog.LTC_PREMIUM_PROCEDURE,
        catalog.LOCAL_TAX_INCOME.code,
        on,
    )
    assert premium.legal_basis == 131
    certification = sample.check(
        catalog.CHIBA_CITY,
        catalog.FUNABASHI_CITY,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        on,
    )
    assert certification.legal_basis == 132


def test_sample_list_rows_are_plausible(sample: AuthorizationList) -> None:
    for row in sample.rows_for_provider(catalog.CHIBA_CITY):
        assert row.item_code in CHIBA_ITEMS
        assert row.procedure_code == f"JT{row.legal_basis:06d}00000001"
        assert row.note
        assert row.requester != catalog.CHIBA_CITY
    for row in sample.rows:
        assert row.item_code in catalog.ITEMS_BY_CODE
        for agency in (row.requester, row.provider):
            assert agency in catalog.AGENCY_NAMES
            if len(agency) == 6:
                assert catalog.is_local_government_code(agency)
            else:
                assert len(agency) == 16


def test_sample_list_file_is_canonical_csv(sample: AuthorizationList) -> None:
    data = (
        resources.files("chukan.permits")
        .joinpath("data")
        .joinpath("authorization_list.csv")
        .read_bytes()
    )
    assert list_to_csv(sample) == data
    generated = _list(*generate_rows())
    assert list_to_csv(generated) == data, "regenerate: python -m chukan.permits.sample_list"


def test_expand_rules_refuses_unknown_items_and_two_city_sets() -> None:
    table = load_table()
    rule = {
        "legal_basis": "132",
        "requester": EVERY_CITY,
        "provider": catalog.CHIBA_CITY,
        "business_code": catalog.LTC_BUSINESS,
        "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
        "item_code": catalog.CERTIFICATION.code,
        "valid_from": "2020-04-01",
    }
    assert len(expand_rules([rule], table)) == 36
    with pytest.raises(AuthorizationListError, match="not in the table"):
        expand_rules([{**rule, "legal_basis": "999"}], table)
    with pytest.raises(AuthorizationListError, match="only one party"):
        expand_rules([{**rule, "provider": EVERY_CITY}], table)


# -- round trips ----------------------------------------------------------------------

_agencies = st.one_of(
    st.from_regex(r"[0-9]{6}", fullmatch=True), st.from_regex(r"[0-9]{16}", fullmatch=True)
)
_notes = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")).filter(
        lambda c: c not in "\ufffe\uffff\x85"
    ),
    max_size=30,
).filter(lambda s: not s.startswith(("=", "+", "-", "@")))


@st.composite
def _rows(draw: st.DrawFn) -> AuthorizationRow:
    requester = draw(_agencies)
    provider = draw(_agencies.filter(lambda a: a != requester))
    valid_from = draw(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)))
    days = draw(st.none() | st.integers(min_value=0, max_value=5000))
    return AuthorizationRow(
        requester=requester,
        provider=provider,
        business_code=draw(st.from_regex(r"JM[0-9]{14}", fullmatch=True)),
        procedure_code=draw(st.from_regex(r"JT[0-9]{14}", fullmatch=True)),
        item_code=draw(st.from_regex(r"TM[0-9]{14}", fullmatch=True)),
        legal_basis=draw(st.integers(min_value=1, max_value=999)),
        valid_from=valid_from,
        valid_to=None if days is None else valid_from + timedelta(days=days),
        note=draw(_notes),
    )


@st.composite
def _lists(draw: st.DrawFn) -> AuthorizationList:
    rows = draw(st.lists(_rows(), max_size=6, unique_by=lambda row: row.key))
    issued = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.just(UTC),
        )
    )
    lifetime = draw(st.integers(min_value=1, max_value=10**8))
    return AuthorizationList(
        rows=tuple(rows),
        version=draw(st.integers(min_value=1, max_value=2**31 - 1)),
        issued_at=issued,
        expires_at=issued + timedelta(seconds=lifetime),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lists())
def test_csv_round_trip(lst: AuthorizationList) -> None:
    again = parse_list_csv(
        list_to_csv(lst), version=lst.version, issued_at=lst.issued_at, expires_at=lst.expires_at
    )
    assert again == lst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lists())
def test_xml_round_trip(lst: AuthorizationList) -> None:
    assert parse_list_xml(list_to_xml(lst)) == lst


def test_csv_accepts_bom_and_crlf(sample: AuthorizationList) -> None:
    data = b"\xef\xbb\xbf" + list_to_csv(sample).replace(b"\n", b"\r\n")
    assert parse_list_csv(data, version=1, issued_at=ISSUED, expires_at=EXPIRES) == sample


def test_csv_quotes_notes_with_commas_and_quotes() -> None:
    lst = _list(_row(note='a,b "c"'))
    data = list_to_csv(lst)
    assert b'"a,b ""c"""' in data
    assert _parse_csv(data) == lst


def test_xml_keeps_metadata(sample: AuthorizationList) -> None:
    lst = replace(sample, version=7)
    again = parse_list_xml(list_to_xml(lst))
    assert (again.version, again.issued_at, again.expires_at) == (7, ISSUED, EXPIRES)


# -- XSD -------------------------------------------------------------------------------


def _xml_with(edit: str, value: str | None, *, row: int = 2) -> bytes:
    """The XML of a two-row list with one attribute of one Row changed (None removes it)."""
    root = etree.fromstring(list_to_xml(_list(_row(), _row(item_code=catalog.BENEFIT.code))))
    element = root if row == 0 else root[row - 1]
    if value is None:
        del element.attrib[edit]
    else:
        element.set(edit, value)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<AuthorizationList/>", id="no-namespace"),
        pytest.param(
            f'<Other xmlns="{LIST_NAMESPACE}"/>'.encode(),
            id="wrong-root",
        ),
        pytest.param(
            f'<AuthorizationList xmlns="{LIST_NAMESPACE}" version="1" '
            'issued_at="2025-04-01T00:00:00Z" expires_at="2025-05-01T00:00:00Z">'
            "<Foo/></AuthorizationList>".encode(),
            id="foreign-element",
        ),
        pytest.param(
            f'<AuthorizationList xmlns="{LIST_NAMESPACE}" version="1" '
            'issued_at="2025-04-01T00:00:00+09:00" expires_at="2025-05-01T00:00:00Z"/>'.encode(),
            id="not-utc",
        ),
        pytest.param(
            f'<AuthorizationList xmlns="{LIST_NAMESPACE}" version="0" '
            'issued_at="2025-04-01T00:00:00Z" expires_at="2025-05-01T00:00:00Z"/>'.encode(),
            id="version-zero",
        ),
        pytest.param(
            f'<AuthorizationList xmlns="{LIST_NAMESPACE}" version="1" '
            'issued_at="2025-04-01T00:00:00Z"/>'.encode(),
            id="missing-expiry",
        ),
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b"<AuthorizationList>&e;</AuthorizationList>",
            id="xxe",
        ),
        pytest.param(b"not xml", id="not-xml"),
        pytest.param(b"", id="empty"),
        pytest.param(b"<a>" * 100 + b"</a>" * 100, id="deep"),
    ],
)
def test_xml_refuses_bad_documents(data: bytes) -> None:
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(data)
    assert type(info.value) is AuthorizationListError


def test_xml_refuses_text_and_extra_attributes() -> None:
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(_xml_with("extra", "1"))
    assert (info.value.row, info.value.field) == (2, "extra")
    root = etree.fromstring(list_to_xml(_list(_row())))
    root[0].text = "text"
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(etree.tostring(root))
    assert info.value.row == 1


def test_xml_metadata_errors_name_the_field() -> None:
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(_xml_with("issued_at", "2025-04-01", row=0))
    assert (info.value.row, info.value.field) == (None, "issued_at")
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(_xml_with("expires_at", "2020-01-01T00:00:00Z", row=0))
    assert (info.value.row, info.value.field) == (None, "expires_at")


# -- lookups ----------------------------------------------------------------------------


def test_find_respects_validity_dates() -> None:
    old = _row(valid_from=date(2020, 4, 1), valid_to=date(2024, 3, 31), legal_basis=131)
    new = _row(valid_from=date(2024, 4, 1), valid_to=None, legal_basis=132)
    lst = _list(old, new)
    key = (old.requester, old.provider, old.procedure_code, old.item_code)
    assert lst.find(*key, on=date(2020, 3, 31)) is None
    assert lst.find(*key, on=date(2020, 4, 1)) == old
    assert lst.find(*key, on=date(2024, 3, 31)) == old
    assert lst.find(*key, on=date(2024, 4, 1)) == new
    assert lst.find(*key, on=date(2099, 1, 1)) == new


def test_find_needs_every_key_part(sample: AuthorizationList) -> None:
    on = date(2025, 4, 1)
    args = [
        catalog.FUNABASHI_CITY,
        catalog.CHIBA_CITY,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
    ]
    assert sample.find(args[0], args[1], args[2], args[3], on) is not None
    for position, wrong in enumerate(
        ["131016", catalog.FUNABASHI_CITY, catalog.LTC_PREMIUM_PROCEDURE, catalog.BENEFIT.code]
    ):
        changed = list(args)
        changed[position] = wrong
        requester, provider, procedure, item = changed
        assert sample.find(requester, provider, procedure, item, on) is None
        with pytest.raises(NotAuthorizedError) as info:
            sample.check(requester, provider, procedure, item, on)
        assert info.value.code == "not_authorized"


def test_find_refuses_datetimes(sample: AuthorizationList) -> None:
    with pytest.raises(TypeError):
        sample.find("1", "2", "3", "4", datetime(2025, 4, 1, tzinfo=UTC))


def test_rows_for_agency(sample: AuthorizationList) -> None:
    assert {row.requester for row in sample.rows_for_requester(catalog.FUNABASHI_CITY)} == {
        catalog.FUNABASHI_CITY
    }
    assert sample.rows_for_provider("999999") == ()


def test_is_expired(sample: AuthorizationList) -> None:
    assert not sample.is_expired(EXPIRES - timedelta(microseconds=1))
    assert sample.is_expired(EXPIRES)


# -- duplicates and inconsistencies -----------------------------------------------------


def test_identical_duplicate_rows_are_refused() -> None:
    with pytest.raises(AuthorizationListError, match="duplicates row 1") as info:
        _list(_row(), _row(item_code=catalog.BENEFIT.code), _row())
    assert info.value.row == 3


def test_overlapping_validity_is_refused_adjacent_is_not() -> None:
    first = _row(valid_to=date(2024, 3, 31))
    with pytest.raises(AuthorizationListError, match="overlaps row 1") as info:
        _list(first, _row(valid_from=date(2024, 3, 31), legal_basis=131))
    assert info.value.row == 2
    with pytest.raises(AuthorizationListError, match="overlaps"):
        _list(_row(), _row(valid_from=date(2030, 1, 1), note="other"))
    _list(first, _row(valid_from=date(2024, 4, 1)))


def test_duplicates_in_csv_name_the_row() -> None:
    data = list_to_csv(_list(_row())) + list_to_csv(_list(_row())).split(b"\n", 1)[1]
    with pytest.raises(AuthorizationListError) as info:
        _parse_csv(data)
    assert info.value.row == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("version", 0),
        ("version", True),
        ("version", 2**31),
        ("issued_at", datetime(2025, 4, 1)),
        ("expires_at", ISSUED),
    ],
)
def test_list_metadata_is_checked(name: str, value: object) -> None:
    changes: dict[str, Any] = {name: value}
    with pytest.raises(AuthorizationListError) as info:
        replace(_list(), **changes)
    assert info.value.field == name


def test_metadata_is_normalized_to_utc() -> None:
    jst = datetime(2025, 4, 1, 9, tzinfo=timezone(timedelta(hours=9)))
    lst = AuthorizationList(rows=(), version=1, issued_at=jst, expires_at=EXPIRES)
    assert lst.issued_at.tzinfo is UTC
    assert lst.issued_at == ISSUED


# -- malformed rows name row and field ---------------------------------------------------

BAD_FIELDS = [
    ("requester", ""),
    ("requester", "12100"),
    ("requester", "12100a"),
    ("requester", "１２１００２"),
    ("provider", "1210020"),
    ("provider", catalog.FUNABASHI_CITY),  # same as requester
    ("business_code", "JT00000000000132"),
    ("business_code", "JM0000000000013"),
    ("procedure_code", "jt00013200000001"),
    ("item_code", "TM0000000001020１"),
    ("legal_basis", "0"),
    ("legal_basis", "1000"),
    ("legal_basis", "+5"),
    ("legal_basis", "5.0"),
    ("legal_basis", ""),
    ("valid_from", ""),
    ("valid_from", "2024/04/01"),
    ("valid_from", "2024-02-30"),
    ("valid_from", "20240401"),
    ("valid_to", "2019-01-01"),
    ("valid_to", "someday"),
    ("note", "=HYPERLINK(1)"),
    ("note", "@SUM(1)"),
    ("note", "改行\nあり"),
    ("note", "x" * 201),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
def test_malformed_csv_row_names_row_and_field(name: str, value: str) -> None:
    good = list_to_csv(_list(_row(item_code=catalog.BENEFIT.code)))
    line = list_to_csv(_list(_row())).decode().splitlines()[1]
    texts = dict(zip(CSV_COLUMNS, next(csv.reader([line])), strict=True))
    texts[name] = value
    with pytest.raises(AuthorizationListError) as info:
        _parse_csv(good + _csv_line([texts[c] for c in CSV_COLUMNS]))
    assert type(info.value) is AuthorizationListError
    assert (info.value.row, info.value.field) == (2, name)
    assert f"row 2, field {name}" in str(info.value)


@pytest.mark.parametrize(("name", "value"), [bf for bf in BAD_FIELDS if "\n" not in bf[1]])
def test_malformed_xml_row_names_row_and_field(name: str, value: str) -> None:
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(_xml_with(name, value))
    assert (info.value.row, info.value.field) == (2, name)


@pytest.mark.parametrize("name", ["requester", "item_code", "legal_basis", "valid_from"])
def test_missing_xml_attribute_names_row_and_field(name: str) -> None:
    with pytest.raises(AuthorizationListError) as info:
        parse_list_xml(_xml_with(name, None))
    assert (info.value.row, info.value.field) == (2, name)


@pytest.mark.parametrize(
    ("data", "row"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"requester,provider\n", None, id="short-header"),
        pytest.param(b"\xff\xfe", None, id="not-utf8"),
        pytest.param(",".join(CSV_COLUMNS).encode() + b"\n121002,122041\n", 1, id="short-row"),
        pytest.param(",".join(CSV_COLUMNS).encode() + b"\n\n", 1, id="blank-row"),
        pytest.param(
            ",".join(CSV_COLUMNS).encode() + b'\n"121002"x,1,2,3,4,5,6,7,8\n', 1, id="bad-quote"
        ),
        pytest.param(",".join(CSV_COLUMNS).encode() + b"\n1\x00,2\n", 1, id="nul"),
    ],
)
def test_malformed_csv_files(data: bytes, row: int | None) -> None:
    with pytest.raises(AuthorizationListError) as info:
        _parse_csv(data)
    assert info.value.row == row


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    header = ",".join(CSV_COLUMNS).encode() + b"\n"
    parsers: tuple[Callable[[bytes], AuthorizationList], ...] = (
        _parse_csv,
        lambda d: _parse_csv(header + d),
        parse_list_xml,
    )
    for parse in parsers:
        with contextlib.suppress(AuthorizationListError):
            parse(data)


def test_row_constructor_checks_types() -> None:
    with pytest.raises(AuthorizationListError) as info:
        _row(legal_basis=True)
    assert info.value.field == "legal_basis"
    with pytest.raises(AuthorizationListError) as info:
        _row(valid_from=datetime(2024, 1, 1, tzinfo=UTC))
    assert info.value.field == "valid_from"
    with pytest.raises(AuthorizationListError) as info:
        _row(valid_to="2030-01-01")
    assert info.value.field == "valid_to"


# -- signed distribution --------------------------------------------------------------


def _list_text(signed: bytes) -> str:
    match = re.search(rb"<List>([^<]*)</List>", signed)
    assert match is not None
    return match.group(1).decode()


def test_signed_list_round_trip(sample: AuthorizationList) -> None:
    signed = sign_list(sample, HUB)
    assert verify_signed_list(signed, TRUSTED, now=ISSUED) == sample
    assert b'algorithm="Ed25519"' in signed
    assert HUB.key_id.encode() in signed


def test_signed_list_with_rotated_keys(sample: AuthorizationList) -> None:
    trusted = {HUB.key_id: HUB.public, OTHER.key_id: OTHER.public}
    assert verify_signed_list(sign_list(sample, OTHER), trusted, now=ISSUED) == sample


def test_signed_list_tampered_list_byte(sample: AuthorizationList) -> None:
    signed = sign_list(sample, HUB)
    text = _list_text(signed)
    document = bytearray(b64d(text))
    position = document.index(b"TM00000000010201") + 15
    document[position] = ord("2")
    forged = signed.replace(text.encode(), b64e(bytes(document)).encode())
    with pytest.raises(ListSignatureError):
        verify_signed_list(forged, TRUSTED, now=ISSUED)


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_signed_list_any_change_in_signed_text_is_refused(position: int, byte: int) -> None:
    signed = sign_list(_list(_row()), HUB)
    spans = [match.span(1) for match in re.finditer(rb"(?:Ed25519\"|<List)>([^<]+)</", signed)]
    indexes = [i for start, end in spans for i in range(start, end)]
    assert len(spans) == 2
    index = indexes[position % len(indexes)]
    if signed[index] == byte:
        byte ^= 1
    changed = signed[:index] + bytes([byte]) + signed[index + 1 :]
    with pytest.raises(AuthorizationListError):
        verify_signed_list(changed, TRUSTED, now=ISSUED)


def test_signed_list_wrong_key_with_hub_key_id(sample: AuthorizationList) -> None:
    impostor = SigningKeyPair(HUB.key_id, OTHER.private_key)
    with pytest.raises(ListSignatureError):
        verify_signed_list(sign_list(sample, impostor), TRUSTED, now=ISSUED)


def test_signed_list_unknown_key(sample: AuthorizationList) -> None:
    with pytest.raises(ListSignatureError, match="untrusted"):
        verify_signed_list(sign_list(sample, OTHER), TRUSTED, now=ISSUED)


def test_unsigned_list_is_refused(sample: AuthorizationList) -> None:
    with pytest.raises(ListSignatureError):
        verify_signed_list(list_to_xml(sample), TRUSTED, now=ISSUED)
    signed = sign_list(sample, HUB)
    without = re.sub(rb"<Signature [^>]*>[^<]*</Signature>", b"", signed)
    with pytest.raises(ListSignatureError, match="not signed"):
        verify_signed_list(without, TRUSTED, now=ISSUED)
    empty = re.sub(rb"(<Signature [^>]*>)[^<]*(</Signature>)", rb"\1\2", signed)
    with pytest.raises(ListSignatureError):
        verify_signed_list(empty, TRUSTED, now=ISSUED)


def test_signed_list_other_algorithm(sample: AuthorizationList) -> None:
    signed = sign_list(sample, HUB).replace(b'algorithm="Ed25519"', b'algorithm="none"')
    with pytest.raises(ListSignatureError):
        verify_signed_list(signed, TRUSTED, now=ISSUED)


def test_signed_list_expired(sample: AuthorizationList) -> None:
    signed = sign_list(sample, HUB)
    verify_signed_list(signed, TRUSTED, now=EXPIRES - timedelta(seconds=1))
    with pytest.raises(ListExpiredError) as info:
        verify_signed_list(signed, TRUSTED, now=EXPIRES)
    assert info.value.code == "authorization_list_expired"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"<x/>", id="other-root"),
        pytest.param(b"garbage", id="garbage"),
    ],
)
def test_signed_list_malformed(data: bytes) -> None:
    with pytest.raises(AuthorizationListError) as info:
        verify_signed_list(data, TRUSTED, now=ISSUED)
    assert type(info.value) is AuthorizationListError


def test_signed_list_extra_element_or_attribute(sample: AuthorizationList) -> None:
    signed = sign_list(sample, HUB)
    for changed in (
        signed.replace(b"</SignedAuthorizationList>", b"<List>AA</List></SignedAuthorizationList>"),
        signed.replace(b"<List>", b'<List extra="1">'),
        signed.replace(b"<List>", b"<List>!"),
        signed.replace(b"<Signature ", b'<Signature extra="1" '),
    ):
        with pytest.raises(AuthorizationListError) as info:
            verify_signed_list(changed, TRUSTED, now=ISSUED)
        assert type(info.value) is AuthorizationListError


def test_signed_list_naive_now_is_a_programming_error(sample: AuthorizationList) -> None:
    with pytest.raises(TypeError):
        verify_signed_list(sign_list(sample, HUB), TRUSTED, now=datetime(2025, 4, 1))


def test_error_codes_are_stable() -> None:
    assert AuthorizationListError.code == "authorization_list_invalid"
    assert ListSignatureError.code == "authorization_list_signature"
    assert ListExpiredError.code == "authorization_list_expired"
    assert NotAuthorizedError.code == "not_authorized"
    assert issubclass(AuthorizationListError, PermitsError)
