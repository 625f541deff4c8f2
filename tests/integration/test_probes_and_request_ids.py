"""Probes on every server, the access log, and one request id across the hops of a query.

The hub and the 国保連 simulator answer ``/health``, ``/ready`` and ``/metrics``
like a gateway; every request of every server is one ``http_request`` event;
the id a core system sends as ``X-Request-Id`` reaches the hub and the provider,
and the requester's, the hub's and the provider's records all carry it.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from typing import Any

import pytest

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core.web import REQUEST_ID_HEADER
from chukan.simulators.devnet.network import CORE_SYSTEM
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` in a Prometheus text, by their label text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


async def get(http: Any, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, JSON or text body, and the headers (case-insensitive)."""
    async with http.get(url, **kwargs) as response:
        body = (
            await response.json()
            if response.content_type == "application/json"
            else await response.text()
        )
        return response.status, body, response.headers.copy()


async def test_hub_probes(network: Any, http: Any, log_capture: Any) -> None:
    operator = network.hub_operator_ssl()
    status, health, headers = await get(http, network.hub.url + "/health", ssl=operator)
    assert status == 200, health
    assert health["status"] == "ok" and health["service"] == "hub"
    assert health["database"]["ok"] is True
    assert health["authorization_list"]["ok"] is True
    assert len(headers[REQUEST_ID_HEADER]) == 32  # generated: none was sent

    status, ready, _ = await get(http, network.hub.url + "/ready", ssl=operator)
    assert status == 200, ready
    assert ready["status"] == "ready"
    checks = ready["checks"]
    assert set(checks) == {"database", "outbox", "authorization_list", "records"}
    assert all(check["ok"] for check in checks.values())
    assert checks["outbox"]["due"] >= 0 and "in_flight" in checks["outbox"]
    assert checks["authorization_list"]["version"] >= 1

    status, text, headers = await get(http, network.hub.url + "/metrics", ssl=operator)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert samples(text, "chukan_hub_deliveries_due")[""] >= 0
    assert "" in samples(text, "chukan_hub_deliveries_in_flight")
    assert samples(text, "chukan_large_bodies_in_use") == {"": 0}
    requests = samples(text, "chukan_http_requests_total")
    assert requests['{route="/ready",method="GET",status="200"}'] >= 1
    # Every agency's gateway enrolled: counted by route template, never by value.
    assert any(key.startswith('{route="/admin/v1/agencies"') for key in requests)

    # The access log: one event per request, with the caller's certificate.
    probe = [
        e
        for e in log_capture.named("http_request")
        if e.get("server") == "hub" and e.get("route") == "/ready"
    ]
    assert probe and probe[-1]["status"] == 200 and probe[-1]["method"] == "GET"
    assert probe[-1]["caller"].startswith("system:")  # the operator's certificate
    assert probe[-1]["duration_ms"] >= 0 and probe[-1]["request_id"]


async def test_hub_probes_need_a_network_certificate(network: Any, http: Any) -> None:
    """With TLS every hub call presents a certificate of the network CA: probes too."""
    status, body, headers = await get(http, network.hub.url + "/metrics")
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert headers[REQUEST_ID_HEADER]  # refusals are echoed an id too


async def test_kokuhoren_probes(network: Any, http: Any, log_capture: Any) -> None:
    base = network.kokuhoren.url
    status, health, _ = await get(http, base + "/health")
    assert status == 200 and health["status"] == "ok" and health["service"] == "kokuhoren"
    status, ready, _ = await get(http, base + "/ready")
    assert status == 200, ready
    assert set(ready["checks"]) == {"database", "keys"}
    assert ready["checks"]["keys"] == {
        "ok": True,
        "signing_key": ready["checks"]["keys"]["signing_key"],
    }
    status, text, _ = await get(http, base + "/metrics")
    assert status == 200
    assert (
        samples(text, "chukan_http_requests_total")['{route="/ready",method="GET",status="200"}']
        >= 1
    )
    assert "# TYPE chukan_kokuhoren_received_files gauge" in text
    assert any(
        e.get("server") == "kokuhoren" and e.get("route") == "/health"
        for e in log_capture.named("http_request")
    )


async def test_kokuhoren_not_ready_when_its_keys_are_exposed(network: Any, http: Any) -> None:
    key_file = network.kokuhoren_config.key_dir / "kokuhoren.sig.pem"
    mode = key_file.stat().st_mode
    key_file.chmod(0o644)
    try:
        status, ready, _ = await get(http, network.kokuhoren.url + "/ready")
    finally:
        key_file.chmod(mode)
    assert status == 503 and ready["status"] == "not_ready"
    assert ready["checks"]["keys"] == {"ok": False, "reason": "a key file is readable by others"}
    assert (await get(http, network.kokuhoren.url + "/ready"))[0] == 200


async def test_well_formed_request_id_is_kept_others_replaced(chiba: Any, log_capture: Any) -> None:
    mine = "core-" + secrets.token_hex(8)
    for sent, kept in ((mine, True), ("bad id; <script>", False), ("x" * 101, False)):
        async with chiba.session.get(
            chiba.gateway.url + "/health", headers={REQUEST_ID_HEADER: sent}
        ) as response:
            echoed = response.headers[REQUEST_ID_HEADER]
        assert (echoed == sent) is kept
        if not kept:
            assert len(echoed) == 32 and echoed.isalnum()
        events = [e for e in log_capture.named("http_request") if e["request_id"] == echoed]
        assert len(events) == 1 and events[0]["route"] == "/health"
        assert events[0]["server"] == f"gateway:{catalog.CHIBA_CITY}"


async def test_one_request_id_from_core_system_to_provider(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, log_capture: Any
) -> None:
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(here.atena_id, catalog.CERTIFICATION.code, item))[0] == 201

    request_id = "kaigo-" + secrets.token_hex(12)
    status, submitted = await funabashi.call(
        "POST",
        "/internal/v1/queries",
        json={
            "atena_id": there.atena_id,
            "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
            "item_code": catalog.CERTIFICATION.code,
            "provider": catalog.CHIBA_CITY,
        },
        headers={REQUEST_ID_HEADER: request_id},
    )
    assert status == 202, submitted
    query_id = submitted["query_id"]
    assert (await funabashi.result(query_id))["status"] == "answered"

    # The records of all three: the same id, beside (not inside) the chained content.
    requester = await funabashi.gateway.state.pool.fetchrow(
        "SELECT role, request_id FROM provision_records WHERE query_id = $1", query_id
    )
    provider = await chiba.gateway.state.pool.fetchrow(
        "SELECT role, request_id FROM provision_records WHERE query_id = $1", query_id
    )
    hub_pool = network.hub.app[HUB_STATE].pool
    hub = await hub_pool.fetchrow(
        "SELECT request_id FROM hub_records WHERE query_id = $1", query_id
    )
    assert requester["role"] == "requester" and requester["request_id"] == request_id
    assert provider["role"] == "provider" and provider["request_id"] == request_id
    assert hub["request_id"] == request_id
    # Every event the hub recorded and every delivery it made for the query carry it.
    events = await hub_pool.fetch(
        "SELECT kind, request_id FROM hub_record_events WHERE query_id = $1", query_id
    )
    assert {e["kind"] for e in events} == {"opened", "concluded"}
    assert all(e["request_id"] == request_id for e in events)
    deliveries = await hub_pool.fetch(
        "SELECT kind, request_id FROM deliveries WHERE query_id = $1", query_id
    )
    assert {d["kind"] for d in deliveries} == {"provision_request", "answer"}
    assert all(d["request_id"] == request_id for d in deliveries)
    # The records API shows it too.
    status, listed = await funabashi.call("GET", f"/internal/v1/records?query_id={query_id}")
    assert status == 200 and listed["records"][0]["request_id"] == request_id

    # The access log of all three servers: the submission, the hub's door (the query
    # in, the answer back), the provider's door, the requester's door (the answer).
    mine = [e for e in log_capture.named("http_request") if e["request_id"] == request_id]
    seen = {(e["server"], e["method"], e["route"], e["status"]) for e in mine}
    requester_name = f"gateway:{catalog.FUNABASHI_CITY}"
    provider_name = f"gateway:{catalog.CHIBA_CITY}"
    assert (requester_name, "POST", "/internal/v1/queries", 202) in seen
    assert ("hub", "POST", "/network/v1/messages", 202) in seen
    assert (provider_name, "POST", "/network/v1/messages", 200) in seen
    assert (requester_name, "POST", "/network/v1/messages", 200) in seen
    submission = next(e for e in mine if e["route"] == "/internal/v1/queries")
    assert submission["caller"] == CORE_SYSTEM  # the core system its certificate names
    hub_door = next(e for e in mine if e["server"] == "hub")
    assert hub_door["caller"] == f"agency:{catalog.FUNABASHI_CITY}"
    # Bound to every event logged while handling it, on every hop.
    named = {e["event"] for e in log_capture.events() if e.get("request_id") == request_id}
    assert {"query_submitted", "permit_issued", "provision_answered"} <= named
    # Never a 個人番号 or a body.
    text = log_capture.getvalue()
    assert here.individual_number not in text
    assert item.decode() not in text
