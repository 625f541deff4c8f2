"""The witness request and receipt formats: round trips, signatures, hostile shapes."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chukan.gateway.records.errors import WitnessFormatError
from chukan.gateway.records.witness_format import (
    Receipt,
    WitnessRequest,
    receipt_for,
    record_digest,
    records_digest,
)
from chukan.keys import generate_signing_key

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def _request(count: int = 3, after: int = 10) -> WitnessRequest:
    digests = tuple(hashlib.sha256(str(i).encode()).digest() for i in range(count))
    return WitnessRequest(
        "122041", after, after + count, b"\x01" * 32, T0, "122041.sig.k", b"\x02" * 64, digests
    )


def test_request_and_receipt_round_trip_and_verify() -> None:
    request = _request()
    assert WitnessRequest.from_json(request.to_json()) == request
    witness = generate_signing_key("hub")
    at = T0 + dt.timedelta(seconds=2)
    unsigned = receipt_for(request, witnessed_at=at, witness_key_id=witness.key_id, signature=b"")
    receipt = receipt_for(
        request,
        witnessed_at=at,
        witness_key_id=witness.key_id,
        signature=witness.sign(unsigned.message()),
    )
    again = Receipt.from_json(receipt.to_json())
    assert again == receipt and again.records_match()
    witness.public.verify(again.message(), again.witness_signature)
    bare = Receipt.from_json(receipt.to_json(with_records=False))
    assert bare.records == () and bare.message() == receipt.message()


def test_the_countersignature_covers_every_field() -> None:
    request = _request()
    base = receipt_for(request, witnessed_at=T0, witness_key_id="hub.sig.x", signature=b"")
    messages = {base.message()}
    for change in (
        {"after_seq": 9},
        {"seq": 14},
        {"hash": b"\x03" * 32},
        {"key_id": "other"},
        {"signature": b"\x04" * 64},
        {"segment_digest": b"\x05" * 32},
        {"signed_at": T0 + dt.timedelta(microseconds=1)},
        {"witnessed_at": T0 + dt.timedelta(microseconds=1)},
        {"tenant": "121002"},
    ):
        changed = Receipt(**{**{f: getattr(base, f) for f in Receipt.__slots__}, **change})
        messages.add(changed.message())
    assert len(messages) == 10


def test_record_digest_is_not_chained() -> None:
    row: dict[str, Any] = {
        "tenant": "122041",
        "seq": 1,
        "role": "requester",
        "query_id": "q",
        "permit_id": None,
        "requester": "122041",
        "provider": "121002",
        "business_code": "JM01",
        "procedure_code": "JT01",
        "item_code": "TM01",
        "legal_basis": 131,
        "atena_id": "a",
        "requested_at": T0,
        "provided_at": None,
        "outcome": "refused",
        "reason_code": None,
        "non_disclosure": False,
        "recorded_at": T0,
    }
    first = record_digest(row)
    assert first == record_digest({**row, "prev_hash": b"x", "hash": b"y"})
    assert first != record_digest({**row, "outcome": "provided"})
    assert records_digest([first]) != records_digest([first, first])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": 10}, "beyond"),
        ({"records": ["00" * 32]}, "one digest per record"),
        ({"hash": "zz"}, "not hex"),
        ({"hash": "00"}, "32 bytes"),
        ({"signed_at": "2026-12-01T09:00:00"}, "time zone"),
        ({"after_seq": -1}, "non-negative"),
        ({"after_seq": True}, "non-negative"),
        ({"tenant": ""}, "non-empty"),
        ({"seq": 10 + 100_001, "records": []}, "at most"),
    ],
)
def test_hostile_requests_are_refused_by_name(change: dict[str, Any], message: str) -> None:
    document = {**_request().to_json(), **change}
    with pytest.raises(WitnessFormatError, match=message):
        WitnessRequest.from_json(document)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        ),
        max_leaves=20,
    )
)
def test_any_json_is_parsed_or_refused_by_name(document: Any) -> None:
    for parse in (WitnessRequest.from_json, Receipt.from_json):
        with contextlib.suppress(WitnessFormatError):
            parse(document)
