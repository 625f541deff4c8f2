"""Key rotation with an overlap, end to end: 柏市 rotates while one of its queries is in flight.

柏市 (122173) may ask 千葉市 for 介護保険被保険者資格情報 under 項 70.  To have an
answer sealed to 柏市's *previous* key, 千葉市 is stopped while the hub issues the
permit (the provision request names 柏市's key of that moment), 柏市 rotates, and
千葉市 comes back and answers: within the overlap the answer opens; once the old
key's overlap has ended it is refused with ``key_retired``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import random
from typing import Any

import pytest

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import sample_item
from chukan.gateway.cli.keys import run_keys
from chukan.gateway.core.keyring import read_ring, ring_path, write_ring
from chukan.gateway.core.state import utcnow
from chukan.keys import generate_encryption_key, generate_signing_key
from chukan.keys.ring import KeyRing, RingKey
from chukan.simulators.devnet.network import OPERATOR_SYSTEM
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

KASHIWA = "122173"
PROCEDURE = "JT00007000000001"  # 老人福祉法による費用の徴収 (項 70)
ITEM = catalog.INSURED_QUALIFICATION.code


@pytest.fixture(scope="module")
async def kashiwa(network: Any, api: Any) -> Any:
    gateway = network.gateways.get(KASHIWA) or await network.add_gateway(KASHIWA, "柏市")
    return api(gateway)


async def moved_person(rng: random.Random, chiba: Any, kashiwa: Any) -> SyntheticPerson:
    """A person known to both cities, with an item stored at 千葉市; returns 柏市's view."""
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await kashiwa.register(there.atena_id, there.individual_number))[0] == 201
    item = encode_item(sample_item(ITEM, rng, dt.date.today()))
    assert (await chiba.store(here.atena_id, ITEM, item))[0] == 201
    return there


async def ask_chiba(kashiwa: Any, person: SyntheticPerson) -> str:
    status, submitted = await kashiwa.query(person.atena_id, PROCEDURE, ITEM, catalog.CHIBA_CITY)
    assert status == 202, submitted
    query_id: str = submitted["query_id"]
    return query_id


async def wait_until_sent(kashiwa: Any, query_id: str) -> None:
    """The hub accepted the query and issued the permit (the provision request is queued)."""
    for _ in range(100):
        status = await kashiwa.gateway.state.pool.fetchval(
            "SELECT status FROM queries WHERE query_id = $1", query_id
        )
        if status == "sent":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"query still {status}")


async def retry_deliveries_now(network: Any, http: Any) -> None:
    """The hub operator's "retry now" on the outbox (instead of waiting for the backoff)."""
    async with http.post(
        network.hub.url + "/admin/v1/deliveries/retry",
        headers={"Authorization": f"Bearer {network.hub_config.admin_token}"},
        ssl=network.hub_operator_ssl(),
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert isinstance(body["rescheduled"], int)  # 0 when the hub is already retrying it


async def reload(kashiwa: Any) -> dict[str, Any]:
    status, body = await kashiwa.call("POST", "/internal/v1/keys/reload", system=OPERATOR_SYSTEM)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def rotate_with_cli(kashiwa: Any) -> str:
    config = kashiwa.gateway.config
    out = io.StringIO()
    args = argparse.Namespace(
        key_dir=config.key_dir, keys_command="rotate", owner=None, prune=False, json=False
    )
    env = {"CHUKAN_KEY_PASSPHRASE": config.key_passphrase.decode()}
    assert run_keys(args, out=out, err=out, env=env) == 0, out.getvalue()
    return out.getvalue()


async def registry(network: Any, http: Any, code: str) -> dict[str, Any]:
    async with http.get(
        f"{network.hub.url}/network/v1/agencies/{code}", ssl=network.agency_client_ssl(code)
    ) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def routed_answer(network: Any, query_id: str) -> bytes:
    body: bytes = await network.hub.app[HUB_STATE].pool.fetchval(
        "SELECT body FROM routed_messages WHERE query_id = $1 AND message_type = 'ProvisionAnswer'",
        query_id,
    )
    return body


async def test_a_rotation_is_published_and_new_messages_use_the_new_key(
    network: Any, http: Any, chiba: Any, kashiwa: Any, rng: random.Random
) -> None:
    state = kashiwa.gateway.state
    old_enc, old_sig = state.keys.encryption.key_id, state.keys.signing.key_id
    printed = rotate_with_cli(kashiwa)
    assert "PRIVATE" not in printed
    assert state.keys.encryption.key_id == old_enc  # nothing changes before the reload

    body = await reload(kashiwa)
    new_enc = body["encryption_key"]
    assert new_enc != old_enc and body["signing_key"] != old_sig
    states = {k["key_id"]: k["state"] for k in body["keys"]}
    assert states[old_enc] == states[old_sig] == "retiring"
    assert states[new_enc] == "active"

    published = await registry(network, http, KASHIWA)
    assert published["encryption_key"]["key_id"] == new_enc
    keys = {k["key_id"]: k for k in published["keys"]}
    assert keys[old_enc]["valid_until"] is not None  # the overlap's end
    assert keys[new_enc]["valid_until"] is None
    assert old_sig in keys  # answers signed just before the rotation still verify

    person = await moved_person(rng, chiba, kashiwa)
    query_id = await ask_chiba(kashiwa, person)
    result = await kashiwa.result(query_id)
    assert result["status"] == "answered", result
    answer = await routed_answer(network, query_id)
    assert new_enc.encode() in answer and old_enc.encode() not in answer


async def test_an_answer_sealed_to_the_previous_key_opens_within_the_overlap(
    network: Any, http: Any, chiba: Any, kashiwa: Any, rng: random.Random
) -> None:
    person = await moved_person(rng, chiba, kashiwa)
    previous = kashiwa.gateway.state.keys.encryption.key_id
    async with network.gateway_stopped(catalog.CHIBA_CITY):
        query_id = await ask_chiba(kashiwa, person)
        await wait_until_sent(kashiwa, query_id)  # the request names `previous`
        rotate_with_cli(kashiwa)
        assert (await reload(kashiwa))["encryption_key"] != previous
    await retry_deliveries_now(network, http)
    result = await kashiwa.result(query_id)
    assert result["status"] == "answered", result
    assert previous.encode() in await routed_answer(network, query_id)


async def test_an_answer_sealed_to_a_key_past_its_overlap_is_refused(
    network: Any, http: Any, chiba: Any, kashiwa: Any, rng: random.Random
) -> None:
    person = await moved_person(rng, chiba, kashiwa)
    state = kashiwa.gateway.state
    config = kashiwa.gateway.config
    async with network.gateway_stopped(catalog.CHIBA_CITY):
        query_id = await ask_chiba(kashiwa, person)
        await wait_until_sent(kashiwa, query_id)
        # The current keys were replaced long ago: their overlap ended an hour ago.
        ring = state.ring
        retired = utcnow() - ring.overlap - dt.timedelta(hours=1)
        activated = retired - dt.timedelta(days=1)
        old_enc, old_sig = state.keys.encryption, state.keys.signing
        aged = KeyRing(
            KASHIWA,
            (
                RingKey(old_enc, activated, retired),
                RingKey(generate_encryption_key(KASHIWA), retired),
            ),
            (RingKey(old_sig, activated, retired), RingKey(generate_signing_key(KASHIWA), retired)),
            ring.overlap,
        )
        write_ring(ring_path(config.key_dir, KASHIWA), aged, config.key_passphrase)
        states = {k["key_id"]: k["state"] for k in (await reload(kashiwa))["keys"]}
        assert states[old_enc.key_id] == states[old_sig.key_id] == "expired"
    await retry_deliveries_now(network, http)
    result = await kashiwa.result(query_id)
    assert result["status"] == "refused", result
    assert result["reason_code"] == "key_retired"
    assert result["result"] is None
    # The hub no longer lists (or accepts signatures under) the expired keys.
    listed = {k["key_id"] for k in (await registry(network, http, KASHIWA))["keys"]}
    assert old_enc.key_id not in listed and old_sig.key_id not in listed


async def test_reloading_keys_is_an_operator_operation(kashiwa: Any) -> None:
    status, body = await kashiwa.call("POST", "/internal/v1/keys/reload")
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_a_ring_that_does_not_open_is_refused_and_nothing_changes(kashiwa: Any) -> None:
    state = kashiwa.gateway.state
    config = kashiwa.gateway.config
    path = ring_path(config.key_dir, KASHIWA)
    original = path.read_bytes()
    before = state.keys
    try:
        ring = read_ring(path, config.key_passphrase)
        write_ring(path, ring.rotate(utcnow()), b"another-passphrase-of-some-length")
        status, body = await kashiwa.call(
            "POST", "/internal/v1/keys/reload", system=OPERATOR_SYSTEM
        )
        assert (status, body["error"]["code"]) == (400, "key_format")
        assert "another-passphrase" not in body["error"]["message"]
        assert state.keys == before
    finally:
        path.write_bytes(original)


async def test_restart_picks_up_the_ring_on_disk(network: Any, kashiwa: Any) -> None:
    """A ring rotated while the gateway was down is used (and published) at start-up."""
    async with network.gateway_stopped(KASHIWA) as gateway:
        config = gateway.config
        before = read_ring(ring_path(config.key_dir, KASHIWA), config.key_passphrase)
        rotate_with_cli(kashiwa)
    current = kashiwa.gateway.state.keys.encryption.key_id
    assert current != before.current_encryption(utcnow()).key_id
    hub = network.hub.app[HUB_STATE]
    assert (
        await hub.pool.fetchval("SELECT encryption_key_id FROM agencies WHERE code = $1", KASHIWA)
        == current
    )
