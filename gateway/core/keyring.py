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

Several processes of one agency share the ring file (one ``key_dir``):

* the first start creates it exactly once: a new ring is written to a temporary
  file and linked into place only if no ring is there yet (``os.link`` fails when
  the name exists), so of two processes starting together one ring wins and both
  use it;
* a reload in one process reaches every process: after installing, the
  reloading process sends ``NOTIFY chukan_keys, '<agency> <sha256 of the file>'``
  and every process (:func:`ring_watch_context`) reads the file again and
  switches to it without publishing once more (the announcer did);
* as a fallback (a notice lost while a process's database connection was down,
  or a ring file replaced without a reload) every process compares the file's
  digest with the one it uses every ``Timing.ring_check`` seconds and takes up a
  changed ring, publishing it to the hub first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_MANAGE_KEYS, GatewayConfig
from chukan.gateway.core.errors import UpstreamError
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.notices import KEYS_CHANNEL, NOTICES, notify
from chukan.gateway.core.privatefiles import create_private_file, replace_private_file
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
    """Replace the ring file atomically (0600, complete before it appears)."""
    _check_passphrase(passphrase)
    replace_private_file(path, ring_to_bytes(ring, passphrase))


def create_ring_file(path: Path, ring: KeyRing, passphrase: bytes) -> bool:
    """Write ``ring`` to ``path`` only if no ring is there yet; returns whether ours won.

    Of several processes creating the ring at once exactly one succeeds, and the
    others read the winner's ring (see :func:`create_private_file`).
    """
    _check_passphrase(passphrase)
    return create_private_file(path, ring_to_bytes(ring, passphrase))


def read_ring_file(
    path: Path, passphrase: bytes, *, owner: str | None = None
) -> tuple[KeyRing, str]:
    """A ring file and the SHA-256 of its bytes (what the workers compare)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFormatError(f"no key ring at {path}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFormatError(f"key ring {path.name} is readable by others; chmod 600 it")
    data = path.read_bytes()
    ring = ring_from_bytes(data, passphrase)
    if owner is not None and ring.owner != owner:
        raise KeyFormatError(f"key ring {path.name} belongs to {ring.owner}, not {owner}")
    return ring, hashlib.sha256(data).hexdigest()


def read_ring(path: Path, passphrase: bytes, *, owner: str | None = None) -> KeyRing:
    """Load a ring file, refusing one others may read and one of another owner."""
    return read_ring_file(path, passphrase, owner=owner)[0]


def file_digest(path: Path) -> str | None:
    """SHA-256 of the ring file's bytes (no decryption), None when it is missing."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def load_or_create_ring(
    key_dir: Path,
    owner: str,
    passphrase: bytes,
    *,
    now: dt.datetime,
    overlap: dt.timedelta = DEFAULT_OVERLAP,
) -> KeyRing:
    """The owner's ring from ``key_dir``, generated and saved the first time (exactly once)."""
    path = ring_path(key_dir, owner)
    if not path.exists():
        ring = KeyRing.generate(owner, now=now, overlap=overlap)
        if create_ring_file(path, ring, passphrase):
            log.info(
                "key_ring_generated",
                owner=owner,
                signing=ring.current_signing(now).key_id,
                encryption=ring.current_encryption(now).key_id,
            )
            return ring
        # Another process of this agency created it a moment ago: use that one.
    ring = read_ring(path, passphrase, owner=owner)
    log.info("key_ring_loaded", owner=owner, keys=len(ring.published(now)))
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


# -- several processes: one ring ---------------------------------------------------------


@dataclass
class RingWatch:
    """Which ring file (by digest) this process uses; one per gateway process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    digest: str | None = None
    checked_at: dt.datetime | None = None


RING_WATCH: Final = web.AppKey("ring_watch", RingWatch)


def _fingerprint(ring: KeyRing) -> tuple[tuple[str, dt.datetime | None], ...]:
    """What distinguishes two versions of one ring: its keys and when each was retired."""
    signing = [(key.key_id, key.retired_at) for key in ring.signing_keys]
    return tuple(signing + [(key.key_id, key.retired_at) for key in ring.encryption_keys])


async def take_up_ring(
    state: GatewayState, watch: RingWatch, *, announced: str | None, reason: str
) -> bool:
    """Use the ring file if it differs from the ring in use; returns whether it switched.

    ``announced``: the digest another process announced after publishing that ring
    to the hub; a ring nobody announced is published first (it may be new to the hub).
    """
    config = state.config
    path = ring_path(config.key_dir, config.agency_code)
    async with watch.lock:
        watch.checked_at = utcnow()
        if watch.digest is not None and await asyncio.to_thread(file_digest, path) == watch.digest:
            return False
        ring, digest = await asyncio.to_thread(
            read_ring_file, path, config.key_passphrase, owner=config.agency_code
        )
        if _fingerprint(ring) == _fingerprint(state.ring):
            watch.digest = digest
            return False
        await install_ring(state, ring, publish=announced != digest)
        watch.digest = digest
    log.info("key_ring_taken_up", agency=config.agency_code, reason=reason)
    return True


async def _take_up_quietly(
    state: GatewayState, watch: RingWatch, announced: str | None, reason: str
) -> None:
    try:
        await take_up_ring(state, watch, announced=announced, reason=reason)
    except (KeyFormatError, UpstreamError) as exc:  # keep the ring in use; try again later
        log.warning("key_ring_take_up_failed", reason=reason, error=str(exc))


async def _ring_check_loop(state: GatewayState, watch: RingWatch) -> None:
    while True:
        await asyncio.sleep(state.config.timing.ring_check)
        try:
            await _take_up_quietly(state, watch, None, "periodic check")
        except Exception:  # the loop never ends on an error
            log.exception("key_ring_check_failed")


async def ring_watch_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: take up rings other processes reloaded (notice, periodic check)."""
    state = app[GATEWAY_STATE]
    watch = app[RING_WATCH]
    watch.digest = await asyncio.to_thread(
        file_digest, ring_path(state.config.key_dir, state.config.agency_code)
    )

    async def on_notice(payload: str | None) -> None:
        if payload is None:  # (re)connected: a notice may have been missed
            await _take_up_quietly(state, watch, None, "reconnected")
            return
        tenant, _, digest = payload.partition(" ")
        if tenant == state.config.agency_code:
            await _take_up_quietly(state, watch, digest or None, "reload notice")

    app[NOTICES].subscribe(KEYS_CHANNEL, on_notice)
    task = asyncio.create_task(_ring_check_loop(state, watch), name="key-ring-check")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def reload_keys(request: web.Request) -> web.Response:
    """``POST /internal/v1/keys/reload``: read the ring file again, re-publish, switch keys.

    Then every other process of this agency is told (``NOTIFY chukan_keys``) and
    switches to the same ring.
    """
    await authorize(request, OP_MANAGE_KEYS)
    state = request.config_dict[GATEWAY_STATE]
    watch = request.config_dict[RING_WATCH]
    config = state.config
    async with watch.lock:
        ring, digest = await asyncio.to_thread(
            read_ring_file,
            ring_path(config.key_dir, config.agency_code),
            config.key_passphrase,
            owner=config.agency_code,
        )
        await install_ring(state, ring)
        watch.digest = digest
    try:
        await notify(state.pool, KEYS_CHANNEL, f"{config.agency_code} {digest}")
    except Exception as exc:  # the others still take it up at their periodic check
        if not db.is_database_error(exc):
            raise
        db.note_unavailable(exc)
        log.warning("key_reload_notice_failed", agency=config.agency_code)
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
