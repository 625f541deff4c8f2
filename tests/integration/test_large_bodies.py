"""Bounded memory: a server holds at most ``ops.max_large_bodies`` large request bodies at once.

Registration messages of a few MB each, sent four at a time to a real gateway
configured for two: at most two are held (read and processed) at once, the
others wait their turn — or, when no slot frees within ``ops.large_body_wait``,
are answered 503 ``busy`` with ``Retry-After`` — and every one succeeds when
sent again.  What the server did is read from its own account: the
``chukan_large_bodies_in_use`` gauge (and its ``_max``) and the structlog events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import random
import secrets
from typing import Any

import aiohttp
import pytest
from replica_support import REGISTRATIONS, insert_people

from chukan.gateway.core.settings import OpsConfig
from chukan.simulators.devnet.replica_synthetic import registration_bytes, synthetic_entries

pytestmark = pytest.mark.integration

AGENCY = "129994"
SLOTS = 2
UPLOADS = 4
MIB = 1024 * 1024


@pytest.fixture(scope="module")
async def bounded(network: Any, api: Any) -> Any:
    """A gateway of its own, restarted with room for two large bodies at once."""
    gateway = network.gateways.get(AGENCY) or await network.add_gateway(AGENCY, "大容量市")
    async with network.gateway_stopped(AGENCY) as stopped:
        stopped.config = dataclasses.replace(
            stopped.config,
            ops=OpsConfig(large_body_bytes=MIB, max_large_bodies=SLOTS, large_body_wait=60.0),
        )
    return api(gateway)


async def restart_with(network: Any, ops: OpsConfig) -> None:
    async with network.gateway_stopped(AGENCY) as stopped:
        stopped.config = dataclasses.replace(stopped.config, ops=ops)


def messages(people: list[str], rng: random.Random, count: int) -> list[bytes]:
    """``count`` test-mode registration messages (checked, never stored) of a few MB each."""
    out = []
    for _ in range(count):
        prefix = "L" + secrets.token_hex(4)
        entries = synthetic_entries(
            people, 2800, rng=rng, today=dt.date(2025, 4, 1), record_prefix=prefix
        )
        out.append(registration_bytes(f"BIG-{prefix}", entries, mode="1"))
    return out


async def upload(api: Any, body: bytes) -> tuple[int, Any, Any]:
    """One POST; a connection the server closed early counts as status 0."""
    headers = {**api.gateway.auth, "Content-Type": "application/xml"}
    try:
        async with api.session.post(
            api.gateway.url + REGISTRATIONS, data=io.BytesIO(body), headers=headers
        ) as response:
            payload = (
                await response.json()
                if response.content_type == "application/json"
                else await response.read()
            )
            return response.status, payload, response.headers.copy()
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        return 0, None, {}


async def until_done(api: Any, body: bytes, seen: list[tuple[int, Any, Any]]) -> int:
    """Send until answered (not busy); every answer is kept in ``seen``."""
    for _ in range(100):
        status, payload, headers = await upload(api, body)
        seen.append((status, payload, headers))
        if status not in (0, 503):
            return status
        await asyncio.sleep(0.1)  # the server asks for Retry-After; a test need not wait it
    raise AssertionError("never admitted")


async def gauge(api: Any, name: str) -> float:
    async with api.session.get(api.gateway.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def events(log_capture: Any, name: str, since: int) -> list[dict[str, Any]]:
    server = f"gateway:{AGENCY}"
    return [
        e
        for e in log_capture.events()[since:]
        if e.get("event") == name and e.get("server") == server
    ]


async def test_at_most_two_large_bodies_at_once_others_wait(
    bounded: Any, rng: random.Random, log_capture: Any
) -> None:
    people = [f"9{secrets.randbelow(10**13):014d}" for _ in range(50)]
    await insert_people(bounded.gateway, people)
    bodies = messages(people, rng, UPLOADS)
    assert all(len(b) > 2 * MIB for b in bodies)
    since = len(log_capture.events())

    answers = await asyncio.gather(*(upload(bounded, body) for body in bodies))

    assert [status for status, _, _ in answers] == [200] * UPLOADS, answers
    assert all(payload["msg_result"] == "0" for _, payload, _ in answers)
    admitted = events(log_capture, "large_body_admitted", since)
    assert len(admitted) == UPLOADS
    assert max(e["in_use"] for e in admitted) == SLOTS  # two at once, never three
    assert events(log_capture, "large_body_waiting", since)  # the others waited their turn
    assert len(events(log_capture, "large_body_released", since)) == UPLOADS
    assert await gauge(bounded, "chukan_large_bodies_in_use_max") == SLOTS
    assert await gauge(bounded, "chukan_large_bodies_in_use") == 0
    # Small bodies never wait for a slot: a query of the records is answered at once.
    status, _ = await bounded.call("GET", "/internal/v1/records?query_id=none")
    assert status == 200


async def test_busy_when_no_slot_frees_in_time_and_every_upload_gets_through(
    bounded: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    await restart_with(
        network, OpsConfig(large_body_bytes=MIB, max_large_bodies=SLOTS, large_body_wait=0.0)
    )
    people = [f"9{secrets.randbelow(10**13):014d}" for _ in range(50)]
    await insert_people(bounded.gateway, people)
    bodies = messages(people, rng, UPLOADS)
    since = len(log_capture.events())
    seen: list[tuple[int, Any, Any]] = []

    finals = await asyncio.gather(*(until_done(bounded, body, seen) for body in bodies))

    assert finals == [200] * UPLOADS
    refused = events(log_capture, "large_body_refused", since)
    assert refused, "four uploads at once, two slots, no wait: some must be refused"
    busy = [(payload, headers) for status, payload, headers in seen if status == 503]
    assert busy, "the refused uploads were answered, not cut off"
    for payload, headers in busy:  # each refusal the client saw is a clear one
        assert payload["error"]["code"] == "busy"
        assert int(headers["Retry-After"]) > 0
    assert all(e["in_use"] <= SLOTS for e in events(log_capture, "large_body_admitted", since))
    assert await gauge(bounded, "chukan_large_bodies_refused_total") >= len(refused)
    assert await gauge(bounded, "chukan_large_bodies_in_use") == 0
