"""No XML is stored or delivered that no schema checked, and no hostile markup passes.

Over real HTTP against real servers: XInclude elements, processing instructions and
DTDs are refused with 400 ``xml_forbidden`` in single-item PUTs, registration
messages, the bulk import and network envelopes, and nothing is stored; items of a
code without a schema are refused with 422 ``item_code_unsupported``; the 地方税 item
of the demo has its XSD and is stored once it validates. Each parse answers with its
own error: an empty registration message is told it is empty, whatever another city
sent before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from replica_support import (
    count_items,
    history,
    new_message_id,
    new_record_id,
    post_message,
    registered,
)

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import local_tax_item, sample_item
from chukan.codecs.xmlsafe import XINCLUDE_NAMESPACE
from chukan.gateway.replica.cli import run_import
from chukan.simulators.devnet.replica_synthetic import (
    SyntheticEntry,
    registration_bytes,
    write_registration,
)

pytestmark = pytest.mark.integration

TODAY = dt.date(2025, 4, 1)
CERTIFICATION = catalog.CERTIFICATION.code
LOCAL_TAX = catalog.LOCAL_TAX_INCOME.code
PI = b'<?xml-stylesheet href="http://127.0.0.1:9/steal.xsl"?>'
XINCLUDE = (
    f'<xi:include xmlns:xi="{XINCLUDE_NAMESPACE}" href="file:///etc/passwd" parse="text"/>'
).encode()


@pytest.fixture
async def person(chiba: Any, rng: random.Random) -> str:
    return await registered(chiba, rng, "6")


def certification(rng: random.Random) -> bytes:
    return encode_item(sample_item(CERTIFICATION, rng, TODAY))


def hostile_items(rng: random.Random) -> dict[str, tuple[str, bytes]]:
    care = certification(rng)
    tax = local_tax_item(rng, TODAY)
    declaration, care_body = care.split(b"?>\n", 1)
    return {
        "xinclude in a care item": (
            CERTIFICATION,
            care.replace(b"<k:InsuredNumber", XINCLUDE + b"<k:InsuredNumber", 1),
        ),
        "xinclude in the local tax item": (
            LOCAL_TAX,
            tax.replace(b"<TaxYear>", XINCLUDE + b"<TaxYear>", 1),
        ),
        "PI before a care item": (CERTIFICATION, declaration + b"?>\n" + PI + care_body),
        "PI inside the local tax item": (
            LOCAL_TAX,
            tax.replace(b"<TaxYear>", PI + b"<TaxYear>", 1),
        ),
        "PI after the local tax item": (LOCAL_TAX, tax + PI),
        "DOCTYPE": (LOCAL_TAX, b"<!DOCTYPE LocalTaxIncome>" + tax.split(b"?>\n", 1)[1]),
    }


@pytest.mark.parametrize("name", sorted(hostile_items(random.Random(0))))
async def test_put_of_hostile_markup_is_refused_and_nothing_stored(
    chiba: Any, person: str, rng: random.Random, name: str
) -> None:
    code, data = hostile_items(rng)[name]
    status, body = await chiba.store(person, code, data)
    assert (status, body["error"]["code"]) == (400, "xml_forbidden"), (name, body)
    assert await count_items(chiba, [person]) == 0


@pytest.mark.parametrize("code", ["TM99999999999999", "TM00000000020002", "TM00000000030001"])
async def test_items_of_codes_without_a_schema_are_refused(
    chiba: Any, person: str, code: str
) -> None:
    harmless = b'<?xml version="1.0" encoding="UTF-8"?><Anything><Value>1</Value></Anything>'
    status, body = await chiba.store(person, code, harmless)
    assert (status, body["error"]["code"]) == (422, "item_code_unsupported"), body
    assert "schema" in body["error"]["message"]
    assert await count_items(chiba, [person]) == 0
    # Refused before the person is even looked up: the same for an unknown 宛名番号.
    status, body = await chiba.store("999999999999999", code, harmless)
    assert (status, body["error"]["code"]) == (422, "item_code_unsupported"), body


async def test_local_tax_item_is_validated_against_its_schema(
    chiba: Any, person: str, rng: random.Random
) -> None:
    item = local_tax_item(rng, TODAY)
    for invalid in (
        item.replace(b"</LocalTaxIncome>", b"<Note>anything</Note></LocalTaxIncome>"),
        item.replace(b"<TaxableStatus>1<", b"<TaxableStatus>7<").replace(
            b"<TaxableStatus>2<", b"<TaxableStatus>7<"
        ),
    ):
        status, body = await chiba.store(person, LOCAL_TAX, invalid)
        assert (status, body["error"]["code"]) == (400, "schema_invalid"), body
    status, body = await chiba.store(person, LOCAL_TAX, b"<LocalTaxIncome Version='1'/>")
    assert (status, body["error"]["code"]) == (400, "xml_structure"), body  # no namespace
    assert await count_items(chiba, [person]) == 0
    status, body = await chiba.store(person, LOCAL_TAX, item)
    assert status == 201, body
    stored = await chiba.gateway.state.pool.fetchval(
        "SELECT content FROM replica_items WHERE atena_id = $1 AND item_code = $2",
        person,
        LOCAL_TAX,
    )
    assert stored == item
    assert [v["version"] for v in (await history(chiba, person, LOCAL_TAX))["versions"]] == [1]


# -- registration messages -----------------------------------------------------------------


def message_with(atena_id: str, rng: random.Random) -> tuple[str, bytes]:
    message_id = new_message_id("XML")
    entries = [
        SyntheticEntry(new_record_id(), atena_id, CERTIFICATION, certification(rng)),
        SyntheticEntry(new_record_id(), atena_id, CERTIFICATION, certification(rng), "2"),
    ]
    return message_id, registration_bytes(message_id, entries)


def hostile_messages(data: bytes) -> dict[str, bytes]:
    return {
        "PI in the header": data.replace(b"<MSGID>", PI + b"<MSGID>", 1),
        "PI in an item": data.replace(b"<k:InsuredNumber", PI + b"<k:InsuredNumber", 1),
        "PI after the message": data + PI,
        "xinclude in an item": data.replace(b"<k:InsuredNumber", XINCLUDE + b"<k:InsuredNumber", 1),
        "xinclude in the body": data.replace(b"<MessageBody>", b"<MessageBody>" + XINCLUDE, 1),
    }


async def messages_stored(api: Any, message_id: str) -> int:
    count: int = await api.gateway.state.pool.fetchval(
        "SELECT count(*) FROM replica_messages WHERE message_id = $1", message_id
    )
    return count


async def test_registration_messages_with_hostile_markup_are_refused(
    chiba: Any, person: str, rng: random.Random
) -> None:
    message_id, data = message_with(person, rng)
    for name, hostile in hostile_messages(data).items():
        assert hostile != data
        status, body, _ = await post_message(chiba, hostile)
        assert (status, body["error"]["code"]) == (400, "xml_forbidden"), (name, body)
    assert await count_items(chiba, [person]) == 0
    assert await messages_stored(chiba, message_id) == 0
    # Nothing was kept: the clean message is then accepted under the same MSGID.
    status, body, _ = await post_message(chiba, data)
    assert status == 201, body
    assert await count_items(chiba, [person]) == 2


async def test_an_empty_registration_message_gets_its_own_error(chiba: Any, funabashi: Any) -> None:
    """Empty bodies answered amid another city's badly encoded ones, many at once."""
    badly_encoded = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<IF_DBM_20113_R01 xmlns="urn:chukan:dbm:IF_DBM_20113_R01:1">\xc3\x28'
    )
    for _ in range(3):
        answers = await asyncio.gather(
            *(post_message(funabashi, badly_encoded) for _ in range(4)),
            *(post_message(chiba, body) for body in (b"", b"", b"\n  \n")),
        )
        for status, body, _ in answers[:4]:
            assert (status, body["error"]["code"]) == (400, "xml_encoding"), body
        for status, body, _ in answers[4:]:
            assert (status, body["error"]["code"]) == (400, "xml_malformed"), body
            message = body["error"]["message"]
            assert "empty" in message, message
            assert "ENCODING" not in message and "UTF-8" not in message, message


# -- bulk import -----------------------------------------------------------------------------


@pytest.fixture
async def tenant_conn(chiba: Any) -> Any:
    conn = await asyncpg.connect(chiba.gateway.config.database_url)
    yield conn
    await conn.close()


@pytest.mark.parametrize("workers", [0, 2])
async def test_bulk_import_refuses_hostile_markup_whole(
    chiba: Any, tenant_conn: Any, person: str, tmp_path: Path, rng: random.Random, workers: int
) -> None:
    message_id = new_message_id("BULK")
    entries = [
        SyntheticEntry(new_record_id(), person, CERTIFICATION, certification(rng), str(key))
        for key in range(50)
    ]
    clean = write_registration(tmp_path / "clean.xml", message_id, entries).read_bytes()
    for name, hostile in hostile_messages(clean).items():
        path = tmp_path / "hostile.xml"
        path.write_bytes(hostile)
        out = io.StringIO()
        assert await run_import([path], tenant_conn, workers=workers, out=out) == 1, name
        assert "refused (xml_forbidden" in out.getvalue(), (name, out.getvalue())
    assert await count_items(chiba, [person]) == 0
    assert await messages_stored(chiba, message_id) == 0


# -- network envelopes -----------------------------------------------------------------------


async def test_network_messages_with_hostile_markup_are_refused(
    chiba: Any, http: Any, network: Any
) -> None:
    envelope = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<q:Message xmlns:q="urn:chukan:network:1" version="1"><q:Header/><q:Body/></q:Message>'
    )
    declaration, rest = envelope.split(b"?>", 1)
    before = await chiba.gateway.state.pool.fetchval("SELECT count(*) FROM seen_messages")
    for data in (
        declaration + b"?>" + PI + rest,
        envelope.replace(b"<q:Body/>", b"<q:Body>" + XINCLUDE + b"</q:Body>"),
        envelope + PI,
    ):
        async with http.post(
            chiba.gateway.url + "/network/v1/messages",
            data=data,
            headers={"Content-Type": "application/xml"},
            ssl=network.hub_client_ssl(),  # as the hub: only the hub may call the network API
        ) as response:
            body = await response.json()
            assert (response.status, body["error"]["code"]) == (400, "xml_forbidden"), body
    assert await chiba.gateway.state.pool.fetchval("SELECT count(*) FROM seen_messages") == before
