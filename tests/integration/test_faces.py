"""The gateway's faces are sub-applications with their own guards, and a failed start
releases what it had opened.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from chukan.gateway.serve import start_gateway
from chukan.keys.errors import KeysError

pytestmark = pytest.mark.integration

#: An agency only the start-up test uses (四街道市); its gateway is stopped at once.
YOTSUKAIDO = "122289"


async def test_the_network_face_guards_every_path_even_unknown_ones(
    http: Any, network: Any, chiba: Any
) -> None:
    """The hub-only guard is the sub-application's: a path it does not route is guarded too."""
    url = chiba.gateway.url + "/network/v1/no-such-thing"
    async with http.get(url) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
    async with http.get(url, ssl=chiba.gateway.client_ssl()) as response:
        assert response.status == 403
    async with http.get(url, ssl=network.hub_client_ssl()) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_answers_of_the_private_faces_are_never_cached(http: Any, chiba: Any) -> None:
    gateway = chiba.gateway
    async with http.get(
        gateway.url + "/internal/v1/records?query_id=none", ssl=gateway.client_ssl()
    ) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert (await response.json())["records"] == []
    async with http.get(gateway.url + "/health", ssl=gateway.client_ssl()) as response:
        assert response.status == 200
        assert "Cache-Control" not in response.headers  # the root's probes carry no data


async def _sessions_of(server_url: str, role: str) -> int:
    conn = await asyncpg.connect(server_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
        )
    finally:
        await conn.close()
    return int(count)


async def test_a_start_that_fails_halfway_closes_what_it_opened(network: Any) -> None:
    """The pool is open and the tenant checked when the key ring refuses its passphrase:
    the start fails, and no database session nor the listening socket is left behind."""
    first = await network.add_gateway(YOTSUKAIDO, "四街道市")
    await first.server.stop()
    network.gateways.pop(YOTSUKAIDO)
    role = urlsplit(first.config.database_url).username
    assert role is not None
    assert await _sessions_of(network.server_url, role) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wrong = dataclasses.replace(first.config, port=port, key_passphrase=b"not-the-passphrase-0")
    with pytest.raises(KeysError):
        await start_gateway(wrong)
    assert await _sessions_of(network.server_url, role) == 0
    with socket.socket() as again:  # the port is free again
        again.bind(("127.0.0.1", port))
