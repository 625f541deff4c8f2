"""Separate credentials: each agency enrols with its own token and opens its ring with its own
passphrase; the hub's admin token and its 個人番号 HMAC key are the hub's alone."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.errors import EnrolmentRefusedError
from chukan.gateway.core.keyring import enrolment_payload
from chukan.gateway.core.state import utcnow
from chukan.gateway.serve import serve, start_gateway
from chukan.keys.secretfile import open_secret, seal_secret
from chukan.simulators.devnet.network import AgencyCredentials
from chukan.simulators.errors import HubSecretError, HubSecretExposedError
from chukan.simulators.hub import HUB_STATE, create_hub_app
from chukan.simulators.hub.state import HMAC_KEY_FILE, HMAC_KEY_PURPOSE

pytestmark = pytest.mark.integration

#: An agency only these tests onboard (its gateway is stopped again at their end).
KAMAGAYA = "122246"
AGENCIES = "/admin/v1/agencies"


def token_url(network: Any, code: str) -> str:
    return f"{network.hub.url}{AGENCIES}/{code}/enrolment-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def enrol(
    http: Any, network: Any, code: str, token: str | None, *, ssl: Any
) -> tuple[int, Any]:
    """``POST /admin/v1/agencies`` with agency ``code``'s current keys, as its gateway enrols."""
    state = network.gateways[code].state
    async with http.post(
        network.hub.url + AGENCIES,
        json=enrolment_payload(state.config, state.endpoint, state.ring, utcnow()),
        headers={} if token is None else bearer(token),
        ssl=ssl,
    ) as response:
        return response.status, await response.json()


async def events(network: Any, code: str, after: int = 0) -> list[tuple[str, str | None]]:
    rows = await network.hub.app[HUB_STATE].pool.fetch(
        "SELECT kind, reason_code FROM enrolment_events WHERE agency_code = $1 AND id > $2 "
        "ORDER BY id",
        code,
        after,
    )
    return [(r["kind"], r["reason_code"]) for r in rows]


async def last_event_id(network: Any) -> int:
    pool = network.hub.app[HUB_STATE].pool
    return int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM enrolment_events"))


# -- enrolment tokens ------------------------------------------------------------------------


async def test_an_agency_enrols_with_its_own_token_and_the_hub_keeps_only_its_digest(
    http: Any, network: Any, chiba: Any, log_capture: Any
) -> None:
    token = chiba.gateway.config.enrolment_token
    after = await last_event_id(network)
    status, body = await enrol(
        http, network, catalog.CHIBA_CITY, token, ssl=network.agency_client_ssl(catalog.CHIBA_CITY)
    )
    assert status == 201, body
    assert await events(network, catalog.CHIBA_CITY, after) == [("enrolled", None)]
    assert any(
        e.get("agency") == catalog.CHIBA_CITY for e in log_capture.named("hub_agency_enrolled")
    )
    pool = network.hub.app[HUB_STATE].pool
    rows = await pool.fetch(
        "SELECT token_digest FROM enrolment_tokens WHERE agency_code = $1 AND revoked_at IS NULL",
        catalog.CHIBA_CITY,
    )
    assert [bytes(r["token_digest"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    dump = "".join(str(dict(r)) for r in await pool.fetch("SELECT * FROM enrolment_tokens"))
    assert token not in dump
    # The operator sees when it was last used, never the token.
    async with http.get(
        token_url(network, catalog.CHIBA_CITY),
        headers=bearer(network.hub_config.admin_token),
        ssl=network.hub_operator_ssl(),
    ) as response:
        assert response.status == 200
        status_body = await response.json()
    assert status_body["token"]["last_used_at"] is not None
    assert token not in str(status_body)
    assert status_body["events"][-1]["kind"] == "enrolled"


async def test_the_admin_token_no_longer_enrols(http: Any, network: Any, chiba: Any) -> None:
    after = await last_event_id(network)
    admin = network.hub_config.admin_token
    for context in (network.agency_client_ssl(catalog.CHIBA_CITY), network.hub_operator_ssl()):
        status, body = await enrol(http, network, catalog.CHIBA_CITY, admin, ssl=context)
        assert status == 403
        assert body["error"]["code"] == "enrolment_token_invalid"
        assert "administrator token does not enrol" in body["error"]["message"]
    status, body = await enrol(
        http, network, catalog.CHIBA_CITY, None, ssl=network.agency_client_ssl(catalog.CHIBA_CITY)
    )
    assert status == 401 and body["error"]["code"] == "enrolment_token_required"
    assert await events(network, catalog.CHIBA_CITY, after) == [
        ("refused", "enrolment_token_invalid"),
        ("refused", "enrolment_token_invalid"),
        ("refused", "enrolment_token_required"),
    ]


async def test_one_agencys_token_cannot_enrol_another(
    http: Any, network: Any, chiba: Any, funabashi: Any
) -> None:
    after = await last_event_id(network)
    status, body = await enrol(
        http,
        network,
        catalog.FUNABASHI_CITY,
        chiba.gateway.config.enrolment_token,
        ssl=network.agency_client_ssl(catalog.FUNABASHI_CITY),
    )
    assert status == 403
    assert body["error"]["code"] == "enrolment_token_other_agency"
    # Not even the operator's certificate makes 千葉市's token enrol 船橋市.
    status, body = await enrol(
        http,
        network,
        catalog.FUNABASHI_CITY,
        chiba.gateway.config.enrolment_token,
        ssl=network.hub_operator_ssl(),
    )
    assert status == 403 and body["error"]["code"] == "enrolment_token_other_agency"
    assert await events(network, catalog.FUNABASHI_CITY, after) == [
        ("refused", "enrolment_token_other_agency"),
        ("refused", "enrolment_token_other_agency"),
    ]


async def test_only_the_operator_issues_enrolment_tokens(http: Any, network: Any) -> None:
    url = token_url(network, KAMAGAYA)
    agency = network.agency_client_ssl(catalog.CHIBA_CITY)
    chiba_token = network.gateways[catalog.CHIBA_CITY].config.enrolment_token
    async with http.post(url, headers=bearer(chiba_token), ssl=network.hub_operator_ssl()) as r:
        assert r.status == 403  # an agency's token is no admin token
    async with http.post(url, headers=bearer(network.hub_config.admin_token), ssl=agency) as r:
        assert r.status == 403  # nor is an agency's certificate the operator's
    async with http.post(url, ssl=network.hub_operator_ssl()) as r:
        assert r.status == 401
    async with http.post(
        url,
        json={"token": "short"},
        headers=bearer(network.hub_config.admin_token),
        ssl=network.hub_operator_ssl(),
    ) as r:
        assert r.status == 422 and (await r.json())["error"]["code"] == "enrolment_token_weak"


async def test_a_revoked_or_rotated_token_is_refused_and_a_new_one_enrols(
    http: Any, network: Any
) -> None:
    gateway = await network.add_gateway(KAMAGAYA, "鎌ケ谷市")  # the harness issues its token
    admin = bearer(network.hub_config.admin_token)
    operator = network.hub_operator_ssl()
    own = network.agency_client_ssl(KAMAGAYA)
    first = gateway.config.enrolment_token
    try:
        assert (await enrol(http, network, KAMAGAYA, first, ssl=own))[0] == 201

        # Rotation: the operator issues a new token; the old one stops at once.
        async with http.post(token_url(network, KAMAGAYA), headers=admin, ssl=operator) as r:
            assert r.status == 201 and r.headers["Cache-Control"] == "no-store"
            issued = await r.json()
        assert issued["replaced"] is True and issued["token"] != first
        status, body = await enrol(http, network, KAMAGAYA, first, ssl=own)
        assert status == 403 and body["error"]["code"] == "enrolment_token_revoked"
        assert "rotated" in body["error"]["message"]
        second = issued["token"]
        assert (await enrol(http, network, KAMAGAYA, second, ssl=own))[0] == 201

        # Revocation: nothing enrols the agency until the operator issues a new token.
        after = await last_event_id(network)
        async with http.delete(token_url(network, KAMAGAYA), headers=admin, ssl=operator) as r:
            assert r.status == 200
        status, body = await enrol(http, network, KAMAGAYA, second, ssl=own)
        assert status == 403 and body["error"]["code"] == "enrolment_token_revoked"
        async with http.delete(token_url(network, KAMAGAYA), headers=admin, ssl=operator) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "enrolment_token_unknown"
        # A gateway restarted with the revoked token does not start.
        await gateway.server.stop()
        with pytest.raises(EnrolmentRefusedError, match="403 enrolment_token_revoked"):
            await start_gateway(dataclasses.replace(gateway.config, enrolment_token=second))
        assert await events(network, KAMAGAYA, after) == [
            ("token_revoked", None),
            ("refused", "enrolment_token_revoked"),
            ("refused", "enrolment_token_revoked"),
        ]

        # The operator may set a token it already handed over; it enrols the agency again.
        chosen = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        async with http.post(
            token_url(network, KAMAGAYA), json={"token": chosen}, headers=admin, ssl=operator
        ) as r:
            assert r.status == 201
            assert (await r.json())["replaced"] is False
        config = dataclasses.replace(gateway.config, enrolment_token=chosen)
        gateway.server = await start_gateway(config)
        gateway.config = config
        network.credentials[KAMAGAYA] = AgencyCredentials(chosen, config.key_passphrase)
    finally:
        await gateway.server.stop()
        network.gateways.pop(KAMAGAYA, None)


async def test_devnet_agencies_hold_their_own_secrets_never_the_hubs(network: Any) -> None:
    hub = network.hub_config
    configs = [g.config for g in network.gateways.values()]
    assert len(configs) >= 2
    passphrases = [c.key_passphrase for c in configs]
    tokens = [c.enrolment_token for c in configs]
    assert len(set(passphrases)) == len(passphrases)
    assert hub.key_passphrase not in passphrases
    assert len(set(tokens)) == len(tokens)
    assert hub.admin_token not in tokens
    # Each ring opens with its own agency's passphrase only.
    from chukan.gateway.core.keyring import read_ring, ring_path
    from chukan.keys import KeyFormatError

    chiba = network.gateways[catalog.CHIBA_CITY].config
    with pytest.raises(KeyFormatError):
        read_ring(ring_path(chiba.key_dir, chiba.agency_code), hub.key_passphrase)
    assert "secret" in repr(network.credentials[catalog.CHIBA_CITY])
    assert chiba.enrolment_token not in repr(network.credentials)


# -- the hub's 個人番号 HMAC key ------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_the_hubs_hmac_key_is_encrypted_at_rest(network: Any, log_capture: Any) -> None:
    key = network.hub.app[HUB_STATE].secret
    path = network.hub_config.key_dir / HMAC_KEY_FILE
    data = path.read_bytes()
    assert len(key) >= 32
    for form in (key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)):
        assert form not in data
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert open_secret(data, network.hub_config.key_passphrase, purpose=HMAC_KEY_PURPOSE) == key
    text = log_capture.getvalue()
    assert key.hex() not in text and base64.b64encode(key).decode() not in text
    assert "secret=" not in repr(network.hub.app[HUB_STATE])


@pytest.fixture
async def spare_hub(
    pg_server_url: str, db_prefix: str, network: Any, tmp_path: Path
) -> dict[str, Any]:
    """A second hub's settings on its own database and key folder (plain HTTP)."""
    url = await db.ensure_database(pg_server_url, f"{db_prefix}hub_secret")
    await db.migrate_url(url, "chukan.simulators", "migrations/hub")
    key_dir = tmp_path / "hub-keys"
    config = dataclasses.replace(network.hub_config, database_url=url, key_dir=key_dir, tls=None)
    return {"config": config, "key_dir": key_dir}


async def test_a_hub_refuses_to_start_on_an_exposed_or_short_hmac_key(spare_hub: Any) -> None:
    config, key_dir = spare_hub["config"], spare_hub["key_dir"]
    server = await serve(create_hub_app(config), "127.0.0.1", 0)  # first start: key created
    key = server.app[HUB_STATE].secret
    await server.stop()
    path = key_dir / HMAC_KEY_FILE
    assert _mode(path) == 0o600

    server = await serve(create_hub_app(config), "127.0.0.1", 0)  # restart: the same key
    assert server.app[HUB_STATE].secret == key
    await server.stop()

    path.chmod(0o644)
    with pytest.raises(HubSecretExposedError, match="chmod 600"):
        await serve(create_hub_app(config), "127.0.0.1", 0)
    path.chmod(0o600)

    sealed = path.read_bytes()
    path.write_bytes(seal_secret(os.urandom(16), config.key_passphrase, purpose=HMAC_KEY_PURPOSE))
    with pytest.raises(HubSecretError, match="at least 32"):
        await serve(create_hub_app(config), "127.0.0.1", 0)
    path.write_bytes(sealed)
