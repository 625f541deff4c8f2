"""Versions with validity, selected by the query's reference date, end to end through the hub."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from replica_support import ask, history, moved_person, new_record_id, send_entries

from chukan.codecs import catalog
from chukan.codecs.items import decode_item, encode_item
from chukan.codecs.sample_items import care_certification, insured_number
from chukan.gateway.replica.items import provision_document
from chukan.simulators.devnet.replica_synthetic import SyntheticEntry

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code


async def certification_on(funabashi: Any, atena_id: str, on: str | None) -> dict[str, Any]:
    extra = {"reference_date": on} if on else {}
    return await ask(
        funabashi,
        atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        CODE,
        catalog.CHIBA_CITY,
        **extra,
    )


def version(
    atena_id: str, item: bytes | None, start: str, end: str | None = None, key: str = "1"
) -> SyntheticEntry:
    return SyntheticEntry(
        new_record_id(),
        atena_id,
        CODE,
        item,
        record_key=key,
        valid_from=dt.date.fromisoformat(start),
        valid_to=dt.date.fromisoformat(end) if end else None,
    )


async def test_reference_date_selects_the_version_in_force(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    insured = insured_number(rng)
    first = encode_item(care_certification(rng, dt.date(2024, 4, 1), insured))
    second = encode_item(care_certification(rng, dt.date(2025, 4, 1), insured))
    status, body, _ = await send_entries(
        chiba,
        [version(here, first, "2024-04-01", "2025-03-31"), version(here, second, "2025-04-01")],
    )
    assert status == 201, body

    expected = {
        "2024-06-01": first,
        "2025-03-31": first,  # PublishedEndDate is the last day of the version
        "2025-04-01": second,
        "2030-01-01": second,
        None: second,  # no reference date: today
    }
    for on, item in expected.items():
        result = await certification_on(funabashi, there, on)
        assert result["status"] == "answered", (on, result)
        assert result["result"].encode() == item, on
    before = await certification_on(funabashi, there, "2024-03-31")
    assert (before["status"], before["reason_code"]) == ("refused", "item_not_found")

    # A correction with the same PublicationDate replaces the first version for its period.
    corrected = encode_item(care_certification(rng, dt.date(2024, 5, 1), insured))
    assert (await send_entries(chiba, [version(here, corrected, "2024-04-01", "2025-03-31")]))[
        0
    ] == 201
    assert (await certification_on(funabashi, there, "2024-06-01"))["result"].encode() == corrected
    assert (await certification_on(funabashi, there, "2025-06-01"))["result"].encode() == second

    # A deletion ends validity from its date on; what was valid before still answers.
    assert (await send_entries(chiba, [version(here, None, "2026-01-01")]))[0] == 201
    gone = await certification_on(funabashi, there, "2026-02-01")
    assert (gone["status"], gone["reason_code"]) == ("refused", "item_not_found")
    assert (await certification_on(funabashi, there, "2025-06-01"))["result"].encode() == second
    versions = (await history(chiba, here, CODE))["versions"]
    assert [(v["version"], v["valid_from"], v["deleted"]) for v in versions] == [
        (1, "2024-04-01", False),
        (2, "2025-04-01", False),
        (3, "2024-04-01", False),
        (4, "2026-01-01", True),
    ]


async def test_several_record_keys_are_combined_into_one_document(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    insured = insured_number(rng)
    one = encode_item(care_certification(rng, dt.date(2023, 4, 1), insured))
    two = encode_item(care_certification(rng, dt.date(2024, 4, 1), insured))
    status, body, _ = await send_entries(
        chiba,
        [version(here, two, "2024-04-01", key="2"), version(here, one, "2023-04-01", key="1")],
    )
    assert status == 201, body
    result = await certification_on(funabashi, there, "2024-06-01")
    assert result["status"] == "answered", result
    combined = result["result"].encode()
    assert combined == provision_document(CODE, [one, two])
    item = decode_item(CODE, combined)
    assert len(item.certification_records) == 2  # type: ignore[union-attr]
    assert item.insured_number == insured
    # Only the records in force on the date are combined.
    earlier = await certification_on(funabashi, there, "2023-06-01")
    assert earlier["result"].encode() == one

    # Records that disagree on the header cannot be combined: refused, not guessed.
    other = encode_item(care_certification(rng, dt.date(2024, 4, 1), insured_number(rng)))
    assert (await send_entries(chiba, [version(here, other, "2024-04-01", key="3")]))[0] == 201
    refused = await certification_on(funabashi, there, "2024-06-01")
    assert (refused["status"], refused["reason_code"]) == ("refused", "replica_inconsistent")


async def test_put_maps_onto_record_key_one(chiba: Any, funabashi: Any, rng: random.Random) -> None:
    here, there = await moved_person(rng, chiba, funabashi)
    insured = insured_number(rng)
    by_message = encode_item(care_certification(rng, dt.date(2024, 4, 1), insured))
    by_put = encode_item(care_certification(rng, dt.date(2025, 4, 1), insured))
    assert (await send_entries(chiba, [version(here, by_message, "2024-04-01")]))[0] == 201
    status, body = await chiba.store(here, CODE, by_put)
    assert status == 201 and (body["record_key"], body["version"]) == ("1", 2)
    # The PUT's version is valid from today and replaces the message's for key 1.
    assert (await certification_on(funabashi, there, None))["result"].encode() == by_put
    assert (await certification_on(funabashi, there, "2024-06-01"))["result"].encode() == (
        by_message
    )
