"""Replica registration over HTTP: items per code, IF_DBM_20113_R01 messages applied whole
or not at all, idempotent re-sends, record ids, hostile input."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from typing import Any

import pytest
from replica_support import (
    count_items,
    history,
    new_message_id,
    new_record_id,
    post_message,
    registered,
    send_entries,
)

from chukan.codecs.items import ITEM_CODES, encode_item
from chukan.codecs.sample_items import SAMPLE_INSURER, sample_item
from chukan.simulators.devnet.replica_synthetic import SyntheticEntry, registration_bytes

pytestmark = pytest.mark.integration

TODAY = dt.date(2025, 4, 1)
CODES = sorted(ITEM_CODES)


def valid_item(code: str, rng: random.Random) -> bytes:
    return encode_item(sample_item(code, rng, TODAY))


def invalid_item(code: str, rng: random.Random) -> bytes:
    """Schema-invalid: the 保険者番号 is not 6 digits."""
    return valid_item(code, rng).replace(f">{SAMPLE_INSURER}<".encode(), b">12999X<")


def entry(atena_id: str, code: str, item: bytes | None, **kwargs: Any) -> SyntheticEntry:
    return SyntheticEntry(new_record_id(), atena_id, code, item, **kwargs)


@pytest.fixture
async def person(chiba: Any, rng: random.Random) -> str:
    return await registered(chiba, rng)


# -- single items (PUT) --------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
async def test_put_valid_and_invalid_item_of_every_code(
    chiba: Any, person: str, code: str, rng: random.Random
) -> None:
    good = valid_item(code, rng)
    status, body = await chiba.store(person, code, good)
    assert status == 201, body
    assert body["digest"] == hashlib.sha256(good).hexdigest()
    assert (body["version"], body["record_key"]) == (1, "1")
    status, body = await chiba.store(person, code, invalid_item(code, rng))
    assert (status, body["error"]["code"]) == (400, "schema_invalid")
    assert "12999X" not in body["error"]["message"]  # values are never echoed
    status, body = await chiba.store(
        person, code, valid_item(CODES[(CODES.index(code) + 1) % 6], rng)
    )
    assert (status, body["error"]["code"]) == (400, "xml_structure")  # another item's root
    assert await count_items(chiba, [person]) == 1


async def test_put_stores_the_canonical_form(chiba: Any, person: str, rng: random.Random) -> None:
    code = "TM00000000010202"
    canonical = valid_item(code, rng)
    spelled = canonical.replace(b"k:", b"care:").replace(b"xmlns:k=", b"xmlns:care=")
    spelled = spelled.replace(b"><", b">\n  <")
    assert spelled != canonical
    status, body = await chiba.store(person, code, spelled)
    assert status == 201, body
    assert body["digest"] == hashlib.sha256(canonical).hexdigest()


async def test_put_with_record_key_and_validity(
    chiba: Any, person: str, rng: random.Random
) -> None:
    code = "TM00000000010300"
    path = f"/internal/v1/persons/{person}/items/{code}"
    for query, expected in (
        ("?record_key=2024-03&valid_from=2024-04-01&valid_to=2025-03-31", 201),
        ("?record_key=bad%20key", 422),
        ("?valid_from=2024-13-01", 422),
        ("?valid_from=2025-01-01&valid_to=2024-01-01", 422),
    ):
        status, body = await chiba.call(
            "PUT",
            path + query,
            data=valid_item(code, rng),
            headers={"Content-Type": "application/xml"},
        )
        assert status == expected, (query, body)
    versions = (await history(chiba, person, code))["versions"]
    assert [(v["record_key"], v["valid_from"], v["valid_to"]) for v in versions] == [
        ("2024-03", "2024-04-01", "2025-03-31")
    ]


# -- messages ------------------------------------------------------------------------------


async def test_message_with_every_code_is_accepted(
    chiba: Any, person: str, rng: random.Random
) -> None:
    items = {code: valid_item(code, rng) for code in CODES}
    entries = [entry(person, code, items[code]) for code in CODES]
    status, body, headers = await send_entries(chiba, entries)
    assert status == 201, body
    assert body["outcome"] == "accepted" and body["msg_result"] == "0"
    assert (body["entries"], body["registered"], body["deleted"]) == (len(CODES), len(CODES), 0)
    assert body["reception_number"].startswith("R")
    assert "Chukan-Replayed" not in headers
    for code in CODES:
        versions = (await history(chiba, person, code))["versions"]
        assert len(versions) == 1
        assert versions[0]["digest"] == hashlib.sha256(items[code]).hexdigest()
        assert versions[0]["message_id"] == body["message_id"]


async def test_message_lists_every_invalid_item(
    chiba: Any, person: str, rng: random.Random
) -> None:
    entries = [entry(person, code, invalid_item(code, rng)) for code in CODES]
    entries.insert(2, entry(person, CODES[0], valid_item(CODES[0], rng)))
    status, body, _ = await send_entries(chiba, entries)
    assert status == 422, body
    assert body["error"]["code"] == "registration_rejected"
    assert body["outcome"] == "rejected" and body["msg_result"] == "1"
    rejected = body["rejected"]
    assert [r["position"] for r in rejected] == [1, 2, *range(4, len(CODES) + 2)]
    assert [r["record_id"] for r in rejected] == [
        e.record_id for i, e in enumerate(entries) if i != 2
    ]
    assert {r["code"] for r in rejected} == {"schema_invalid"}
    assert all(r["where"].endswith("/InsurerNumber") for r in rejected)
    assert await count_items(chiba, [person]) == 0


async def test_one_bad_entry_stores_nothing(chiba: Any, rng: random.Random) -> None:
    people = [await registered(chiba, rng) for _ in range(3)]
    code = "TM00000000010201"
    entries = [entry(p, code, valid_item(code, rng)) for p in people]
    entries.append(entry("999999999999999", code, valid_item(code, rng)))  # not registered
    message = registration_bytes(new_message_id(), entries)
    status, body, _ = await post_message(chiba, message)
    assert status == 422, body
    assert [(r["position"], r["record_id"], r["code"]) for r in body["rejected"]] == [
        (4, entries[3].record_id, "person_unknown")
    ]
    assert "999999999999999" not in str(body)
    assert await count_items(chiba, people) == 0
    # The first result stands for this MSGID: the same message gets the same answer.
    again_status, again, headers = await post_message(chiba, message)
    assert (again_status, again) == (status, body)
    assert headers.get("Chukan-Replayed") == "true"
    assert await count_items(chiba, people) == 0


async def test_resent_message_is_applied_once(chiba: Any, person: str, rng: random.Random) -> None:
    code = "TM00000000010202"
    message_id = new_message_id()
    message = registration_bytes(message_id, [entry(person, code, valid_item(code, rng))])
    first = await post_message(chiba, message)
    second = await post_message(chiba, message)
    assert first[0] == second[0] == 201
    assert first[1] == second[1]
    assert second[2].get("Chukan-Replayed") == "true"
    assert await count_items(chiba, [person]) == 1
    # Another body under a used MSGID is a conflict, not a replay.
    other = registration_bytes(message_id, [entry(person, code, valid_item(code, rng))])
    status, body, _ = await post_message(chiba, other)
    assert (status, body["error"]["code"]) == (409, "message_id_reused")
    assert await count_items(chiba, [person]) == 1
    status, stored = await chiba.call("GET", f"/internal/v1/replica/registrations/{message_id}")
    assert status == 200 and stored["result"] == first[1] and stored["http_status"] == 201
    status, _ = await chiba.call("GET", "/internal/v1/replica/registrations/nope")
    assert status == 404


async def test_record_identification_numbers(
    chiba: Any, funabashi: Any, person: str, rng: random.Random
) -> None:
    code = "TM00000000010500"
    item = valid_item(code, rng)
    duplicate = new_record_id()
    twice = [
        SyntheticEntry(duplicate, person, code, item),
        SyntheticEntry(duplicate, person, code, item, record_key="2"),
    ]
    status, body, _ = await send_entries(chiba, twice)
    assert status == 422
    assert [(r["position"], r["code"]) for r in body["rejected"]] == [(2, "record_id_duplicate")]

    first = SyntheticEntry(new_record_id(), person, code, item)
    assert (await send_entries(chiba, [first]))[0] == 201
    status, body, _ = await send_entries(
        chiba, [SyntheticEntry(first.record_id, person, code, item, record_key="2")]
    )
    assert status == 422
    assert [(r["record_id"], r["code"]) for r in body["rejected"]] == [
        (first.record_id, "record_id_reused")
    ]
    # Unique per tenant: another agency may use the same number.
    other = await registered(funabashi, rng)
    status, body, _ = await send_entries(
        funabashi, [SyntheticEntry(first.record_id, other, code, item)]
    )
    assert status == 201, body


async def test_deletion_ends_validity_and_keeps_history(
    chiba: Any, person: str, rng: random.Random
) -> None:
    code = "TM00000000010101"
    item = valid_item(code, rng)
    assert (await send_entries(chiba, [entry(person, code, item, valid_from=TODAY)]))[0] == 201
    deletion = entry(person, code, None, valid_from=dt.date(2025, 10, 1))
    unknown = entry(person, code, None, record_key="never")
    status, body, _ = await send_entries(chiba, [deletion, unknown])
    assert status == 422
    assert [(r["position"], r["code"]) for r in body["rejected"]] == [(2, "record_unknown")]
    status, body, _ = await send_entries(chiba, [deletion])
    assert status == 201 and (body["registered"], body["deleted"]) == (0, 1)
    found = await history(chiba, person, code, on="2025-09-30")
    assert [(v["version"], v["deleted"], v["digest"] is None) for v in found["versions"]] == [
        (1, False, False),
        (2, True, True),
    ]
    assert found["in_force"]["records"] == [{"record_key": "1", "version": 1}]
    assert (await history(chiba, person, code, on="2025-10-01"))["in_force"]["records"] == []
    # A registration and its deletion in one message, in order.
    key_entries = [
        entry(person, code, item, record_key="K2"),
        entry(person, code, None, record_key="K2", valid_from=dt.date(2024, 5, 1)),
    ]
    assert (await send_entries(chiba, key_entries))[0] == 201


async def test_test_mode_checks_but_stores_nothing(
    chiba: Any, person: str, rng: random.Random
) -> None:
    code = "TM00000000010102"
    message_id = new_message_id()
    entries = [entry(person, code, valid_item(code, rng))]
    status, body, _ = await send_entries(chiba, entries, message_id=message_id, mode="1")
    assert status == 200, body
    assert (body["outcome"], body["registered"], body["reception_number"]) == (
        "validated",
        1,
        None,
    )
    assert await count_items(chiba, [person]) == 0
    bad = [entry("999999999999998", code, valid_item(code, rng))]
    status, body, _ = await send_entries(chiba, bad, message_id=message_id, mode="1")
    assert status == 422 and body["rejected"][0]["code"] == "person_unknown"
    # Not remembered: the same MSGID in production mode is applied.
    status, body, _ = await send_entries(chiba, entries, message_id=message_id)
    assert status == 201, body


async def test_authorization_and_media_type(chiba: Any, person: str, rng: random.Random) -> None:
    message = registration_bytes(new_message_id(), [entry(person, CODES[0], None)])
    async with chiba.session.post(
        chiba.gateway.url + "/internal/v1/replica/registrations",
        data=message,
        headers={"Content-Type": "application/xml"},
    ) as response:
        assert response.status == 401
    status, body = await chiba.call(
        "POST",
        "/internal/v1/replica/registrations",
        data=message,
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


# -- hostile input -------------------------------------------------------------------------

NS = b"urn:chukan:dbm:IF_DBM_20113_R01:1"


def _hostile() -> dict[str, tuple[bytes, int, str]]:
    header = (
        b"<MessageHeader><MSGID>HOSTILE</MSGID><MSGTypeID>IF_DBM_20113_R01</MSGTypeID>"
        b"<MSGMode>0</MSGMode><SourceSystemID>K</SourceSystemID>"
        b"<DestinationSystemID>C</DestinationSystemID></MessageHeader>"
    )
    deep_record = (
        b"<Record><RecordIdentificationNumber>R1</RecordIdentificationNumber>"
        + b"<x>" * 10_000
        + b"</x>" * 10_000
        + b"</Record>"
    )
    return {
        "xxe": (
            b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<IF_DBM_20113_R01 xmlns="' + NS + b'">&x;</IF_DBM_20113_R01>',
            400,
            "xml_forbidden",
        ),
        "billion_laughs": (
            b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]>'
            b"<l>&c;</l>",
            400,
            "xml_forbidden",
        ),
        "fifty_megabytes": (
            b'<IF_DBM_20113_R01 xmlns="' + NS + b'">' + b" " * (50 * 1024 * 1024) + b"</x>",
            413,
            "payload_too_large",
        ),
        "deep_document": (b"<a>" * 10_000 + b"</a>" * 10_000, 413, "xml_too_large"),
        "deep_entry": (
            b'<IF_DBM_20113_R01 xmlns="'
            + NS
            + b'">'
            + header
            + b"<MessageBody>"
            + deep_record
            + b"</MessageBody></IF_DBM_20113_R01>",
            413,
            "xml_too_large",
        ),
        "wrong_namespace": (
            b'<IF_DBM_20113_R01 xmlns="urn:example:other">' + header + b"</IF_DBM_20113_R01>",
            400,
            "xml_structure",
        ),
        "wrong_encoding": (
            (
                '<?xml version="1.0" encoding="Shift_JIS"?>'
                "<IF_DBM_20113_R01>千葉</IF_DBM_20113_R01>"
            ).encode("shift_jis"),
            400,
            "xml_encoding",
        ),
        "utf16": ('<IF_DBM_20113_R01 xmlns="x"/>'.encode("utf-16"), 400, "xml_encoding"),
        "not_well_formed": (b'<IF_DBM_20113_R01 xmlns="' + NS + b'"><a></b>', 400, "xml_malformed"),
        "no_entries": (
            b'<IF_DBM_20113_R01 xmlns="'
            + NS
            + b'">'
            + header
            + b"<MessageBody/></IF_DBM_20113_R01>",
            400,
            "xml_structure",
        ),
    }


HOSTILE = _hostile()


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_message_is_refused_and_nothing_stored(chiba: Any, name: str) -> None:
    data, status, code = HOSTILE[name]
    pool = chiba.gateway.state.pool
    before = await pool.fetchval(
        "SELECT (SELECT count(*) FROM replica_items) + (SELECT count(*) FROM replica_messages)"
    )
    got, body, _ = await post_message(chiba, data)
    assert (got, body["error"]["code"]) == (status, code), body
    after = await pool.fetchval(
        "SELECT (SELECT count(*) FROM replica_items) + (SELECT count(*) FROM replica_messages)"
    )
    assert after == before


async def test_put_refuses_wrong_namespace_and_huge_items(
    chiba: Any, person: str, rng: random.Random
) -> None:
    from chukan.codecs.items import ITEM_NAMESPACE

    code = "TM00000000010201"
    other_namespace = valid_item(code, rng).replace(ITEM_NAMESPACE.encode(), b"urn:example:x")
    status, body = await chiba.store(person, code, other_namespace)
    assert (status, body["error"]["code"]) == (400, "xml_structure")
    huge = b"<a>" + b" " * (50 * 1024 * 1024) + b"</a>"
    status, body = await chiba.store(person, code, huge)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert await count_items(chiba, [person]) == 0
