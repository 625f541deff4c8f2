"""The canonical form of a provision record, its hash chain and checkpoint messages (pure)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import random
from typing import Any

import pytest

from chukan.gateway.records.chain import (
    CONTENT_COLUMNS,
    ChainRow,
    ChainWalk,
    VerifyReport,
    canonical_record,
    canonical_timestamp,
    chain_hash,
    chain_row,
    checkpoint_message,
    genesis_hash,
)
from chukan.gateway.records.verify import CopyReader, copy_canonical, decode_copy_row

JST = dt.timezone(dt.timedelta(hours=9))


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant": "121002",
        "seq": 7,
        "role": "provider",
        "query_id": "q-1",
        "permit_id": None,
        "requester": "122041",
        "provider": "121002",
        "business_code": "JM00000000000132",
        "procedure_code": "JT00013200000001",
        "item_code": "TM00000000000001",
        "legal_basis": 132,
        "atena_id": "100000000000001",
        "requested_at": dt.datetime(2026, 4, 1, 9, 0, 0, 123456, tzinfo=JST),
        "provided_at": None,
        "outcome": "refused",
        "reason_code": "item_not_found",
        "non_disclosure": False,
        "recorded_at": dt.datetime(2026, 4, 1, 0, 0, 1, tzinfo=dt.UTC),
    }
    base.update(changes)
    return base


def test_canonical_form_is_pinned() -> None:
    """The same bytes as chukan_record_canonical() in migration 0003: change both or neither."""
    assert canonical_record(record()) == (
        b"chukan-record-v1;tenant:6:121002;seq:1:7;role:8:provider;query_id:3:q-1;"
        b"permit_id:-;requester:6:122041;provider:6:121002;business_code:16:JM00000000000132;"
        b"procedure_code:16:JT00013200000001;item_code:16:TM00000000000001;legal_basis:3:132;"
        b"atena_id:15:100000000000001;requested_at:27:2026-04-01T00:00:00.123456Z;"
        b"provided_at:-;outcome:7:refused;reason_code:14:item_not_found;"
        b"non_disclosure:5:false;recorded_at:27:2026-04-01T00:00:01.000000Z;"
    )


def test_null_and_empty_differ_and_lengths_are_bytes() -> None:
    assert canonical_record(record(permit_id=None)) != canonical_record(record(permit_id=""))
    assert "reason_code:2:取得;".encode() not in canonical_record(record(reason_code="取得"))
    assert "reason_code:6:取得;".encode() in canonical_record(record(reason_code="取得"))


def test_no_field_can_absorb_its_neighbour() -> None:
    """Length prefixes: moving text across a field boundary changes the bytes."""
    a = canonical_record(record(query_id="q;permit_id:-", permit_id=None))
    b = canonical_record(record(query_id="q", permit_id=";permit_id:-"))
    assert a != b


@pytest.mark.parametrize("name", [*CONTENT_COLUMNS, "tenant", "seq", "recorded_at"])
def test_every_field_is_covered(name: str) -> None:
    original = record()
    value = original[name]
    if isinstance(value, bool):
        changed: Any = not value
    elif isinstance(value, int):
        changed = value + 1
    elif isinstance(value, dt.datetime):
        changed = value + dt.timedelta(microseconds=1)
    elif value is None:
        changed = dt.datetime(2026, 4, 1, tzinfo=dt.UTC) if name == "provided_at" else "x"
    else:
        changed = value + "x"
    prev = genesis_hash("121002")
    assert chain_hash(prev, original) != chain_hash(prev, record(**{name: changed}))


def test_timestamps_are_utc_with_microseconds_and_must_be_aware() -> None:
    assert canonical_timestamp(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=JST)) == (
        "2026-01-01T18:04:05.000000Z"
    )
    with pytest.raises(ValueError, match="timezone"):
        canonical_timestamp(dt.datetime(2026, 1, 2))


def test_chain_links_on_the_previous_hash() -> None:
    first = genesis_hash("121002")
    assert first == hashlib.sha256(b"chukan-record-v1|genesis|121002").digest()
    assert genesis_hash("122041") != first
    h1 = chain_hash(first, record(seq=1))
    assert h1 == hashlib.sha256(first + canonical_record(record(seq=1))).digest()
    assert chain_hash(h1, record(seq=2)) != chain_hash(first, record(seq=2))


def test_checkpoint_message_binds_tenant_seq_hash_and_time() -> None:
    at = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    message = checkpoint_message("121002", 10, b"\x01" * 32, at)
    assert message == (
        b"chukan-checkpoint-v1|121002|10|" + b"01" * 32 + b"|2026-04-01T00:00:00.000000Z"
    )
    assert message != checkpoint_message("122041", 10, b"\x01" * 32, at)
    assert message != checkpoint_message("121002", 11, b"\x01" * 32, at)


# -- the streaming walk and the COPY reader -------------------------------------------------


def copy_text(value: Any) -> str:
    """A value as PostgreSQL's COPY text format prints it (TimeZone UTC, DateStyle ISO)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dt.datetime):
        v = value.astimezone(dt.UTC)
        text = f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        return text + "+00"
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = text.replace(raw, escaped)
    return text


COPY_ORDER = ("id", "tenant", "seq", *CONTENT_COLUMNS, "recorded_at", "prev_hash", "hash")


def copy_line(row: dict[str, Any]) -> str:
    return "\t".join(copy_text(row[name]) for name in COPY_ORDER)


def stored(prev: bytes, row_id: int, **changes: Any) -> dict[str, Any]:
    """A record as the trigger stores it: linked on ``prev`` and hashed."""
    row = record(**changes) | {"id": row_id, "prev_hash": prev}
    row["hash"] = chain_hash(prev, row)
    return row


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"permit_id": "p-1", "provided_at": dt.datetime(2026, 4, 1, 9, 0, tzinfo=JST)},
        {"provided_at": dt.datetime(2026, 4, 1, 9, 0, 0, 100000, tzinfo=dt.UTC)},
        {"legal_basis": None, "atena_id": None, "reason_code": None, "non_disclosure": True},
        {"requested_at": dt.datetime(2026, 4, 1, 0, 0, 0, 1, tzinfo=dt.UTC)},
        {"query_id": ""},
        {"seq": 12345678901},
    ],
)
def test_copy_rows_of_the_common_shape_give_the_canonical_form(changes: dict[str, Any]) -> None:
    row = stored(genesis_hash("121002"), 5, **changes)
    line = copy_line(row)
    fields = line.split("\t")
    assert copy_canonical(line, fields) == canonical_record(row)
    decoded = decode_copy_row(fields)
    assert decoded == ChainRow(row["seq"], 5, row["prev_hash"], row["hash"], canonical_record(row))
    assert decoded.valid


@pytest.mark.parametrize(
    "changes",
    [
        {"reason_code": "取得不可"},  # not ASCII: lengths in bytes differ
        {"query_id": "q\\1"},  # an escaped backslash
        {"query_id": "a\tb\nc"},  # escaped tab and newline
        {"query_id": "\\N"},  # the NULL marker's text, escaped
        {"requested_at": dt.datetime(999, 1, 1, tzinfo=dt.UTC)},  # year below 1000
    ],
)
def test_other_copy_rows_are_decoded_into_values(changes: dict[str, Any]) -> None:
    row = stored(genesis_hash("121002"), 5, **changes)
    line = copy_line(row)
    fields = line.split("\t")
    assert copy_canonical(line, fields) is None
    assert decode_copy_row(fields).canonical == canonical_record(row)


def test_a_null_where_no_null_belongs_is_not_read_as_text() -> None:
    """A NOT NULL column set to NULL (schema tampered) must not pass for the text '\\N'."""
    row = stored(genesis_hash("121002"), 5, query_id="\\N")
    fields = copy_line(row).split("\t")
    fields[COPY_ORDER.index("query_id")] = "\\N"  # NULL instead of the escaped text
    line = "\t".join(fields)
    assert copy_canonical(line, fields) is None
    assert not decode_copy_row(fields).valid


@pytest.mark.parametrize(
    "text", ["2026-04-01 00:00:00+00 BC", "infinity", "12026-04-01 00:00:00+00"]
)
def test_timestamps_a_record_cannot_hold_never_verify(text: str) -> None:
    row = stored(genesis_hash("121002"), 5)
    fields = copy_line(row).split("\t")
    fields[COPY_ORDER.index("requested_at")] = text
    line = "\t".join(fields)
    canonical = copy_canonical(line, fields)
    assert canonical is None or canonical != canonical_record(row)
    assert not decode_copy_row(fields).valid


def chain(tenant: str, count: int) -> list[dict[str, Any]]:
    prev, rows = genesis_hash(tenant), []
    for seq in range(1, count + 1):
        row = stored(prev, 100 + seq, seq=seq, tenant=tenant, query_id=f"q-{seq}")
        rows.append(row)
        prev = row["hash"]
    return rows


def walk_over(rows: list[dict[str, Any]], head: dict[str, Any] | None) -> ChainWalk:
    report = VerifyReport("121002")
    walk = ChainWalk("121002", report, head["seq"] if head else None, genesis_hash("121002"))
    by_seq: dict[int, list[ChainRow]] = {}
    for row in sorted(rows, key=lambda r: (r["seq"], r["id"])):
        by_seq.setdefault(row["seq"], []).append(chain_row(row))
    for seq, group in by_seq.items():
        walk.group(seq, group)
    walk.close(head)
    return walk


def test_the_walk_names_altered_deleted_and_inserted_records() -> None:
    rows = chain("121002", 10)
    head = {"seq": 10, "hash": rows[-1]["hash"]}
    assert walk_over(rows, head).report.ok
    rows[2] = rows[2] | {"outcome": "provided"}  # altered
    del rows[4]  # seq 5 deleted
    rows.append(rows[5] | {"id": 999, "atena_id": "999"})  # a copy of seq 7, altered
    rows.append(stored(b"\0" * 32, 1000, seq=11))  # beyond the head
    report = walk_over(rows, head).report
    assert sorted((i.kind, i.seq, i.id) for i in report.issues) == [
        ("altered", 3, 103),
        ("deleted", 5, None),
        ("inserted", 7, 999),
        ("inserted", 11, 1000),
    ]
    assert report.records == 11


def test_the_walk_keeps_only_the_hashes_of_watched_checkpoints() -> None:
    rows = chain("121002", 3000)
    report = VerifyReport("121002")
    walk = ChainWalk("121002", report, 3000, genesis_hash("121002"))
    walk.watch([1000, 2000])
    for row in rows:
        walk.group(row["seq"], [chain_row(row)])
    assert walk.watching == {1000: rows[999]["hash"], 2000: rows[1999]["hash"]}
    assert walk.prev_hash == rows[-1]["hash"] and report.records == 3000
    assert not hasattr(walk, "hashes")


def test_the_copy_reader_walks_rows_cut_anywhere_into_chunks() -> None:
    """COPY text cut at arbitrary bytes (inside a line, inside a UTF-8 character) reads
    the same: every row once, a seq at a time, duplicates grouped."""
    rows = chain("121002", 40)
    rows[7] = stored(rows[6]["hash"], 108, seq=8, query_id="q-8", reason_code="該当なし")
    rows[8] = stored(rows[7]["hash"], 109, seq=9, query_id="q-9")
    for later in range(9, 40):
        rows[later] = stored(rows[later - 1]["hash"], 100 + later + 1, seq=later + 1)
    copied = rows[20] | {"id": 999, "atena_id": "1"}
    text = "".join(copy_line(r) + "\n" for r in [*rows[:21], copied, *rows[21:]]).encode()
    rng = random.Random(5)
    for _ in range(20):
        report = VerifyReport("121002")
        walk = ChainWalk("121002", report, 40, genesis_hash("121002"))
        reader = CopyReader(walk, lambda: None)
        cuts = sorted(rng.sample(range(1, len(text)), 30))

        async def feed(walk_reader: CopyReader = reader, at: list[int] = cuts) -> None:
            for start, end in itertools.pairwise([0, *at, len(text)]):
                await walk_reader(text[start:end])

        asyncio.run(feed())
        reader.finish()
        walk.close({"seq": 40, "hash": rows[-1]["hash"]})
        assert [(i.kind, i.seq, i.id) for i in report.issues] == [("inserted", 21, 999)]
        assert report.records == 41
