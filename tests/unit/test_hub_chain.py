"""The hub's record chain, pure: canonical form, witness lines, and what the witness names."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from chukan.simulators.hub.chain import (
    WitnessCheck,
    WitnessEntry,
    canonical_event,
    event_digest,
    event_hash,
    genesis_hash,
)

AT = dt.datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def event(seq: int, query_id: str, kind: str = "opened", **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": seq,
        "seq": seq,
        "query_id": query_id,
        "kind": kind,
        "permit_id": None,
        "requester": "122041",
        "provider": "121002",
        "business_code": "JM00000000000132",
        "procedure_code": "JT00013200000001",
        "item_code": "TM00000000000001",
        "legal_basis": 132,
        "requester_person_code": "符号-1",
        "provider_person_code": None,
        "requested_at": AT,
        "permit_expires_at": None,
        "answered_at": None,
        "outcome": "permitted" if kind == "opened" else "provided",
        "reason_code": None,
        "non_disclosure": False,
        "recorded_at": AT,
    }
    return row | changes


def test_the_canonical_form_names_every_field_with_its_length() -> None:
    text = canonical_event(event(7, "q-1")).decode()
    assert text.startswith("chukan-hub-record-v1;seq:1:7;query_id:3:q-1;kind:6:opened;")
    assert "permit_id:-;" in text and "requester_person_code:8:符号-1;" in text
    assert text.endswith("non_disclosure:5:false;recorded_at:27:2026-04-01T09:30:15.123456Z;")


def test_any_change_changes_the_hash() -> None:
    base = event(1, "q-1")
    for name, value in (("outcome", "refused"), ("seq", 2), ("non_disclosure", True)):
        assert event_hash(genesis_hash(), base) != event_hash(genesis_hash(), base | {name: value})


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        canonical_event(event(1, "q-1", requested_at=AT.replace(tzinfo=None)))


def entry_of(rows: list[dict[str, Any]], after_seq: int = 0) -> WitnessEntry:
    return WitnessEntry(
        seq=after_seq + len(rows),
        after_seq=after_seq,
        hash=b"\x01" * 32,
        signed_at=AT,
        key_id="hub-sig-1",
        signature=b"\x02" * 64,
        digests=tuple(event_digest(r) for r in rows),
        events=tuple((r["query_id"], r["kind"]) for r in rows),
    )


def test_witness_lines_round_trip_and_odd_lines_are_refused() -> None:
    entry = entry_of([event(1, "q-1"), event(2, "q-1", "concluded")])
    assert WitnessEntry.from_line(entry.to_line()) == entry
    for bad in ("{}", "not json", entry.to_line().replace('"seq":2', '"seq":3')):
        with pytest.raises(ValueError, match="witness line"):
            WitnessEntry.from_line(bad)


def rows() -> list[dict[str, Any]]:
    return [
        event(1, "q-1"),
        event(2, "q-1", "concluded"),
        event(3, "q-2"),
        event(4, "q-2", "concluded"),
    ]


def check(database: list[dict[str, Any]]) -> list[tuple[str, int | None, str]]:
    witness = WitnessCheck([entry_of(rows())])
    for row in database:
        witness.event(row)
    return [(i.kind, i.seq, i.detail.split(":")[0]) for i in witness.finish()]


def test_the_witness_agrees_with_the_chain_it_saw() -> None:
    assert check(rows()) == []


def test_an_altered_event_is_named() -> None:
    database = rows()
    database[1] = database[1] | {"outcome": "refused"}
    assert check(database) == [("altered", 2, "query q-1 concluded")]


def test_a_deleted_event_is_named_and_those_renumbered_after_it_are_not() -> None:
    database = [rows()[0], *(r | {"seq": r["seq"] - 1} for r in rows()[2:])]
    assert check(database) == [("deleted", 2, "query q-1 concluded")]


def test_an_inserted_event_is_named() -> None:
    database = [*rows()[:2], event(3, "q-9"), *(r | {"seq": r["seq"] + 1} for r in rows()[2:])]
    assert check(database) == [("inserted", 3, "query q-9 opened")]


def test_a_gap_in_the_witness_file_is_named() -> None:
    witness = WitnessCheck([entry_of(rows()[:2]), entry_of(rows()[3:], after_seq=3)])
    assert [(i.kind, i.seq) for i in witness.issues] == [("witness_gap", 4)]
