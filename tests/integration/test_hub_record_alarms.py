"""The hub stops routing new queries while it cannot record verifiably, and says so.

A second hub process (its own witness file, its checkpointer driven by the test) shares
the session's hub database: what it finds — a chain a superuser broke, a witness file
that cannot be written or no longer matches — is kept in the database, so the hub the
gateways talk to reports it in ``/ready`` and ``/metrics`` and refuses new queries with
503 ``records_unavailable``; once repaired, the next pass clears it and the very query
refused before is routed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from exchange_support import new_query

from chukan.codecs.envelope import QueryRequest
from chukan.gateway.serve import RunningServer, serve
from chukan.simulators.hub import HUB_STATE, create_hub_app
from chukan.simulators.hub.checkpoints import checkpoint_pass, read_witness_file

pytestmark = pytest.mark.integration

#: A refused query as routing records one (outside every test's period: year 2000, no
#: agency of the network), then one field changed behind the triggers' back: its
#: stored hash no longer matches, so the unsigned segment does not verify.
BROKEN_EVENT = """
    INSERT INTO hub_record_events (query_id, kind, requester, provider, business_code,
        procedure_code, item_code, requester_person_code, requested_at, answered_at,
        outcome, reason_code, non_disclosure)
    VALUES ($1, 'opened', 'alarm-test', 'alarm-test', 'JM00000000000132',
        'JT00013200000001', 'TM00000000000001', 'code', '2000-01-01T00:00:00Z',
        '2000-01-01T00:00:00Z', 'refused', 'not_authorized', false)"""


@pytest.fixture
async def second_hub(network: Any, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Another process of the same hub (same database and keys), its own witness file;
    its checkpointer waits an hour between passes: the test runs them."""
    config = dataclasses.replace(
        network.hub_config,
        witness_file=tmp_path / "witness-b.jsonl",
        checkpoint_poll=3600.0,
        port=0,
    )
    tls = config.tls
    server = await serve(
        create_hub_app(config),
        config.host,
        0,
        ssl_context=None if tls is None else tls.server_context(),
    )
    try:
        yield server
    finally:
        await server.stop()


async def probe(network: Any, http: Any, path: str) -> tuple[int, Any]:
    async with http.get(network.hub.url + path, ssl=network.hub_operator_ssl()) as response:
        if path == "/metrics":
            return response.status, await response.text()
        return response.status, await response.json()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


async def send(funabashi: Any, body: QueryRequest) -> tuple[int, str | None]:
    """The query sent to the hub as 船橋市's gateway sends it: status and error code."""
    reply = await funabashi.gateway.state.hub.send(body)
    return reply.status, (None if reply.status == 202 else reply.error()[0])


async def assert_sound(network: Any, http: Any) -> None:
    status, ready = await probe(network, http, "/ready")
    assert status == 200, ready
    assert ready["checks"]["records"]["ok"] and ready["checks"]["records"]["routing"]
    _, text = await probe(network, http, "/metrics")
    assert metric(text, "chukan_hub_records_chain_broken") == 0
    assert metric(text, "chukan_hub_records_witness_failing") == 0
    assert metric(text, "chukan_hub_records_routing") == 1


async def assert_alarm(network: Any, http: Any, code: str, family: str) -> dict[str, Any]:
    status, ready = await probe(network, http, "/ready")
    assert status == 503, ready
    records: dict[str, Any] = ready["checks"]["records"]
    assert not records["ok"] and not records["routing"]
    assert code in {a["code"] for a in records["alarms"]}
    _, text = await probe(network, http, "/metrics")
    assert metric(text, family) >= 1
    assert metric(text, "chukan_hub_records_routing") == 0
    return records


async def test_a_broken_chain_stops_routing_until_it_is_repaired(
    network: Any,
    http: Any,
    chiba: Any,
    funabashi: Any,
    second_hub: RunningServer,
    rng: random.Random,
    log_capture: Any,
) -> None:
    state = second_hub.app[HUB_STATE]
    await checkpoint_pass(state, force=True)
    await assert_sound(network, http)
    query_id = f"alarm-{secrets.token_hex(6)}"
    conn = await asyncpg.connect(network.hub_config.database_url)
    try:
        # A superuser's edit: in one transaction with the event, so no checkpoint covers
        # the event before it is broken.
        async with conn.transaction():
            await conn.execute(BROKEN_EVENT, query_id)
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE hub_record_events SET reason_code = 'forged' WHERE query_id = $1",
                query_id,
            )
        seq = await conn.fetchval("SELECT seq FROM hub_record_events WHERE query_id = $1", query_id)
        try:
            assert await checkpoint_pass(state, force=True) is None  # nothing signed
            broken = [e for e in log_capture.named("hub_record_chain_broken") if e["seq"] == seq]
            assert broken and broken[-1]["level"] == "error"
            records = await assert_alarm(
                network, http, "hub_record_chain_broken", "chukan_hub_records_chain_broken"
            )
            assert {a["seq"] for a in records["alarms"]} == {seq}
            body = await new_query(chiba, funabashi, rng)
            assert await send(funabashi, body) == (503, "records_unavailable")
            assert [
                e for e in log_capture.named("hub_query_refused_records") if "seq" in e["reason"]
            ]
            # Nothing of the refused query was recorded: it can be sent again.
            assert not await conn.fetchval(
                "SELECT count(*) FROM hub_record_events WHERE query_id = $1", body.query_id
            )
        finally:  # the repair: the record as it was written
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(
                    "UPDATE hub_record_events SET reason_code = 'not_authorized' "
                    "WHERE query_id = $1",
                    query_id,
                )
            signed = await checkpoint_pass(state, force=True)
        assert signed is not None and signed >= seq
        await assert_sound(network, http)
        assert await send(funabashi, body) == (202, None)
    finally:
        await conn.close()


async def test_a_witness_file_that_cannot_be_written_or_disagrees_stops_routing(
    network: Any,
    http: Any,
    chiba: Any,
    funabashi: Any,
    second_hub: RunningServer,
    rng: random.Random,
    log_capture: Any,
) -> None:
    state = second_hub.app[HUB_STATE]
    path = state.config.witness_path
    await checkpoint_pass(state, force=True)
    while len(read_witness_file(path)) < await state.pool.fetchval(
        "SELECT count(*) FROM hub_record_checkpoints"
    ):
        await checkpoint_pass(state)  # catching up a hundred checkpoints a pass
    await assert_sound(network, http)
    body = await new_query(chiba, funabashi, rng)

    # Unwritable (a folder where the file was: root or not, nothing can append).
    kept = path.with_name("witness-b.kept")
    path.rename(kept)
    path.mkdir()
    try:
        assert await checkpoint_pass(state, force=True) is None
        assert log_capture.named("hub_witness_unwritable")
        records = await assert_alarm(
            network, http, "hub_witness_unwritable", "chukan_hub_records_witness_failing"
        )
        (alarm,) = [a for a in records["alarms"] if a["code"] == "hub_witness_unwritable"]
        assert alarm["detail"].startswith("witness-b.jsonl: IsADirectoryError")
        assert await send(funabashi, body) == (503, "records_unavailable")
    finally:
        path.rmdir()
        kept.rename(path)
    await checkpoint_pass(state, force=True)  # the file is sound again: the alarm cleared
    await assert_sound(network, http)

    # Disagreeing: the file's last checkpoint is not the database's.
    lines = path.read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    forged = {**last, "hash": "00" * 32}  # the database's checkpoint is another
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n", encoding="utf-8")
    try:
        assert await checkpoint_pass(state) is None
        records = await assert_alarm(
            network, http, "hub_witness_mismatch", "chukan_hub_records_witness_failing"
        )
        assert {a["seq"] for a in records["alarms"]} == {last["seq"]}
        assert log_capture.named("hub_witness_mismatch")
        assert await send(funabashi, body) == (503, "records_unavailable")
    finally:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    await checkpoint_pass(state)
    await assert_sound(network, http)
    assert await send(funabashi, body) == (202, None)
