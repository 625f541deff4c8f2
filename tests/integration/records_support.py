"""Shared by the record-chain tests: the owner's URL and a tenant of a test's own."""

from __future__ import annotations

import secrets
from typing import Any

from chukan.gateway.core import db


def admin_url(api: Any) -> str:
    url: str = api.gateway.config.migration_database_url
    return url


async def fresh_tenant(api: Any, prefix: str, name: str) -> str:
    """A tenant of its own (login role provisioned), so tampering hurts no other test.

    ``prefix`` (two digits) keeps each test file's tenants apart.
    """
    code = prefix + "".join(secrets.choice("0123456789") for _ in range(4))
    await db.provision_tenant(admin_url(api), code, name)
    return code
