"""システム管理: the deletion job, statistics, jobs, /health, /ready and /metrics."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
import secrets
from typing import Any

import pytest
from conftest import ROOT_PASSWORD

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core.config import Timing
from chukan.gateway.core.keyring import read_ring, ring_path, write_ring
from chukan.gateway.core.state import utcnow
from chukan.gateway.ops.statistics import today_in
from chukan.gateway.records.store import RecordEntry, write_record
from chukan.keys.ring import KeyRing
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration


async def run_cli(url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="chukan")
    commands = parser.add_subparsers(dest="command", required=True)
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    out = io.StringIO()
    status = await admin_cli.run(parser.parse_args(argv), url, out, io.StringIO())
    return status, out.getvalue()


async def staff_token(api: Any, roles: list[str]) -> str:
    _, body = await api.call(
        "POST", "/staff/v1/login", json={"username": "root", "password": ROOT_PASSWORD}
    )
    admin = body["token"]
    if roles == ["admin"]:
        return str(admin)
    username, password = f"o{secrets.token_hex(4)}", f"Ops-{secrets.token_urlsafe(12)}"
    status, _ = await api.call(
        "POST",
        "/staff/v1/accounts",
        token=admin,
        json={
            "username": username,
            "password": password,
            "roles": roles,
            "office": "kaigo-hoken-kanri",
        },
    )
    assert status == 201
    _, body = await api.call(
        "POST", "/staff/v1/login", json={"username": username, "password": password}
    )
    return str(body["token"])


async def test_deletion_job_removes_collected_results(
    chiba: Any, funabashi: Any, rng: random.Random, log_capture: Any
) -> None:
    in_chiba = synthetic_person(rng, "5")
    in_funabashi = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, in_chiba.individual_number, "", 1950
    )
    assert (await chiba.register(in_chiba.atena_id, in_chiba.individual_number))[0] == 201
    assert (await funabashi.register(in_funabashi.atena_id, in_chiba.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(in_chiba.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    _, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    collected = await funabashi.result(submitted["query_id"])
    assert collected["result"] and not collected["result_deleted"]
    pool = funabashi.gateway.state.pool
    assert await pool.fetchval(
        "SELECT collected_at IS NOT NULL FROM queries WHERE query_id = $1", submitted["query_id"]
    )
    url = funabashi.gateway.config.migration_database_url
    status, output = await run_cli(
        url, "ops", "purge", "--tenant", catalog.FUNABASHI_CITY, "--retention-hours", "0",
        "--actor", "night-batch",
    )  # fmt: skip
    assert status == 0, output
    job = json.loads(output)
    assert job["kind"] == "results.purge" and job["status"] == "done"
    assert job["created_by"] == "cli:night-batch"
    assert job["counts"]["collected_results_deleted"] >= 1
    again = await funabashi.result(submitted["query_id"])
    assert again["status"] == "answered" and again["result"] is None and again["result_deleted"]
    assert any(e["job_id"] == job["id"] for e in log_capture.named("job_done"))


#: 八千代市 may ask 千葉市 for 要介護認定情報 under 項 116; no other test runs its gateway.
YACHIYO = "122211"
YACHIYO_PROCEDURE = "JT00011600000001"
#: The lifetime of 八千代市's queries in this test (``Timing.result_ttl``).
SHORT_LIFETIME = dt.timedelta(seconds=2)


async def test_deletion_job_concludes_and_removes_queries_never_answered(
    network: Any, api: Any, chiba: Any, rng: random.Random
) -> None:
    """A query whose provider is down for its whole lifetime: the deletion job concludes
    it as failed/expired on the requester's record, then removes it."""
    yachiyo = api(
        await network.add_gateway(YACHIYO, "八千代市", timing=Timing(result_ttl=SHORT_LIFETIME))
    )
    try:
        in_chiba = synthetic_person(rng, "5")
        in_yachiyo = SyntheticPerson(
            synthetic_person(rng, "6").atena_id, in_chiba.individual_number, "", 1950
        )
        assert (await chiba.register(in_chiba.atena_id, in_chiba.individual_number))[0] == 201
        assert (await yachiyo.register(in_yachiyo.atena_id, in_chiba.individual_number))[0] == 201
        async with network.gateway_stopped(catalog.CHIBA_CITY):
            status, submitted = await yachiyo.query(
                in_yachiyo.atena_id, YACHIYO_PROCEDURE, catalog.CERTIFICATION.code,
                catalog.CHIBA_CITY,
            )  # fmt: skip
            assert status == 202, submitted
            query_id = submitted["query_id"]
            # The gateway answers a long poll when the query ends or the wait is over: with
            # the provider down, only the wait (longer than the query's lifetime) ends it.
            pending = await yachiyo.result(query_id, wait=SHORT_LIFETIME.total_seconds() + 0.5)
            assert pending["status"] == "pending", pending
            status, output = await run_cli(
                yachiyo.gateway.config.migration_database_url,
                "ops", "purge", "--tenant", YACHIYO, "--actor", "night-batch",
            )  # fmt: skip
        assert status == 0, output
        counts = json.loads(output)["counts"]
        assert counts["expired_unanswered"] == 1 and counts["expired_deleted"] == 1
        status, body = await yachiyo.call("GET", f"/internal/v1/queries/{query_id}")
        assert status == 404, body
        # The unanswered query was concluded on the record before it went.
        record = await yachiyo.gateway.state.pool.fetchrow(
            "SELECT outcome, reason_code FROM provision_records WHERE query_id = $1", query_id
        )
        assert (record["outcome"], record["reason_code"]) == ("failed", "expired")
    finally:
        gateway = network.gateways.pop(YACHIYO, None)
        if gateway is not None:
            await gateway.server.stop()


async def test_purge_runs_periodically_and_on_demand_with_job_rows(ops_gateway: Any) -> None:
    operator = await staff_token(ops_gateway, ["operator"])
    auditor = await staff_token(ops_gateway, ["auditor"])
    status, body = await ops_gateway.call("POST", "/staff/v1/jobs/purge", token=auditor)
    assert status == 403 and body["error"]["code"] == "role_required"
    status, job = await ops_gateway.call("POST", "/staff/v1/jobs/purge", token=operator)
    assert status == 200 and job["status"] == "done" and job["created_by"].startswith("staff:")
    assert set(job["counts"]) >= {"expired_deleted", "collected_results_deleted"}
    status, one = await ops_gateway.call("GET", f"/staff/v1/jobs/{job['id']}", token=auditor)
    assert status == 200 and one["id"] == job["id"]
    assert (await ops_gateway.call("GET", "/staff/v1/jobs/999999999", token=auditor))[0] == 404
    for _ in range(40):  # the gateway's own purger runs every 0.3 s here
        _, listing = await ops_gateway.call(
            "GET", "/staff/v1/jobs?kind=results.purge", token=operator
        )
        if any(j["created_by"] == "gateway" and j["status"] == "done" for j in listing["jobs"]):
            break
        await asyncio.sleep(0.1)
    assert any(j["created_by"] == "gateway" and j["status"] == "done" for j in listing["jobs"])


async def test_statistics_per_day_procedure_item_and_outcome(ops_gateway: Any) -> None:
    gateway = ops_gateway.gateway
    agency = gateway.config.agency_code
    item = "TM" + "".join(secrets.choice("0123456789") for _ in range(14))
    now = dt.datetime.now(dt.UTC)
    outcomes = ["provided"] * 3 + ["refused"] * 2
    async with gateway.state.pool.acquire() as conn:
        for i, outcome in enumerate(outcomes):
            async with conn.transaction():
                await write_record(
                    conn,
                    agency,
                    RecordEntry(
                        role="provider",
                        query_id=f"stat-{item}-{i}",
                        permit_id=None,
                        requester=catalog.CHIBA_CITY,
                        provider=agency,
                        business_code=catalog.LTC_BUSINESS,
                        procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
                        item_code=item,
                        legal_basis=132,
                        atena_id="7",
                        requested_at=now,
                        provided_at=now if outcome == "provided" else None,
                        outcome=outcome,
                        reason_code=None if outcome == "provided" else "item_not_found",
                    ),
                )
    today = today_in("Asia/Tokyo")
    token = await staff_token(ops_gateway, ["operator"])
    status, body = await ops_gateway.call(
        "GET", f"/staff/v1/statistics?from={today}&to={today}", token=token
    )
    assert status == 200 and body["time_zone"] == "Asia/Tokyo"
    mine = {(r["outcome"], r["count"]) for r in body["rows"] if r["item_code"] == item}
    assert mine == {("provided", 3), ("refused", 2)}
    assert all(r["day"] == today.isoformat() for r in body["rows"] if r["item_code"] == item)
    status, text = await ops_gateway.call(
        "GET", f"/staff/v1/statistics?from={today}&to={today}&format=csv", token=token
    )
    lines = text.decode().splitlines()
    assert status == 200 and lines[0] == "day,role,procedure_code,item_code,outcome,count"
    assert f"{today},provider,{catalog.LTC_CERTIFICATION_PROCEDURE},{item},provided,3" in lines
    for query in ("from=2026-13-01", f"from={today}&to=2000-01-01", "from=2000-01-01"):
        status, body = await ops_gateway.call("GET", f"/staff/v1/statistics?{query}", token=token)
        assert status == 422, query
    status, output = await run_cli(
        gateway.config.migration_database_url, "ops", "stats", "--tenant", agency,
        "--from", today.isoformat(), "--to", today.isoformat(),
    )  # fmt: skip
    assert status == 0
    rows = [r for r in json.loads(output)["rows"] if r["item_code"] == item]
    assert {(r["outcome"], r["count"]) for r in rows} == {("provided", 3), ("refused", 2)}


async def test_health_and_ready(ops_gateway: Any) -> None:
    status, body = await ops_gateway.call("GET", "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = await ops_gateway.call("GET", "/ready")
    assert status == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "hub", "authorization_list", "keys", "records"}
    state = ops_gateway.gateway.state
    listed, hub_url = state.authorization_list, state.hub.base_url
    try:
        state.authorization_list = None
        state.hub.base_url = "http://127.0.0.1:9"  # nothing listens on the discard port
        status, body = await ops_gateway.call("GET", "/ready")
    finally:
        state.authorization_list, state.hub.base_url = listed, hub_url
    assert status == 503 and body["status"] == "not_ready"
    assert not body["checks"]["hub"]["ok"] and body["checks"]["hub"]["reason"]
    assert not body["checks"]["authorization_list"]["ok"]
    assert body["checks"]["database"]["ok"] and body["checks"]["keys"]["ok"]
    assert (await ops_gateway.call("GET", "/ready"))[0] == 200


async def test_ready_fails_when_the_key_ring_at_rest_would_not_bring_the_keys_back(
    ops_gateway: Any,
) -> None:
    """The keys check: a reload or a restart must come back with the keys in use."""
    config = ops_gateway.gateway.config
    in_use = ops_gateway.gateway.state.keys
    path = ring_path(config.key_dir, config.agency_code)
    original = path.read_bytes()
    ring = read_ring(path, config.key_passphrase)

    async def keys_check(expected_status: int) -> dict[str, Any]:
        status, body = await ops_gateway.call("GET", "/ready")
        assert status == expected_status, body
        check: dict[str, Any] = body["checks"]["keys"]
        return check

    assert await keys_check(200) == {"ok": True, "signing_key": in_use.signing.key_id}
    try:
        write_ring(path, ring, b"another-passphrase-of-some-length")
        assert await keys_check(503) == {
            "ok": False,
            "reason": "the key ring does not open with the configured passphrase",
        }
        other = KeyRing.generate(config.agency_code, now=utcnow())
        write_ring(path, other, config.key_passphrase)
        assert await keys_check(503) == {
            "ok": False,
            "reason": "the key ring does not hold the keys in use",
        }
        # Rotated on disk, not yet reloaded: the keys in use are still in it (retiring).
        write_ring(path, ring.rotate(utcnow()), config.key_passphrase)
        assert (await keys_check(200))["ok"]
        path.write_bytes(original)
        path.chmod(0o640)
        assert await keys_check(503) == {
            "ok": False,
            "reason": "the key ring is readable by others",
        }
    finally:
        path.write_bytes(original)
        path.chmod(0o600)
    assert await keys_check(200) == {"ok": True, "signing_key": in_use.signing.key_id}


async def test_metrics_in_prometheus_text(
    chiba: Any, funabashi: Any, ops_gateway: Any, http: Any, rng: random.Random
) -> None:
    in_chiba = synthetic_person(rng, "5")
    in_funabashi = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, in_chiba.individual_number, "", 1950
    )
    await chiba.register(in_chiba.atena_id, in_chiba.individual_number)
    await funabashi.register(in_funabashi.atena_id, in_chiba.individual_number)
    await chiba.store(
        in_chiba.atena_id, catalog.CERTIFICATION.code, certification_item(rng, dt.date.today())
    )
    _, submitted = await funabashi.query(
        in_funabashi.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    await funabashi.result(submitted["query_id"])
    await ops_gateway.call("GET", "/health")
    await ops_gateway.call("GET", "/staff/v1/me")  # 401

    async def scrape(api: Any) -> str:
        async with http.get(api.gateway.url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text: str = await response.text()
            return text

    ops_text = await scrape(ops_gateway)
    assert 'chukan_http_requests_total{route="/health",method="GET",status="200"}' in ops_text
    assert 'chukan_http_requests_total{route="/staff/v1/me",method="GET",status="401"}' in ops_text
    assert 'chukan_http_request_duration_seconds_bucket{route="/health",le="+Inf"}' in ops_text
    assert 'chukan_jobs{kind="results.purge",status="done"}' in ops_text
    assert 'chukan_provisions_total{outcome="provided"}' in await scrape(chiba)
    funabashi_text = await scrape(funabashi)
    assert 'chukan_queries_total{outcome="provided"}' in funabashi_text
    assert (
        'chukan_http_requests_total{route="/internal/v1/queries/{query_id}",method="GET",'
        'status="200"}' in funabashi_text
    )
    for line in ops_text.splitlines():
        assert line.startswith("#") or " " in line, line
