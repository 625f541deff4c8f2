"""What a running hub holds: pool, keys, the J-LIS secret, the current list, a client session.

Every other hub module reads it from the application (:data:`HUB_STATE`); only
:mod:`chukan.simulators.hub.app` builds it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg
from aiohttp import web

from chukan.gateway.core.keystore import AgencyKeys
from chukan.permits import AuthorizationList
from chukan.simulators.hub.config import HubConfig


@dataclass
class HubState:
    config: HubConfig
    pool: asyncpg.Pool
    keys: AgencyKeys
    secret: bytes
    authorization_list: AuthorizationList
    signed_list: bytes
    session: aiohttp.ClientSession
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


HUB_STATE: Final = web.AppKey("hub_state", HubState)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_secret(key_dir: Path) -> bytes:
    """The J-LIS digest secret: generated once, mode 0600, never leaves the hub."""
    path = key_dir / "hub.secret"
    if path.exists():
        return path.read_bytes()
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret
