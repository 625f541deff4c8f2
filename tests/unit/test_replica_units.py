"""Pure parts of the replica: combining record keys, samples, synthetic messages, progress."""

from __future__ import annotations

import datetime as dt
import io
import random

import pytest

from chukan.codecs import item_model as m
from chukan.codecs.items import ITEM_CODES, decode_item, encode_item
from chukan.codecs.registration import RegistrationEntry, decode_registration
from chukan.codecs.sample_items import care_certification, insured_number, sample_item
from chukan.gateway.replica.cli import Progress, default_workers
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.items import provision_document
from chukan.simulators.devnet.replica_synthetic import registration_bytes, synthetic_entries

CODE = "TM00000000010201"
TODAY = dt.date(2025, 4, 1)


def test_every_code_has_a_valid_sample() -> None:
    rng = random.Random(1)
    for code in ITEM_CODES:
        item = sample_item(code, rng, TODAY)
        assert decode_item(code, encode_item(item)) == item


def test_one_record_is_answered_as_stored() -> None:
    stored = b"<any/>"
    assert provision_document("TM00000000020001", [stored]) is stored


def test_records_are_combined_in_key_order() -> None:
    rng = random.Random(2)
    insured = insured_number(rng)
    first = care_certification(rng, dt.date(2023, 4, 1), insured)
    second = care_certification(rng, dt.date(2024, 4, 1), insured)
    combined = decode_item(
        CODE, provision_document(CODE, [encode_item(first), encode_item(second)])
    )
    assert isinstance(combined, m.CareCertification)
    assert combined.certification_records == (
        *first.certification_records,
        *second.certification_records,
    )
    assert (combined.insured_number, combined.insurer_number) == (insured, first.insurer_number)


def test_records_that_disagree_are_not_combined() -> None:
    rng = random.Random(3)
    one = encode_item(care_certification(rng, TODAY))
    other = encode_item(care_certification(rng, TODAY))
    with pytest.raises(ReplicaInconsistentError, match="insured_number"):
        provision_document(CODE, [one, other])
    with pytest.raises(ReplicaInconsistentError):
        provision_document("TM00000000020001", [b"<a/>", b"<b/>"])
    with pytest.raises(ValueError, match="no records"):
        provision_document(CODE, [])


def test_synthetic_messages_decode_as_generated() -> None:
    people = ["100000000000001", "100000000000002", "100000000000003"]
    entries = list(synthetic_entries(people, 40, rng=random.Random(4), today=TODAY))
    message = decode_registration(registration_bytes("MSG-1", entries))
    assert message.rejected == ()
    assert [e.record_id for e in message.entries] == [e.record_id for e in entries]
    assert all(isinstance(e, RegistrationEntry) for e in message.entries)
    # Every (person, code) pair once per round; a new record key after each round.
    keys = {(e.atena_id, e.item_code, e.record_key) for e in entries}
    assert len(keys) == 40
    per_round = len(people) * len(ITEM_CODES)
    rounds = -(-40 // per_round)
    assert rounds > 1
    assert {e.data_set_record_key for e in message.entries} == {
        str(n) for n in range(1, rounds + 1)
    }


def test_default_workers() -> None:
    assert [default_workers(n) for n in (1, 2, 3, 8)] == [0, 0, 2, 7]


def test_progress_lines() -> None:
    out = io.StringIO()
    bar = Progress(2_000_000, out)
    bar.update(1_000_000, 500, force=True)
    bar.finish(1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # not a terminal: one line per report
    assert "[############------------]  50%" in lines[0] and "500 entries" in lines[0]
    assert "100%" in lines[1] and "1,000 entries" in lines[1]
    silent = io.StringIO()
    Progress(10, silent, enabled=False).finish(1)
    assert silent.getvalue() == ""
