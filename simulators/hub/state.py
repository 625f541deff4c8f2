"""What a running hub holds: pool, keys, the J-LIS secret, the current list, a client session.

Every other hub module reads it from the application (:data:`HUB_STATE`); only
:mod:`chukan.simulators.hub.app` builds it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.privatefiles import create_private_file
from chukan.keys.errors import KeyFormatError
from chukan.keys.secretfile import is_sealed_secret, open_secret, seal_secret
from chukan.permits import AuthorizationList
from chukan.simulators.errors import HubSecretError, HubSecretExposedError
from chukan.simulators.hub.config import HubConfig
from chukan.simulators.hub.group_commit import GroupCommit

log = structlog.get_logger("chukan.hub")


@dataclass
class HubState:
    config: HubConfig
    pool: asyncpg.Pool
    keys: AgencyKeys
    secret: bytes = field(repr=False)  # the 個人番号 HMAC key: never printed
    authorization_list: AuthorizationList
    signed_list: bytes
    session: aiohttp.ClientSession
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    #: New queries' and conclusions' record writes, shared by concurrent callers
    #: (:class:`~chukan.simulators.hub.group_commit.GroupCommit`); built when the hub
    #: starts, drained at stop.
    opening: GroupCommit | None = None
    concluding: GroupCommit | None = None


HUB_STATE: Final = web.AppKey("hub_state", HubState)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: The 個人番号 HMAC key's file in the hub's key folder (encrypted, mode 0600).
HMAC_KEY_FILE: Final = "hub.secret"
HMAC_KEY_PURPOSE: Final = "hub.individual-number-hmac"
#: With only about 10¹¹ valid 個人番号, the key is all that protects the digests.
MIN_HMAC_KEY_BYTES: Final = 32


def _refuse_exposed(path: Path, what: str, fix: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HubSecretExposedError(
            f"{what} {path} is open to group or others (mode {mode:04o}); {fix}"
        )


def _create_secret(path: Path, passphrase: bytes) -> bool:
    """Write a new key beside ``path``, then link it into place only if none is there yet.

    ``os.link`` fails when ``path`` exists, so of two hub processes starting
    together exactly one key wins and the other reads it; the file is complete
    (fsynced) before it appears under its name.  Returns whether ours won.
    """
    key = secrets.token_bytes(MIN_HMAC_KEY_BYTES)
    return create_private_file(path, seal_secret(key, passphrase, purpose=HMAC_KEY_PURPOSE))


def load_secret(key_dir: Path, passphrase: bytes) -> bytes:
    """The hub's 個人番号 HMAC key (the J-LIS digest secret): created once, never leaves the hub.

    At rest it is encrypted under the hub's key passphrase (the key rings'
    construction, :mod:`chukan.keys.secretfile`), mode 0600 in a 0700 folder.
    A file or folder open to group or others, a file that does not open, or a key
    shorter than :data:`MIN_HMAC_KEY_BYTES` stops the hub: digests made under a
    leaked or weak key are reversible by trying every 個人番号.  Nothing about
    the key is logged.
    """
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_exposed(key_dir, "the hub's key folder", "chmod 700 it")
    path = key_dir / HMAC_KEY_FILE
    if not path.exists() and _create_secret(path, passphrase):
        log.info("hub_secret_created", file=path.name)
    _refuse_exposed(path, "the hub's 個人番号 HMAC key file", "chmod 600 it")
    data = path.read_bytes()
    if not is_sealed_secret(data):
        raise HubSecretError(
            f"{path} is not an encrypted key file; the hub keeps its 個人番号 HMAC key "
            "encrypted under its key passphrase"
        )
    try:
        secret = open_secret(data, passphrase, purpose=HMAC_KEY_PURPOSE)
    except KeyFormatError as exc:
        raise HubSecretError(f"{path.name}: {exc}") from None
    if len(secret) < MIN_HMAC_KEY_BYTES:
        raise HubSecretError(
            f"the hub's 個人番号 HMAC key in {path.name} is {len(secret)} bytes; "
            f"at least {MIN_HMAC_KEY_BYTES} random bytes are required"
        )
    log.info("hub_secret_loaded", file=path.name)
    return secret
