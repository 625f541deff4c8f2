"""The console's address without its slash, and two settings that were constants: the
console's long-session threshold (``[staff] long_session_hours``) and the refusal limit
(``[ops] refusals_per_minute``).

A second process of 千葉市's gateway (same database, same enrolled endpoint) runs with
the settings changed; the first keeps the defaults, so each page or limit is seen to
follow the process's own setting.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from console_support import Browser, make_account

from chukan.gateway.serve import RunningServer, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def tuned(chiba: Any) -> AsyncIterator[RunningServer]:
    """千葉市's gateway again: long sessions from 2 hours, 3 refusals a minute."""
    config = chiba.gateway.config
    server = await start_gateway(
        dataclasses.replace(
            config,
            port=0,
            public_endpoint=chiba.gateway.url,  # the hub keeps delivering to the first
            staff=dataclasses.replace(config.staff, long_session_hours=2.0),
            ops=dataclasses.replace(config.ops, refusals_per_minute=3),
        )
    )
    try:
        yield server
    finally:
        await server.stop()


async def test_the_console_without_its_slash_is_redirected(chiba: Any, network: Any) -> None:
    browser = Browser(chiba.gateway, network.anonymous_ssl())
    try:
        status, _, response = await browser.get("/staff")
        assert status == 308 and response.headers["Location"] == "/staff/"
        status, _, response = await browser.get("/staff?from=bookmark")
        assert status == 308 and response.headers["Location"] == "/staff/?from=bookmark"
        status, page, _ = await browser.get("/staff/")  # where it leads: the console
        assert status in (200, 303), page
    finally:
        await browser.close()


async def test_the_long_session_report_uses_the_configured_threshold(
    chiba: Any, network: Any, tuned: RunningServer
) -> None:
    auditor, password = await make_account(chiba.gateway, ["auditor"])
    tuned_browser = Browser(tuned, network.anonymous_ssl())
    default_browser = Browser(chiba.gateway, network.anonymous_ssl())
    try:
        assert (await tuned_browser.login(auditor, password))[0] == 303
        assert (await default_browser.login(auditor, password))[0] == 303
        # Both sessions logged on three hours ago: past 2 hours, not past 8.
        await chiba.gateway.state.pool.execute(
            "UPDATE staff_sessions SET created_at = now() - interval '3 hours' WHERE username = $1",
            auditor,
        )
        status, page, _ = await tuned_browser.get("/staff/sessions")
        assert status == 200, page
        assert "2.0 時間以上" in page and f"<td>{auditor}</td>" in page
        status, page, _ = await default_browser.get("/staff/sessions")
        assert status == 200, page
        assert "8.0 時間以上" in page and f"<td>{auditor}</td>" not in page
        # ?hours= still chooses another span on either.
        status, page, _ = await default_browser.get("/staff/sessions?hours=2")
        assert status == 200 and f"<td>{auditor}</td>" in page
    finally:
        await tuned_browser.close()
        await default_browser.close()


async def test_refusals_are_limited_at_the_configured_rate(
    network: Any, tuned: RunningServer, rng: random.Random
) -> None:
    """From an address of its own (no other test's refusals counted with it), a caller
    without credentials is refused 401, then 429 past 3 refusals in a minute."""
    address = f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"
    connector = aiohttp.TCPConnector(ssl=network.anonymous_ssl(), local_addr=(address, 0))
    answers: list[tuple[int, str | None]] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        # Seven tries: even if a minute ends among them, one minute sees four.
        for _ in range(7):
            async with session.get(tuned.url + "/internal/v1/review") as response:
                body = await response.json()
                answers.append((response.status, response.headers.get("Retry-After")))
                if response.status == 429:
                    assert body["error"]["code"] == "rate_limited"
                    break
                assert (response.status, body["error"]["code"]) == (401, "unauthenticated")
    assert answers[-1][0] == 429 and answers[-1][1] is not None and int(answers[-1][1]) >= 1
    assert 3 <= len(answers) - 1 <= 6  # refused 3 times in the minute the 429 came in


async def test_staff_logins_are_limited_per_source_before_any_scrypt(
    chiba: Any, network: Any, tuned: RunningServer, rng: random.Random
) -> None:
    """Past the limit, even the right password from that source is 429 (no scrypt is
    spent on it), while another source still logs in: from an address of its own, at the
    tuned gateway's 3 refusals a minute, so the machine's speed cannot decide it."""
    user, password = await make_account(chiba.gateway, ["operator"])  # the same database
    address = f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"
    connector = aiohttp.TCPConnector(ssl=network.anonymous_ssl(), local_addr=(address, 0))
    answers: list[int] = []
    async with aiohttp.ClientSession(connector=connector) as session:

        async def attempt(name: str, secret: str) -> int:
            async with session.post(
                tuned.url + "/staff/v1/login", json={"username": name, "password": secret}
            ) as response:
                return response.status

        # Seven tries: even if a minute ends among them, one minute sees four.
        for _ in range(7):
            answers.append(await attempt(f"nobody{rng.randrange(10**6)}", "Wrong-passw0rd-x"))
            if answers[-1] == 429:
                break
        right = await attempt(user, password)
    assert answers[0] == 401 and answers[-1] == 429
    assert right in (429, 200)  # 200 only if a new minute began meanwhile
    if right == 429:
        last = await chiba.gateway.state.pool.fetchval(
            "SELECT last_login_at FROM staff_accounts WHERE username = $1", user
        )
        assert last is None
