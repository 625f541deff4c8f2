"""Distribution of the authorization list: published by the hub, verified and kept by gateways.

Every test leaves the network with the sample list in force (a newer version of
it), because the other modules' tests rely on its rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import random
from importlib import resources
from typing import Any

import asyncpg
import pytest

from chukan.codecs import catalog
from chukan.codecs.envelope import (
    HUB,
    Header,
    ProvisionRequest,
    QueryRequest,
    encode_message,
    new_message_id,
)
from chukan.gateway.core.config import Timing
from chukan.gateway.core.state import utcnow
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.keys import generate_signing_key
from chukan.permits import (
    AuthorizationList,
    list_to_xml,
    load_sample_list,
    sign_list,
    verify_signed_list,
)
from chukan.simulators.devnet.network import OPERATOR_SYSTEM
from chukan.simulators.devnet.synthetic import synthetic_individual_number, synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

SAMPLE_CSV = resources.files("chukan.permits").joinpath("data/authorization_list.csv").read_bytes()
SAMPLE_ROWS = SAMPLE_CSV.count(b"\n") - 1  # without the header
# 千葉市 may ask 船橋市 for 給付情報 only while this row is published.
EXTRA_ROW = (
    "121002,122041,JM00000000000132,JT00013200000001,TM00000000010300,132,2017-11-13,,"
    "千葉市長（照会）：試験用の追加行\n"
)


async def publish(
    network: Any,
    http: Any,
    data: bytes,
    content_type: str = "text/csv",
    *,
    lifetime: int | None = None,
    ssl: Any = None,
    token: str | None = None,
) -> tuple[int, Any]:
    query = "" if lifetime is None else f"?lifetime_seconds={lifetime}"
    async with http.post(
        network.hub.url + "/admin/v1/authorization-list" + query,
        data=data,
        headers={
            "Content-Type": content_type,
            "Authorization": f"Bearer {token or network.hub_config.admin_token}",
        },
        ssl=ssl or network.hub_operator_ssl(),
    ) as response:
        return response.status, await response.json()


async def push(network: Any, http: Any, gateway: Any, signed: bytes) -> tuple[int, Any]:
    """Deliver a signed document to a gateway as the hub does (the hub's certificate)."""
    async with http.post(
        gateway.url + "/network/v1/authorization-list",
        data=signed,
        headers={"Content-Type": "application/xml"},
        ssl=network.hub_client_ssl(),
    ) as response:
        return response.status, await response.json()


def hub_signed(network: Any, lst: AuthorizationList) -> bytes:
    return sign_list(lst, network.hub.app[HUB_STATE].keys.signing)


def current(gateway: Any) -> AuthorizationList:
    lst = gateway.state.authorization_list
    assert isinstance(lst, AuthorizationList)
    return lst


async def restore_sample(network: Any, http: Any) -> int:
    status, body = await publish(network, http, SAMPLE_CSV)
    assert status == 201, body
    version: int = body["version"]
    for gateway in network.gateways.values():
        assert current(gateway).version == version
    return version


async def as_hub_provision_request(network: Any, http: Any, gateway: Any) -> tuple[int, Any]:
    hub = network.hub.app[HUB_STATE]
    requester = network.gateways[catalog.FUNABASHI_CITY].state.keys.encryption.public
    body = ProvisionRequest(
        query_id=new_message_id(),
        requester=catalog.FUNABASHI_CITY,
        provider_person_code="NoSuchPersonCode0001",
        business_code=catalog.LTC_BUSINESS,
        procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
        item_code=catalog.CERTIFICATION.code,
        legal_basis=132,
        requester_key_id=requester.key_id,
        requester_key=requester.raw,
    )
    header = Header(new_message_id(), "ProvisionRequest", HUB, gateway.config.agency_code, utcnow())
    message = encode_message(header, body)
    async with http.post(
        gateway.url + "/network/v1/messages",
        data=message,
        headers={
            "Content-Type": "application/xml",
            SIGNATURE_HEADER: signature_header(hub.keys.signing, message),
        },
        ssl=network.hub_client_ssl(),
    ) as response:
        return response.status, await response.json()


async def query_status(api: Any, atena_id: str, item_code: str) -> tuple[int, Any]:
    status, body = await api.query(
        atena_id, catalog.LTC_CERTIFICATION_PROCEDURE, item_code, catalog.FUNABASHI_CITY
    )
    return int(status), body


async def test_gateways_hold_the_sample_list_and_keep_its_history(chiba: Any) -> None:
    gateway = chiba.gateway
    lst = current(gateway)
    sample = load_sample_list(issued_at=lst.issued_at, expires_at=lst.expires_at)
    assert lst.rows == sample.rows
    assert len({row.legal_basis for row in lst.rows_for_provider(catalog.CHIBA_CITY)}) == 27
    assert {row.legal_basis for row in lst.rows_for_requester(catalog.CHIBA_CITY)} == {131, 132}
    row = await gateway.state.pool.fetchrow(
        "SELECT * FROM authorization_lists WHERE version = $1", lst.version
    )
    assert row["digest"] == hashlib.sha256(row["signed_document"]).hexdigest()
    assert row["row_count"] == len(sample.rows)
    assert row["issued_at"] == lst.issued_at and row["expires_at"] == lst.expires_at
    assert row["received_at"] is not None
    trusted = gateway.state.hub.trusted_hub
    again = verify_signed_list(row["signed_document"], trusted, now=dt.datetime.now(dt.UTC))
    assert again.rows == lst.rows
    # The history is append-only for the gateway's own database login.
    for statement in (
        "DELETE FROM authorization_lists",
        "UPDATE authorization_lists SET digest = ''",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await gateway.state.pool.execute(statement)


async def test_a_published_version_takes_effect_without_a_restart(
    network: Any, http: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "2")
    elsewhere = synthetic_person(rng, "2")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    assert (await funabashi.register(elsewhere.atena_id, person.individual_number))[0] == 201
    status, body = await query_status(chiba, person.atena_id, catalog.BENEFIT.code)
    assert (status, body["error"]["code"]) == (403, "not_authorized")

    before = current(chiba.gateway).version
    status, body = await publish(network, http, SAMPLE_CSV + EXTRA_ROW.encode())
    assert status == 201, body
    assert body["version"] == before + 1 and body["rows"] == SAMPLE_ROWS + 1
    assert body["pushed"][catalog.CHIBA_CITY] == "accepted"
    assert body["pushed"][catalog.FUNABASHI_CITY] == "accepted"
    for api in (chiba, funabashi):  # pushed: in force at once on both sides
        assert current(api.gateway).version == before + 1
    status, health = await chiba.call("GET", "/health")
    assert health["authorization_list"]["version"] == before + 1
    assert health["authorization_list"]["available"] is True

    # Now the query leaves 千葉市 and 船橋市 (whose copy has the row too) answers it.
    status, submitted = await query_status(chiba, person.atena_id, catalog.BENEFIT.code)
    assert status == 202, submitted
    result = await chiba.result(submitted["query_id"])
    assert result["reason_code"] == "item_not_found"  # the provider's own list check passed

    version = await restore_sample(network, http)
    assert version == before + 2
    status, body = await query_status(chiba, person.atena_id, catalog.BENEFIT.code)
    assert (status, body["error"]["code"]) == (403, "not_authorized")
    versions = [
        r["version"]
        for r in await chiba.gateway.state.pool.fetch(
            "SELECT version FROM authorization_lists ORDER BY version"
        )
    ]
    assert versions[-3:] == [before, before + 1, before + 2]


async def test_a_list_can_be_published_as_xml(network: Any, http: Any, chiba: Any) -> None:
    lst = current(chiba.gateway)
    status, body = await publish(network, http, list_to_xml(lst), "application/xml")
    assert status == 201, body
    assert body["version"] == lst.version + 1
    assert current(chiba.gateway).rows == lst.rows


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (SAMPLE_CSV.replace(b"TM00000000010300", b"TM1", 1), "row 1, field item_code"),
        (b"requester,provider\n", "header row"),
        (b"\xff\xfe", "UTF-8"),
    ],
    ids=["bad-item-code", "bad-header", "not-utf8"],
)
async def test_a_bad_list_is_refused_naming_row_and_field_and_nothing_is_published(
    network: Any, http: Any, chiba: Any, data: bytes, where: str
) -> None:
    version = current(chiba.gateway).version
    status, body = await publish(network, http, data)
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    assert where in body["error"]["message"]
    assert network.hub.app[HUB_STATE].authorization_list.version == version
    assert current(chiba.gateway).version == version


async def test_only_the_operator_with_the_token_publishes(
    network: Any, http: Any, chiba: Any
) -> None:
    agency = network.agency_client_ssl(catalog.CHIBA_CITY)
    status, body = await publish(network, http, SAMPLE_CSV, ssl=agency)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await publish(network, http, SAMPLE_CSV, token="wrong")
    assert status == 403
    status, body = await publish(network, http, SAMPLE_CSV, content_type="text/plain")
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


async def test_an_older_version_is_refused(network: Any, http: Any, chiba: Any) -> None:
    """Rollback: even correctly signed by the hub, an older version never replaces a newer."""
    lst = current(chiba.gateway)
    older = dataclasses.replace(lst, version=lst.version - 1)
    status, body = await push(network, http, chiba.gateway, hub_signed(network, older))
    assert (status, body["error"]["code"]) == (409, "authorization_list_rollback")
    assert current(chiba.gateway).version == lst.version
    status, health = await chiba.call("GET", "/health")
    assert health["authorization_list"]["last_error"] == "authorization_list_rollback"
    assert health["authorization_list"]["available"] is True


async def test_the_same_version_with_other_content_is_refused(
    network: Any, http: Any, chiba: Any
) -> None:
    lst = current(chiba.gateway)
    other = dataclasses.replace(lst, rows=lst.rows[:-1])
    status, body = await push(network, http, chiba.gateway, hub_signed(network, other))
    assert (status, body["error"]["code"]) == (409, "authorization_list_conflict")
    assert current(chiba.gateway).rows == lst.rows
    # The very document in force again is simply "unchanged".
    signed = await chiba.gateway.state.pool.fetchval(
        "SELECT signed_document FROM authorization_lists WHERE version = $1", lst.version
    )
    assert await push(network, http, chiba.gateway, signed) == (
        200,
        {"version": lst.version, "outcome": "unchanged"},
    )


async def test_unsigned_forged_and_tampered_lists_are_refused(
    network: Any, http: Any, chiba: Any
) -> None:
    lst = current(chiba.gateway)
    newer = dataclasses.replace(lst, version=lst.version + 50)
    hub_key_id = network.hub.app[HUB_STATE].keys.signing.key_id
    forger = dataclasses.replace(generate_signing_key("hub"), key_id=hub_key_id)
    genuine = hub_signed(network, newer)
    tampered = genuine.replace(genuine.split(b"<List>")[1][:8], b"AAAAAAAA", 1)
    for document in (list_to_xml(newer), sign_list(newer, forger), tampered):
        status, body = await push(network, http, chiba.gateway, document)
        assert (status, body["error"]["code"]) == (403, "authorization_list_signature"), body
    assert current(chiba.gateway).version == lst.version
    stored = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM authorization_lists WHERE version > $1", lst.version
    )
    assert stored == 0


async def test_an_expired_list_is_refused_on_receipt(network: Any, http: Any, chiba: Any) -> None:
    lst = current(chiba.gateway)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    stale = dataclasses.replace(
        lst, version=lst.version + 60, issued_at=past, expires_at=past + dt.timedelta(days=1)
    )
    status, body = await push(network, http, chiba.gateway, hub_signed(network, stale))
    assert (status, body["error"]["code"]) == (403, "authorization_list_expired")
    assert current(chiba.gateway).version == lst.version


async def test_when_the_list_expires_nothing_is_sent_or_answered(
    network: Any, http: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "3")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    status, body = await publish(network, http, SAMPLE_CSV, lifetime=1)
    assert status == 201, body
    try:
        for _ in range(200):  # the gateway's own clock says when its list has expired
            _, health = await chiba.call("GET", "/health")
            if health["authorization_list"].get("reason") == "authorization_list_expired":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the one-second list never expired: {health}")
        status, error = await chiba.query(
            person.atena_id,
            catalog.LTC_PREMIUM_PROCEDURE,
            catalog.LOCAL_TAX_INCOME.code,
            catalog.FUNABASHI_CITY,
        )
        assert status == 503
        assert error["error"]["code"] == "authorization_list_unavailable"
        assert error["error"]["details"]["reason"] == "authorization_list_expired"
        status, health = await chiba.call("GET", "/health")
        assert health["status"] == "degraded"
        assert health["authorization_list"]["reason"] == "authorization_list_expired"
        # The hub refuses too, for a gateway that would skip its own check.
        state = chiba.gateway.state
        code = await state.pool.fetchval(
            "SELECT person_code FROM persons WHERE atena_id = $1", person.atena_id
        )
        reply = await state.hub.send(
            QueryRequest(
                query_id="expired-" + synthetic_individual_number(rng),
                requester_person_code=code,
                provider=catalog.FUNABASHI_CITY,
                business_code=catalog.LTC_BUSINESS,
                procedure_code=catalog.LTC_PREMIUM_PROCEDURE,
                item_code=catalog.LOCAL_TAX_INCOME.code,
            )
        )
        assert reply.status == 503
        assert reply.error()[0] == "authorization_list_unavailable"
        # And a provider answers nothing, before even looking at the permit.
        status, error = await as_hub_provision_request(network, http, chiba.gateway)
        assert status == 503
        assert error["error"]["details"]["reason"] == "authorization_list_expired"
    finally:
        await restore_sample(network, http)
    status, _ = await chiba.query(
        person.atena_id,
        catalog.LTC_PREMIUM_PROCEDURE,
        catalog.LOCAL_TAX_INCOME.code,
        catalog.FUNABASHI_CITY,
    )
    assert status == 202


async def test_a_gateway_that_cannot_verify_the_list_refuses_to_query(
    network: Any, api: Any, rng: random.Random
) -> None:
    """A wrong pinned hub key: every list fails its signature check, so none is ever in force."""
    gateway = await network.add_gateway(
        "122076", "松戸市", hub_key=generate_signing_key("hub").public
    )
    try:
        matsudo = api(gateway)
        status, health = await matsudo.call("GET", "/health")
        assert health["status"] == "degraded"
        assert health["authorization_list"]["available"] is False
        assert health["authorization_list"]["reason"] == "authorization_list_signature"
        # It cannot even register people (the hub's answers do not verify either): put
        # one in its table directly so that the query reaches the list check.
        person = synthetic_person(rng, "4")
        await gateway.state.pool.execute(
            "INSERT INTO persons (atena_id, person_code) VALUES ($1, 'code-of-test-person')",
            person.atena_id,
        )
        status, error = await matsudo.query(
            person.atena_id,
            catalog.LTC_CERTIFICATION_PROCEDURE,
            catalog.CERTIFICATION.code,
            catalog.CHIBA_CITY,
        )
        assert status == 503
        assert error["error"]["details"]["reason"] == "authorization_list_signature"
        assert await gateway.state.pool.fetchval("SELECT count(*) FROM authorization_lists") == 0
    finally:
        await gateway.server.stop()
        del network.gateways["122076"]


async def test_a_restart_restores_the_stored_list(
    network: Any, chiba: Any, log_capture: Any
) -> None:
    version = current(chiba.gateway).version
    restored = len(log_capture.named("authorization_list_restored"))
    await network.restart_gateway(catalog.CHIBA_CITY)
    assert current(chiba.gateway).version == version
    assert len(log_capture.named("authorization_list_restored")) == restored + 1
    _, health = await chiba.call("GET", "/health")
    assert health["authorization_list"]["available"] is True


async def test_operators_refresh_on_demand_and_read_the_status(chiba: Any) -> None:
    status, body = await chiba.call(
        "POST", "/internal/v1/authorization-list/refresh", system=OPERATOR_SYSTEM
    )
    assert status == 200, body
    assert body["outcome"] == "unchanged"
    assert body["status"]["available"] is True
    status, body = await chiba.call("POST", "/internal/v1/authorization-list/refresh")
    assert (status, body["error"]["code"]) == (403, "forbidden")  # the core system may not

    status, body = await chiba.call("GET", "/internal/v1/status", system=OPERATOR_SYSTEM)
    assert status == 200, body
    history = body["authorization_list"]["history"]
    assert history[0]["version"] == body["authorization_list"]["version"]
    assert [h["version"] for h in history] == sorted((h["version"] for h in history), reverse=True)
    assert body["tls"] is True
    assert body["keys"]["signing_key"].startswith(f"{catalog.CHIBA_CITY}.sig.")
    text = str(body)
    assert "PRIVATE" not in text and "signed_document" not in text


async def test_the_refresh_loop_picks_up_a_new_version(network: Any, http: Any, chiba: Any) -> None:
    """Without a push (an agency unreachable at publication), the periodic refresh catches up."""
    gateway = await network.add_gateway("122165", "習志野市", timing=Timing(list_refresh=0.2))
    try:
        version = current(gateway).version
        hub = network.hub.app[HUB_STATE]
        from chukan.simulators.hub.lists import publish as hub_publish

        lst, signed = await hub_publish(
            hub.pool,
            hub.keys.signing,
            current(chiba.gateway).rows,
            lifetime=dt.timedelta(days=1),
            published_by="test without push",
        )
        hub.authorization_list, hub.signed_list = lst, signed
        for _ in range(50):
            if current(gateway).version == lst.version:
                break
            await asyncio.sleep(0.1)
        assert current(gateway).version == lst.version > version
    finally:
        await gateway.server.stop()
        del network.gateways["122165"]
    await restore_sample(network, http)
