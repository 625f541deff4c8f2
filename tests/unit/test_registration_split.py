"""The byte-range split of registration messages (chukan.codecs.registration_split).

The split must give exactly what the streaming parser gives: the same entries, rejections
and positions, and for a message the streaming parser refuses, the same refusal (after a
fall back). Ordinary messages must not fall back. Synthetic data only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_registration import (
    HEADER_XML,
    HOSTILE,
    REJECTED_CASES,
    _CountingSource,
    _document,
    _item_fragment,
    _record,
)

from chukan.codecs.errors import CodecError
from chukan.codecs.registration import (
    REGISTRATION_NAMESPACE,
    StreamLimits,
    iter_registration_encoded,
)
from chukan.codecs.registration_split import (
    ENTRY_MARGIN,
    RecordSlice,
    SliceRefusedError,
    SplitUnsureError,
    encode_record_slice,
    slice_schema,
    split_registration,
)
from chukan.gateway.replica.registration import RegistrationSource

Outcome = list[Any] | tuple[type[CodecError], str, str, str | None]


def reference(data: bytes, limits: StreamLimits) -> Outcome:
    """What the streaming parser gives: every item, or the refusal (class, code, text, where)."""
    try:
        return list(iter_registration_encoded(io.BytesIO(data), limits))
    except CodecError as exc:
        return (type(exc), exc.code, exc.message, exc.where)


def split(data: bytes, limits: StreamLimits, batch_size: int) -> tuple[Outcome, bool]:
    """The split's result, falling back as the import does; and whether it fell back."""
    try:
        items = list(split_registration(io.BytesIO(data), limits, batch_size=batch_size))
        results: list[Any] = [items[0]]
        for part in items[1:]:
            assert isinstance(part, RecordSlice)
            assert 1 <= part.count <= batch_size
            results += encode_record_slice(part.data, part.first_position, part.count, limits)
    except (SplitUnsureError, SliceRefusedError):
        return reference(data, limits), True
    return results, False


def same(data: bytes, limits: StreamLimits | None = None, batch_size: int = 3) -> bool:
    """Assert the split gives the reference's outcome; return whether it fell back."""
    limits = limits or StreamLimits()
    expected = reference(data, limits)
    got, fell_back = split(data, limits, batch_size)
    assert got == expected
    return fell_back


# ------------------------------------------------------------------ ordinary


def test_slice_schema_is_built() -> None:
    assert slice_schema() is not None


@pytest.mark.parametrize("batch_size", [1, 2, 5, 1000])
def test_ordinary_messages_are_split_without_falling_back(batch_size: int) -> None:
    records = [_record(f"R{i}", key=f"K{i}") for i in range(7)]
    records += [case[0] for case in REJECTED_CASES]
    assert not same(_document(records), batch_size=batch_size)


def test_prefixed_and_pretty_messages_are_split() -> None:
    prefixed = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<r:IF_DBM_20113_R01 xmlns:r="{REGISTRATION_NAMESPACE}">'
        + HEADER_XML.replace("<", "<r:").replace("<r:/", "</r:")
        + '<r:MessageBody xmlns:k="urn:chukan:kaigo:item:1" >\n'
        + "\n".join(_record(f"R{i}").replace("<", "<r:").replace("<r:/", "</r:") for i in range(4))
        + "\n</r:MessageBody >\n</r:IF_DBM_20113_R01>\n\n"
    ).encode()
    # The item fragments were prefixed too: fix them back to their own namespace.
    prefixed = prefixed.replace(b"<r:k:", b"<k:").replace(b"</r:k:", b"</k:")
    assert not same(prefixed)


def test_entries_of_one_message_may_use_other_prefixes() -> None:
    """Entries whose end tag is not spelled like the first one's are miscounted: the
    slice falls back, with the streaming parser's result."""
    other = _record("R2").replace("<", "<q:").replace("<q:/", "</q:")
    other = other.replace("<q:Record>", f'<q:Record xmlns:q="{REGISTRATION_NAMESPACE}">')
    other = other.replace("<q:k:", "<k:").replace("</q:k:", "</k:")
    assert same(_document([_record("R1"), other, _record("R3")]), batch_size=5)


# ------------------------------------------------------------------ tricks

TRICKS: list[tuple[str, bytes]] = [
    (
        "end tag in a comment",
        _document(
            [_record("R1").replace("<DataSetRecordKey>", "<!-- </Record> --><DataSetRecordKey>")]
        ),
    ),
    (
        "end tag in a comment between entries",
        _document([_record("R1"), "<!-- </Record> -->", _record("R2")]),
    ),
    (
        "end tag in CDATA",
        _document([_record("R1", key="<![CDATA[K</Record>1]]>"), _record("R2")]),
    ),
    (
        "end tag in a processing instruction",
        _document(
            [
                _record("R1").replace("<DataSetRecordKey>", "<?x </Record>?><DataSetRecordKey>"),
                _record("R2"),
            ]
        ),
    ),
    (
        "nested Record in the item",
        _document(
            [
                _record("R1").replace(
                    "</SpecificPersonalInformation>",
                    "</SpecificPersonalInformation>".replace("</", "<Record></Record></"),
                ),
                _record("R2"),
            ]
        ),
    ),
    (
        "nested Record in another namespace",
        _document(
            [
                _record(
                    "R1",
                    item=_item_fragment("TM00000000010202").replace(
                        "</k:BurdenRatio>", '<Record xmlns="urn:x"></Record></k:BurdenRatio>'
                    ),
                ),
                _record("R2"),
            ]
        ),
    ),
    (
        "end tag with spaces",
        _document([_record("R1").replace("</Record>", "</Record  >"), _record("R2")]),
    ),
    ("entity references", _document([_record("R&#49;", key="K&amp;1"), _record("R2")])),
    ("undefined entity", _document([_record("R1", key="&x;"), _record("R2")])),
    ("text between entries", _document([_record("R1"), "text", _record("R2")])),
    ("element between entries", _document([_record("R1"), "<Other/>", _record("R2")])),
    ("doctype in a comment", _document([_record("R1"), "<!-- <!DOCTYPE x> -->", _record("R2")])),
    (
        "XInclude in an entry",
        _document(
            [
                _record("R1").replace(
                    "<DataSetRecordKey>",
                    '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="/etc/passwd"/>'
                    "<DataSetRecordKey>",
                )
            ]
        ),
    ),
    (
        "comment in the head",
        _document([_record("R1")], header="<!-- <MessageBody> -->" + HEADER_XML),
    ),
    ("PI in the head", _document([_record("R1")], header="<?x <MessageBody>?>" + HEADER_XML)),
    (
        "PI in the header",
        _document([_record("R1")], header=HEADER_XML.replace("<MSGID>", "<?x?><MSGID>")),
    ),
    (
        "MessageBody in the header",
        _document([_record("R1")], header=HEADER_XML.replace("<MSGID>", "<MessageBody/><MSGID>")),
    ),
    ("no header", _document([_record("R1")], header="")),
    ("body with attributes", _document([_record("R1")], body_open='<MessageBody a="&gt;">')),
    (
        "body declares a namespace",
        _document([_record("R1")], body_open='<MessageBody xmlns:z="urn:z&amp;&quot;">'),
    ),
    (
        "empty body",
        _document([]).replace(b"<MessageBody>\n    \n  </MessageBody>", b"<MessageBody/>"),
    ),
    ("no entries", _document([])),
    ("after the root", _document([_record("R1")]) + b"<x/>"),
    ("comment after the root", _document([_record("R1")]) + b"<!-- x -->"),
    ("PI after the root", _document([_record("R1")]) + b"<?x?>"),
    ("truncated", _document([_record("R1"), _record("R2")])[:-40]),
    ("truncated in an entry", _document([_record("R1"), _record("R2")])[:700]),
    (
        "huge attribute",
        _document([_record("R1").replace("<Record>", f'<Record a="{"x" * 300_000}">')]),
    ),
    ("BOM", b"\xef\xbb\xbf" + _document([_record("R1")])),
    ("Shift_JIS", _document([_record("R1")]).replace(b"UTF-8", b"Shift_JIS")),
    (
        "invalid UTF-8",
        _document([_record("R1"), _record("R2", key="K\x00")]).replace(b"K\x00", b"\x82\xa0"),
    ),
]


@pytest.mark.parametrize(("name", "data"), TRICKS, ids=[t[0] for t in TRICKS])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tricks_give_the_streaming_result(name: str, data: bytes, batch_size: int) -> None:
    same(data, batch_size=batch_size)


@pytest.mark.parametrize(
    ("name", "make", "limits", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_messages_are_refused_as_before_within_bounds(
    name: str, make: Callable[[], bytes], limits: StreamLimits, expected: type[CodecError]
) -> None:
    """The same refusal as the streaming parser, and the split reads no more than one
    entry's room (plus a read) before it gives up."""
    data = make()
    outcome = reference(data, limits)
    assert isinstance(outcome, tuple) and issubclass(outcome[0], expected), (name, outcome)
    got, _ = split(data, limits, 3)
    assert got == outcome
    source = _CountingSource(data)

    def drain() -> None:
        for part in split_registration(source, limits, batch_size=3):
            if isinstance(part, RecordSlice):
                encode_record_slice(part.data, part.first_position, part.count, limits)

    with pytest.raises((SplitUnsureError, SliceRefusedError)):
        drain()
    assert source.handed <= min(
        len(data), min(limits.max_bytes, limits.max_entry_bytes) + 2 * 256 * 1024
    )


def test_entries_near_the_size_limit_fall_back() -> None:
    limits = StreamLimits(max_entry_bytes=ENTRY_MARGIN + 4096)
    big = _record("R2", key="K" * 60).replace("<Record>", "<Record>" + " " * 5000, 1)
    assert same(_document([_record("R1"), big, _record("R3")]), limits)
    assert not same(_document([_record("R1"), _record("R3")]), limits)


def test_messages_over_max_bytes_fall_back() -> None:
    data = _document([_record(f"R{i}") for i in range(40)])
    assert same(data, StreamLimits(max_bytes=len(data) - 1))
    assert not same(data, StreamLimits(max_bytes=len(data)))


# ------------------------------------------------------------------ property

_PIECES = [
    _record("R1"),
    _record("R2", segment="2", code="TM00000000010300"),
    _record("R3", end="2025-03-31"),
    *[case[0] for case in REJECTED_CASES],
    "<!-- </Record> -->",
    "<![CDATA[</Record>]]>",
    "<?pi </Record>?>",
    "</Record>",
    "<Record>",
    "<Record/>",
    "&amp;",
    " \n\t",
    "x",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(_PIECES), min_size=0, max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
    flip=st.one_of(
        st.none(),
        st.tuples(st.integers(min_value=0, max_value=20_000), st.binary(min_size=1, max_size=3)),
    ),
    batch_size=st.integers(min_value=1, max_value=4),
    small=st.booleans(),
)
def test_split_gives_what_the_streaming_parser_gives(
    pieces: list[str],
    cut: int | None,
    flip: tuple[int, bytes] | None,
    batch_size: int,
    small: bool,
) -> None:
    data = _document(pieces)
    if flip is not None:
        at = flip[0] % max(len(data), 1)
        data = data[:at] + flip[1] + data[at + len(flip[1]) :]
    if cut is not None:
        data = data[:cut]
    limits = StreamLimits(max_entry_bytes=ENTRY_MARGIN + 1500) if small else StreamLimits()
    same(data, limits, batch_size)


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30, unique=True),
    batch_size=st.integers(min_value=1, max_value=7),
)
def test_valid_messages_never_fall_back(ids: list[int], batch_size: int) -> None:
    records = [_record(f"R{i}", key=f"K{i}", end="2025-03-31" if i % 2 else None) for i in ids]
    assert not same(_document(records), batch_size=batch_size)


# ------------------------------------------------------------------ the import's source


async def _through_source(
    data: bytes, pool: concurrent.futures.Executor | None
) -> tuple[list[Any], int]:
    """Header and rows/rejections as the import stages them, and how many restarts."""
    restarts = 0
    async with RegistrationSource(io.BytesIO(data), pool=pool, batch_size=2, split=True) as source:
        staged: list[Any] = [await source.header()]
        async for batch in source.batches():
            if batch.restart:
                restarts += 1
                staged = staged[:1]
            staged += [*batch.rows, *batch.rejections]
    return staged, restarts


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize(
    ("name", "data", "restarts"),
    [
        ("ordinary", _document([_record(f"R{i}") for i in range(7)]), 0),
        ("comment with an end tag", TRICKS[0][1], 1),
        (
            "late surprise",
            _document([*(_record(f"R{i}") for i in range(7)), "<!-- </Record> -->", _record("R9")]),
            1,
        ),
    ],
)
async def test_the_import_source_falls_back_and_restarts(
    name: str, data: bytes, restarts: int, threads: int
) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads else None
    try:
        got, restarted = await _through_source(data, pool)
        async with RegistrationSource(io.BytesIO(data), pool=pool, batch_size=2) as source:
            expected: list[Any] = [await source.header()]
            async for batch in source.batches():
                expected += [*batch.rows, *batch.rejections]
    finally:
        if pool is not None:
            pool.shutdown()
    assert restarted == restarts
    assert sorted(map(repr, got)) == sorted(map(repr, expected))


async def test_the_import_source_raises_the_streaming_refusal() -> None:
    data = _document([_record("R1"), "<?pi x?>", _record("R2")])
    expected = reference(data, StreamLimits())
    assert isinstance(expected, tuple)
    with pytest.raises(expected[0]) as caught:
        await _through_source(data, None)
    assert (caught.value.code, caught.value.message) == expected[1:3]
    await asyncio.sleep(0)
