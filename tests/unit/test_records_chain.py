"""The canonical form of a provision record, its hash chain and checkpoint messages (pure)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest

from chukan.gateway.records.chain import (
    CONTENT_COLUMNS,
    canonical_record,
    canonical_timestamp,
    chain_hash,
    checkpoint_message,
    genesis_hash,
)

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
