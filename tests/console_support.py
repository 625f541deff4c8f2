"""Helpers of the staff console tests (tests/integration/test_console*.py, tests/browser):
accounts made straight in a gateway's database, and a browser-like HTTP client."""

from __future__ import annotations

import re
import secrets
from typing import Any

import aiohttp

from chukan.gateway.staff.accounts import create_account
from chukan.gateway.staff.passwords import hash_password

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]*)"')


def new_password() -> str:
    return f"Pw-{secrets.token_urlsafe(12)}"


async def make_account(gateway: Any, roles: list[str], **extra: Any) -> tuple[str, str]:
    """A staff account of ``gateway`` (a devnet Gateway) with ``roles``: (username, password)."""
    username = f"c{secrets.token_hex(5)}"
    password = new_password()
    await create_account(
        gateway.state.pool,
        username=username,
        roles=roles,
        password_hash=hash_password(password, n=2**10, r=8, p=1),
        created_by="test",
        display_name=f"試験 {username}",
        **extra,
    )
    return username, password


def csrf_of(page: str) -> str:
    found = CSRF_INPUT.search(page)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


class Browser:
    """A cookie-keeping client of one gateway's console, as a browser without script is."""

    def __init__(self, gateway: Any, context: Any) -> None:
        self.base = gateway.url
        connector = None if context is None else aiohttp.TCPConnector(ssl=context)
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, allow_redirects=False, **kwargs) as r:
            return r.status, await r.text(), r

    async def post(
        self, path: str, form: dict[str, Any], **kwargs: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(
            self.base + path, data=form, allow_redirects=False, **kwargs
        ) as r:
            return r.status, await r.text(), r

    async def csrf(self, path: str = "/staff/") -> str:
        status, page, _ = await self.get(path)
        assert status == 200, (status, page)
        return csrf_of(page)

    async def login(self, username: str, password: str) -> tuple[int, str, aiohttp.ClientResponse]:
        token = await self.csrf("/staff/login")
        return await self.post(
            "/staff/login", {"username": username, "password": password, "csrf_token": token}
        )
