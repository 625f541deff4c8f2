"""Mutual TLS: who may call whom, and every refusal (401 / 403 / handshake) with its record."""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Any

import aiohttp
import pytest

from chukan.codecs import catalog
from chukan.codecs.envelope import CodeRequest
from chukan.gateway.core.config import OP_READ_QUERY, OP_READ_RECORDS, OP_REGISTER_PERSON
from chukan.gateway.core.identities import HUB_IDENTITY, system_identity
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.keys.ca import CertificateAuthority, ClientIdentity
from chukan.keys.tls import client_context
from chukan.simulators.devnet.network import CORE_SYSTEM, REPORTING_SYSTEM

pytestmark = pytest.mark.integration

PERSON = {"atena_id": "1", "individual_number": "123456789018"}


RefusalMark = tuple[dt.datetime, dict[int, int]]


async def _refusals(gateway: Any, mark: RefusalMark) -> list[tuple[str | None, str, int, str]]:
    """The refusals recorded since ``mark``, one per refusal, in order.  A refusal is
    counted in the row of its caller, address, operation, code and minute, which an
    earlier test may have opened: what changed is the rows' counts, not new ids."""
    since, counts = mark
    rows = await gateway.state.pool.fetch(
        "SELECT id, caller, operation, status, code, count FROM access_refusals "
        "WHERE last_at >= $1 ORDER BY last_at, id",
        since,
    )
    return [
        (r["caller"], r["operation"], r["status"], r["code"])
        for r in rows
        for _ in range(r["count"] - counts.get(r["id"], 0))
    ]


async def _refusal_mark(gateway: Any) -> RefusalMark:
    since = await gateway.state.pool.fetchval("SELECT clock_timestamp()")
    rows = await gateway.state.pool.fetch(
        "SELECT id, count FROM access_refusals "
        "WHERE last_at >= $1::timestamptz - interval '2 minutes'",
        since,
    )
    return since, {r["id"]: r["count"] for r in rows}


@pytest.fixture(scope="module")
def foreign_ca_context(network: Any) -> ssl.SSLContext:
    """A client certificate from another CA (same identity shape), trusting our server."""
    now = dt.datetime.now(dt.UTC)
    other = CertificateAuthority.create("another CA", now=now, lifetime=dt.timedelta(days=1))
    issued = other.issue_client(
        system_identity(catalog.CHIBA_CITY, CORE_SYSTEM, {OP_READ_RECORDS}),
        now=now,
        lifetime=dt.timedelta(hours=1),
    )
    return client_context(network.pki.ca_pem, issued.certificate_pem, issued.private_key_pem)


async def test_the_network_speaks_tls_only(network: Any, chiba: Any) -> None:
    assert network.hub.url.startswith("https://")
    assert all(g.url.startswith("https://") for g in network.gateways.values())
    status, body = await chiba.call("GET", "/internal/v1/records")
    assert status == 200 and "records" in body


async def test_no_certificate_and_no_token_is_401_and_recorded(http: Any, chiba: Any) -> None:
    gateway = chiba.gateway
    before = await _refusal_mark(gateway)
    async with http.post(gateway.url + "/internal/v1/persons", json=PERSON) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    assert await _refusals(gateway, before) == [(None, OP_REGISTER_PERSON, 401, "unauthenticated")]


async def test_certificate_without_the_operation_is_403_and_recorded_with_identity(
    chiba: Any,
) -> None:
    """The reporting system may read records only."""
    gateway = chiba.gateway
    before = await _refusal_mark(gateway)
    status, body = await chiba.call(
        "POST", "/internal/v1/persons", json=PERSON, system=REPORTING_SYSTEM
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _ = await chiba.call("GET", "/internal/v1/records", system=REPORTING_SYSTEM)
    assert status == 200
    label = f"system:{catalog.CHIBA_CITY}.{REPORTING_SYSTEM}"
    assert await _refusals(gateway, before) == [(label, OP_REGISTER_PERSON, 403, "forbidden")]


async def test_certificate_roles_narrow_what_the_configuration_grants(
    network: Any, chiba: Any
) -> None:
    """A 介護保険システム certificate issued only for reading queries cannot register people."""
    narrow = network.pki.client_context(
        system_identity(catalog.CHIBA_CITY, CORE_SYSTEM, {OP_READ_QUERY})
    )
    status, body = await chiba.call("POST", "/internal/v1/persons", json=PERSON, ssl=narrow)
    assert (status, body["error"]["code"]) == (403, "forbidden")


@pytest.mark.parametrize(
    "identity",
    [
        # Another agency's core system, although it has the same system id and every role.
        system_identity(catalog.FUNABASHI_CITY, CORE_SYSTEM, {OP_REGISTER_PERSON}),
        # A system certificate without an agency prefix.
        ClientIdentity("system", CORE_SYSTEM, (OP_REGISTER_PERSON,)),
        # A system not configured at this gateway.
        system_identity(catalog.CHIBA_CITY, "unknown-system", {OP_REGISTER_PERSON}),
        # Peers of the network are not core systems.
        HUB_IDENTITY,
        ClientIdentity("agency", catalog.CHIBA_CITY),
    ],
    ids=["other-agency", "no-agency", "unconfigured", "hub", "agency"],
)
async def test_certificates_that_are_not_this_agencys_core_systems_get_403(
    network: Any, chiba: Any, identity: ClientIdentity
) -> None:
    gateway = chiba.gateway
    before = await _refusal_mark(gateway)
    context = network.pki.client_context(identity)
    status, body = await chiba.call("POST", "/internal/v1/persons", json=PERSON, ssl=context)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    label = f"{identity.kind}:{identity.subject_id}"
    assert await _refusals(gateway, before) == [(label, OP_REGISTER_PERSON, 403, "forbidden")]


async def test_a_certificate_decides_even_beside_a_valid_token(chiba: Any) -> None:
    status, _ = await chiba.call(
        "POST",
        "/internal/v1/persons",
        json=PERSON,
        system=REPORTING_SYSTEM,
        headers={"Authorization": f"Bearer {chiba.gateway.token}"},
    )
    assert status == 403


async def test_a_configured_bearer_token_works_without_a_certificate(chiba: Any) -> None:
    status, body = await chiba.call("GET", "/internal/v1/records", token=chiba.gateway.token)
    assert status == 200 and "records" in body
    status, body = await chiba.call("GET", "/internal/v1/records", token="not-a-token")
    assert (status, body["error"]["code"]) == (401, "unauthenticated")


async def test_a_certificate_from_another_ca_fails_the_handshake(
    http: Any, network: Any, chiba: Any, foreign_ca_context: ssl.SSLContext
) -> None:
    for url in (
        chiba.gateway.url + "/internal/v1/records",
        network.hub.url + "/network/v1/agencies",
    ):
        with pytest.raises(aiohttp.ClientError):
            async with http.get(url, ssl=foreign_ca_context) as response:
                await response.read()


async def test_clients_verify_the_server_certificate(chiba: Any) -> None:
    """A client trusting another CA refuses our servers (no silent downgrade)."""
    now = dt.datetime.now(dt.UTC)
    other = CertificateAuthority.create("another CA", now=now, lifetime=dt.timedelta(days=1))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(
                chiba.gateway.url + "/health", ssl=client_context(other.certificate_pem)
            ) as response:
                await response.read()


async def test_plain_http_to_a_tls_port_gets_nothing(chiba: Any) -> None:
    plain = chiba.gateway.url.replace("https://", "http://") + "/health"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain) as response:
                await response.read()


async def test_only_the_hub_may_call_the_network_api(http: Any, network: Any, chiba: Any) -> None:
    gateway = chiba.gateway
    url = gateway.url + "/network/v1/messages"
    xml = {"Content-Type": "application/xml"}
    before = await _refusal_mark(gateway)
    async with http.post(url, data=b"<x/>", headers=xml) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    peer = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    async with http.post(url, data=b"<x/>", headers=xml, ssl=peer) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    async with http.post(
        url, data=b"<x/>", headers=xml, ssl=gateway.client_ssl(CORE_SYSTEM)
    ) as response:
        assert response.status == 403
    assert await _refusals(gateway, before) == [
        (None, "network", 401, "unauthenticated"),
        (f"agency:{catalog.FUNABASHI_CITY}", "network", 403, "forbidden"),
        (f"system:{catalog.CHIBA_CITY}.{CORE_SYSTEM}", "network", 403, "forbidden"),
    ]
    # The hub's certificate gets through to the message checks.
    async with http.post(url, data=b"<x/>", headers=xml, ssl=network.hub_client_ssl()) as r:
        assert r.status == 400


async def test_the_hub_needs_an_agency_or_operator_certificate(
    http: Any, network: Any, chiba: Any
) -> None:
    url = network.hub.url + "/network/v1/agencies"
    async with http.get(url) as response:
        assert response.status == 401
    async with http.get(url, ssl=chiba.gateway.client_ssl(CORE_SYSTEM)) as response:
        assert response.status == 403
    async with http.get(url, ssl=network.hub_client_ssl()) as response:
        assert response.status == 403  # the hub's own client identity is not a caller of the hub
    async with http.get(url, ssl=network.agency_client_ssl(catalog.CHIBA_CITY)) as response:
        assert response.status == 200
        codes = {a["code"] for a in (await response.json())["agencies"]}
        assert {catalog.CHIBA_CITY, catalog.FUNABASHI_CITY} <= codes


async def test_the_hub_checks_the_sender_against_the_certificate(
    http: Any, network: Any, chiba: Any
) -> None:
    """千葉市's validly signed envelope, sent over 船橋市's connection, is refused."""
    state = chiba.gateway.state
    message = state.hub.envelope(CodeRequest("no-such-acquisition-number"))
    headers = {
        "Content-Type": "application/xml",
        SIGNATURE_HEADER: signature_header(state.keys.signing, message),
    }
    async with http.post(
        network.hub.url + "/network/v1/messages",
        data=message,
        headers=headers,
        ssl=network.agency_client_ssl(catalog.FUNABASHI_CITY),
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "peer_mismatch"


async def test_an_agency_enrols_only_itself(http: Any, network: Any, chiba: Any) -> None:
    state = chiba.gateway.state
    from chukan.gateway.core.keyring import enrolment_payload
    from chukan.gateway.core.state import utcnow

    payload = enrolment_payload(state.config, state.endpoint, state.ring, utcnow())
    admin = {"Authorization": f"Bearer {state.config.enrolment_token}"}  # 千葉市's own
    url = network.hub.url + "/admin/v1/agencies"
    async with http.post(
        url, json=payload, headers=admin, ssl=network.agency_client_ssl(catalog.FUNABASHI_CITY)
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "peer_mismatch"
    own = network.agency_client_ssl(catalog.CHIBA_CITY)
    plain_endpoint = {**payload, "endpoint": state.endpoint.replace("https://", "http://")}
    async with http.post(url, json=plain_endpoint, headers=admin, ssl=own) as response:
        assert response.status == 403
    async with http.post(url, json=payload, headers=admin, ssl=own) as response:
        assert response.status == 201


async def test_key_ids_must_be_derived_from_the_key(http: Any, network: Any, chiba: Any) -> None:
    state = chiba.gateway.state
    from chukan.gateway.core.keyring import enrolment_payload
    from chukan.gateway.core.state import utcnow

    payload = enrolment_payload(state.config, state.endpoint, state.ring, utcnow())
    payload["signing_key"] = {**payload["signing_key"], "key_id": f"{catalog.CHIBA_CITY}.sig.x"}
    async with http.post(
        network.hub.url + "/admin/v1/agencies",
        json=payload,
        headers={"Authorization": f"Bearer {state.config.enrolment_token}"},
        ssl=network.agency_client_ssl(catalog.CHIBA_CITY),
    ) as response:
        assert response.status == 422


async def test_only_the_operator_reads_hub_records(http: Any, network: Any) -> None:
    url = network.hub.url + "/admin/v1/records"
    admin = {"Authorization": f"Bearer {network.hub_config.admin_token}"}
    agency = network.agency_client_ssl(catalog.CHIBA_CITY)
    async with http.get(url, headers=admin, ssl=agency) as response:
        assert response.status == 403
    async with http.get(url, ssl=network.hub_operator_ssl()) as response:
        assert response.status == 401  # the certificate alone is not enough
    async with http.get(url, headers=admin, ssl=network.hub_operator_ssl()) as response:
        assert response.status == 200


async def test_the_hub_calls_an_agency_only_at_a_server_holding_that_agencys_name(
    network: Any, chiba: Any
) -> None:
    """The hub checks the server's identity, not just the CA: a registry endpoint that
    points at another agency's gateway fails in the TLS handshake, before sending."""
    from chukan.gateway.core.identities import agency_host
    from chukan.simulators.hub import HUB_STATE

    session = network.hub.app[HUB_STATE].session
    url = chiba.gateway.url + "/health"
    async with session.get(url, server_hostname=agency_host(catalog.CHIBA_CITY)) as response:
        assert response.status == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with session.get(url, server_hostname=agency_host(catalog.FUNABASHI_CITY)):
            pass
