"""Comparing stored records with the witness's digests (pure): every altered, deleted and
inserted record of a segment named, renumbered or not; receipts checked and linked; the
alarm state's decisions (refuse exchanges, /ready)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from chukan.gateway.records.chain import VerifyReport, canonical_record
from chukan.gateway.records.witness_format import (
    WitnessRequest,
    receipt_for,
    record_digest,
)
from chukan.gateway.records.witnessed import SegmentRow, WitnessCheck, compare_segment, with_seq
from chukan.gateway.records.witnessing import RecordsHealth, check_receipt
from chukan.keys import generate_signing_key

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
TENANT = "122041"


def record(seq: int, atena: str | None = None) -> dict[str, Any]:
    return {
        "tenant": TENANT,
        "seq": seq,
        "role": "provider",
        "query_id": f"q{seq}",
        "permit_id": None,
        "requester": "122033",
        "provider": TENANT,
        "business_code": "JM00000000000132",
        "procedure_code": "JT00013200000001",
        "item_code": "TM00000000000001",
        "legal_basis": 132,
        "atena_id": atena or str(1000 + seq),
        "requested_at": T0,
        "provided_at": T0,
        "outcome": "provided",
        "reason_code": None,
        "non_disclosure": False,
        "recorded_at": T0 + dt.timedelta(seconds=seq),
    }


def rows_of(records: list[dict[str, Any]], first_id: int = 100) -> list[SegmentRow]:
    return [SegmentRow(r["seq"], first_id + i, canonical_record(r)) for i, r in enumerate(records)]


def witnessed(after: int, count: int) -> list[bytes]:
    return [record_digest(record(after + i + 1)) for i in range(count)]


def found(issues: Any) -> list[tuple[str, int | None, int | None]]:
    return [(i.kind, i.seq, i.id) for i in issues]


def test_a_segment_as_witnessed_has_no_finding() -> None:
    assert compare_segment(10, witnessed(10, 5), rows_of([record(s) for s in range(11, 16)])) == []


def test_an_altered_record_is_named_by_seq_and_id() -> None:
    stored = [record(s) for s in range(11, 16)]
    stored[2] = record(13, atena="4242")
    assert found(compare_segment(10, witnessed(10, 5), rows_of(stored))) == [
        ("witnessed_record_altered", 13, 102)
    ]


def test_deleted_and_inserted_records_are_named_even_when_the_rest_is_renumbered() -> None:
    # Record 13 deleted, a forged one inserted after 15; the rest renumbered to close gaps.
    originals = [record(s) for s in range(11, 17)]
    forged = record(0, atena="999")
    sequence = [*originals[:2], *originals[3:5], forged, originals[5]]
    stored = [dict(r, seq=11 + i) for i, r in enumerate(sequence)]
    assert found(compare_segment(10, witnessed(10, 6), rows_of(stored))) == [
        ("witnessed_record_deleted", 13, None),
        ("witnessed_record_inserted", 15, 104),
    ]


def test_a_row_that_cannot_be_read_is_altered_not_lost() -> None:
    rows = rows_of([record(s) for s in range(1, 4)])
    rows[1] = SegmentRow(2, rows[1].id, None)
    assert found(compare_segment(0, witnessed(0, 3), rows)) == [
        ("witnessed_record_altered", 2, rows[1].id)
    ]


def test_with_seq_rewrites_only_the_seq_field() -> None:
    canonical = canonical_record(record(7))
    assert with_seq(canonical, 7, 8) == canonical_record(record(7) | {"seq": 8})


def _receipt(after: int, count: int, hub: Any, signer: Any) -> Any:
    request = WitnessRequest(
        TENANT, after, after + count, b"\x01" * 32, T0, signer.key_id, b"\x02" * 64,
        tuple(witnessed(after, count)),
    )  # fmt: skip
    unsigned = receipt_for(request, witnessed_at=T0, witness_key_id=hub.key_id, signature=b"")
    return request, dataclasses.replace(unsigned, witness_signature=hub.sign(unsigned.message()))


def test_receipts_are_checked_linked_and_localised_and_heads_compared() -> None:
    hub, signer = generate_signing_key("hub"), generate_signing_key(TENANT)
    report = VerifyReport(TENANT)
    check = WitnessCheck(TENANT, report, {hub.key_id: hub.public})
    request, first = _receipt(0, 3, hub, signer)
    assert check_receipt(first, request, hub.public) is None
    assert check_receipt(first, dataclasses.replace(request, seq=4), hub.public)
    other = generate_signing_key("hub")
    assert "not the pinned" in (check_receipt(first, request, other.public) or "")
    _, gap = _receipt(4, 2, hub, signer)  # skips seq 4
    forged = dataclasses.replace(gap, seq=9, after_seq=6)
    for receipt in (first, gap, forged):
        check.add(receipt)
    stored = [record(s) for s in range(1, 7)]
    stored[1] = record(2, atena="1")
    for row in rows_of(stored):
        check.row(row.seq, row.id, row.canonical)
    check.close_through(None)
    check.check_heads(None, {3: b"\x09" * 32, 6: b"\x01" * 32}, {3: b"\x01" * 32})
    assert sorted(found(report.issues)) == sorted(
        [
            ("witness_receipts_gap", 6, None),
            ("witness_signature_invalid", 9, None),
            ("witnessed_record_altered", 2, 101),
            ("witnessed_checkpoint_mismatch", 3, None),
            ("witnessed_checkpoint_missing", 6, None),
        ]
    )
    mismatch = next(i for i in report.issues if i.kind == "witnessed_checkpoint_mismatch")
    assert "first differing record: seq 2" in mismatch.detail


def test_exchanges_go_on_within_the_grace_and_stop_on_an_alarm() -> None:
    grace = dt.timedelta(minutes=15)
    fine = RecordsHealth(T0, head_seq=10, witnessed_seq=8, oldest_unwitnessed_at=T0)
    assert fine.refusal(grace) is None and fine.check(grace)["ok"]
    failing = dataclasses.replace(fine, last_failure_at=T0, last_failure_code="witness_unreachable")
    assert failing.refusal(grace) is None
    assert failing.check(grace) | {"ok": False} == failing.check(grace)
    late = dataclasses.replace(failing, now=T0 + grace + dt.timedelta(seconds=1))
    assert "waited" in (late.refusal(grace) or "")
    assert late.check(grace)["exchanging"] is False
    refused = dataclasses.replace(fine, refused_code="witness_conflict", refused_seq=8)
    assert "refused" in (refused.refusal(grace) or "")
    broken = dataclasses.replace(fine, chain_broken_at=T0, chain_broken_seq=9)
    assert "broken" in (broken.refusal(grace) or "")
    witnessed_all = dataclasses.replace(late, witnessed_seq=10, last_success_at=late.now)
    assert witnessed_all.refusal(grace) is None and witnessed_all.check(grace)["ok"]


def test_after_a_disposal_receipts_up_to_the_base_are_only_linked() -> None:
    """Records up to the chain base were disposed of (retention): their receipts still link
    up and are signature-checked, but no segment reaching past the base is compared."""
    hub, signer = generate_signing_key("hub"), generate_signing_key(TENANT)
    report = VerifyReport(TENANT)
    check = WitnessCheck(TENANT, report, {hub.key_id: hub.public})
    check.base_seq = 4
    receipts = [_receipt(0, 3, hub, signer)[1], _receipt(3, 3, hub, signer)[1]]
    receipts.append(_receipt(6, 2, hub, signer)[1])
    for receipt in receipts:
        check.add(receipt)
    for row in rows_of([record(s) for s in range(5, 9)]):  # 1-4 are gone
        check.row(row.seq, row.id, row.canonical)
    check.close_through(None)
    assert report.issues == []
    assert [r.seq for r in check.heads] == [6, 8]
    check.check_heads(None, {6: b"\x01" * 32, 8: b"\x01" * 32}, {6: b"\x01" * 32, 8: b"\x01" * 32})
    assert report.issues == []
