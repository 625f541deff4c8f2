"""Personal data stays where it belongs: no 個人番号 anywhere, no plaintext at the hub."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import asyncpg
import pytest

from chukan.codecs import catalog
from chukan.codecs.envelope import AcquisitionRequest
from chukan.codecs.sample_items import certification_item
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


async def _all_values(url: str) -> list[tuple[str, bytes]]:
    """Every column value of every user table, as bytes (text as UTF-8, bytea raw)."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        values: list[tuple[str, bytes]] = []
        for table in tables:
            name = table["table_name"]
            for row in await conn.fetch(f'SELECT * FROM "{name}"'):  # noqa: S608 -- catalog names
                for value in row.values():
                    if isinstance(value, bytes | bytearray | memoryview):
                        values.append((name, bytes(value)))
                    elif value is not None:
                        values.append((name, str(value).encode("utf-8")))
        return values
    finally:
        await conn.close()


@pytest.fixture
async def exchanged(
    chiba: Any, funabashi: Any, rng: random.Random
) -> tuple[list[str], list[bytes]]:
    """Register people on both sides and run one answered query; return numbers and items."""
    numbers: list[str] = []
    items: list[bytes] = []
    for _ in range(2):
        here = synthetic_person(rng, "3")
        there = SyntheticPerson(
            synthetic_person(rng, "3").atena_id, here.individual_number, here.kana_name, 1950
        )
        numbers.append(here.individual_number)
        assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
        assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
        item = certification_item(rng, dt.date.today())
        items.append(item)
        assert (await chiba.store(here.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
        _, submitted = await funabashi.query(
            there.atena_id,
            catalog.LTC_CERTIFICATION_PROCEDURE,
            catalog.CERTIFICATION.code,
            catalog.CHIBA_CITY,
        )
        assert (await funabashi.result(submitted["query_id"]))["status"] == "answered"
    return numbers, items


async def test_no_individual_number_in_any_table_or_log(
    exchanged: tuple[list[str], list[bytes]], network: Any, chiba: Any, log_capture: Any
) -> None:
    numbers, _ = exchanged
    urls = [
        network.hub_config.database_url,
        chiba.gateway.config.migration_database_url,  # the owner sees every tenant's rows
    ]
    for url in urls:
        for table, value in await _all_values(url):
            for number in numbers:
                assert number.encode() not in value, f"個人番号 found in {table}"
    text = log_capture.getvalue()
    assert log_capture.named("person_registered")  # the capture did see the registrations
    for number in numbers:
        assert number not in text


async def test_item_plaintext_is_absent_from_every_hub_table(
    exchanged: tuple[list[str], list[bytes]], network: Any
) -> None:
    _, items = exchanged
    values = await _all_values(network.hub_config.database_url)
    assert any(table == "routed_messages" for table, _ in values)
    markers = [b"CareCertification", b"CareLevel", b"ValidFrom"]
    for table, value in values:
        for item in items:
            assert item not in value, f"item plaintext found in hub table {table}"
        for marker in markers:
            assert marker not in value, f"item element {marker!r} found in hub table {table}"
    # What the hub routed as answers is sealed: it holds no key that opens it.
    hub = network.hub.app[HUB_STATE]
    answers = await hub.pool.fetch(
        "SELECT body FROM routed_messages WHERE message_type = 'ProvisionAnswer'"
    )
    assert answers
    assert all(b"<EncryptedPayload" in r["body"] or b"refused" in r["body"] for r in answers)
    assert hub.keys.encryption.key_id not in b"".join(r["body"] for r in answers).decode()


async def test_invalid_individual_number_is_never_echoed(
    chiba: Any, log_capture: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "3")
    wrong = person.individual_number[:11] + str((int(person.individual_number[11]) + 1) % 10)
    status, body = await chiba.register(person.atena_id, wrong)
    assert status == 422
    assert wrong not in str(body)
    assert wrong not in log_capture.getvalue()


async def test_hub_refuses_an_invalid_number_without_echoing_it(chiba: Any) -> None:
    reply = await chiba.gateway.state.hub.send(AcquisitionRequest("123456789010"))
    assert reply.status == 422
    code, message = reply.error()
    assert code == "individual_number_invalid"
    assert "123456789010" not in message
