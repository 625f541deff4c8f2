"""An agency's key ring at rest and in a running gateway (DESIGN §6: keys rotate with an overlap).

At rest the ring is one file, ``<key dir>/<agency code>.ring.json``
(:func:`chukan.keys.ring.ring_to_bytes`: private keys as encrypted PKCS#8 under
a key derived from the passphrase, the whole document MAC'd), written
atomically with mode 0600 in a 0700 folder.  ``chukan keys`` generates, rotates
and lists it; a gateway loads it at start-up (generating one the first time)
and again on ``POST /internal/v1/keys/reload``.

Installing a ring first publishes its public keys to the hub (active and
retiring ones, with their validity), then switches the gateway to the newest
keys: new messages are signed with the new signing key and peers seal to the new
encryption key, while answers sealed to a retiring key still open until its
overlap ends (then :class:`~chukan.keys.ring.KeyRetiredError`, ``key_retired``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_MANAGE_KEYS, GatewayConfig
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, utcnow
from chukan.keys import KeyFormatError, PublicSigningKey, b64e
from chukan.keys.crypto import MIN_PASSPHRASE_BYTES
from chukan.keys.ring import DEFAULT_OVERLAP, KeyRing, ring_from_bytes, ring_to_bytes

log = structlog.get_logger("chukan.keys")

RING_SUFFIX: Final = ".ring.json"


def ring_path(key_dir: Path, owner: str) -> Path:
    return key_dir / f"{owner}{RING_SUFFIX}"


def _check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise KeyFormatError(
            f"the key passphrase must be a random secret of at least {MIN_PASSPHRASE_BYTES} bytes"
        )


def write_ring(path: Path, ring: KeyRing, passphrase: bytes) -> None:
    """Replace the ring file atomically: a 0600 temporary file, fsync, rename."""
    _check_passphrase(passphrase)
    data = ring_to_bytes(ring, passphrase)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_ring(path: Path, passphrase: bytes, *, owner: str | None = None) -> KeyRing:
    """Load a ring file, refusing one others may read and one of another owner."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFormatError(f"no key ring at {path}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFormatError(f"key ring {path.name} is readable by others; chmod 600 it")
    ring = ring_from_bytes(path.read_bytes(), passphrase)
    if owner is not None and ring.owner != owner:
        raise KeyFormatError(f"key ring {path.name} belongs to {ring.owner}, not {owner}")
    return ring


def load_or_create_ring(
    key_dir: Path,
    owner: str,
    passphrase: bytes,
    *,
    now: dt.datetime,
    overlap: dt.timedelta = DEFAULT_OVERLAP,
) -> KeyRing:
    """The owner's ring from ``key_dir``, generated and saved the first time."""
    path = ring_path(key_dir, owner)
    if path.exists():
        ring = read_ring(path, passphrase, owner=owner)
        log.info("key_ring_loaded", owner=owner, keys=len(ring.published(now)))
        return ring
    ring = KeyRing.generate(owner, now=now, overlap=overlap)
    write_ring(path, ring, passphrase)
    log.info(
        "key_ring_generated",
        owner=owner,
        signing=ring.current_signing(now).key_id,
        encryption=ring.current_encryption(now).key_id,
    )
    return ring


def current_keys(ring: KeyRing, now: dt.datetime) -> AgencyKeys:
    """The keys new messages use: newest active signing and encryption keys."""
    return AgencyKeys(ring.current_signing(now), ring.current_encryption(now))


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def published_keys(ring: KeyRing, now: dt.datetime) -> list[dict[str, Any]]:
    """Public keys for the hub registry (active and retiring, with validity); no private data."""
    return [
        {
            "key_id": key.key_id,
            "purpose": key.purpose,
            "algorithm": key.algorithm,
            "public": b64e(key.public.raw),
            "status": key.status,
            "valid_from": key.valid_from.isoformat(),
            "valid_until": _iso(key.valid_until),
        }
        for key in ring.published(now)
    ]


def key_status(ring: KeyRing, now: dt.datetime) -> list[dict[str, Any]]:
    """Every key of the ring with its state, for operators (ids and dates only)."""
    out: list[dict[str, Any]] = []
    for purpose, keys in (("enc", ring.encryption_keys), ("sig", ring.signing_keys)):
        for key in keys:
            out.append(
                {
                    "key_id": key.key_id,
                    "purpose": purpose,
                    "state": key.state(now, ring.overlap),
                    "activated_at": key.activated_at.isoformat(),
                    "retired_at": _iso(key.retired_at),
                    "valid_until": _iso(
                        None if key.retired_at is None else key.retired_at + ring.overlap
                    ),
                }
            )
    return out


def enrolment_payload(
    config: GatewayConfig, endpoint: str, ring: KeyRing, now: dt.datetime
) -> dict[str, Any]:
    """What the gateway tells the hub about itself: endpoint, current keys, every valid key."""
    keys = current_keys(ring, now)
    return {
        "code": config.agency_code,
        "name": config.agency_name,
        "endpoint": endpoint,
        **current_keys_json(keys),
        "keys": published_keys(ring, now),
    }


def current_keys_json(keys: AgencyKeys) -> dict[str, Any]:
    """The public halves of the keys in use, as the hub and 国保連 registries take them."""
    return {
        "signing_key": {"key_id": keys.signing.key_id, "public": b64e(keys.signing.public.raw)},
        "encryption_key": {
            "key_id": keys.encryption.key_id,
            "public": b64e(keys.encryption.public.raw),
        },
    }


async def install_ring(state: GatewayState, ring: KeyRing, *, publish: bool = True) -> None:
    """Publish the ring's public keys to the hub, then use its newest keys.

    Publishing comes first so that nothing is signed with a key the hub does not
    know yet; if the hub cannot be reached the gateway keeps its current ring.
    """
    if ring.owner != state.config.agency_code:
        raise KeyFormatError(f"the key ring belongs to {ring.owner}")
    now = utcnow()
    keys = current_keys(ring, now)
    if publish:
        await state.hub.enrol(
            state.config.enrolment_token,
            enrolment_payload(state.config, state.endpoint, ring, now),
        )
    state.ring = ring
    state.keys = keys
    state.hub.signer = keys.signing
    log.info(
        "key_ring_installed",
        agency=state.config.agency_code,
        signing=keys.signing.key_id,
        encryption=keys.encryption.key_id,
        published=publish,
    )


async def reload_keys(request: web.Request) -> web.Response:
    """``POST /internal/v1/keys/reload``: read the ring file again, re-publish, switch keys."""
    await authorize(request, OP_MANAGE_KEYS)
    state = request.config_dict[GATEWAY_STATE]
    config = state.config
    ring = await asyncio.to_thread(
        read_ring,
        ring_path(config.key_dir, config.agency_code),
        config.key_passphrase,
        owner=config.agency_code,
    )
    await install_ring(state, ring)
    now = utcnow()
    return web.json_response(
        {
            "agency": config.agency_code,
            "signing_key": state.keys.signing.key_id,
            "encryption_key": state.keys.encryption.key_id,
            "keys": key_status(ring, now),
        }
    )


def own_verification_keys(ring: KeyRing) -> dict[str, PublicSigningKey]:
    """Every signing key the ring still holds, whatever its state.

    For checking this agency's *own* past signatures (record checkpoints): a
    checkpoint signed before a rotation stays verifiable as long as the ring
    keeps the key.  Peers' messages are verified under ``ring.published`` keys.
    """
    return {key.key_id: key.pair.public for key in ring.signing_keys}


def open_ring(key_dir: Path, owner: str, passphrase: bytes) -> KeyRing:
    """An existing ring of ``owner`` in ``key_dir`` (tools: never creates one)."""
    return read_ring(ring_path(key_dir, owner), passphrase, owner=owner)
