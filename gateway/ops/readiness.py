"""``GET /ready``: whether this gateway can do its work now, check by check.

The database and the hub answer, the authorization list is valid, the hub
holds this agency's current keys, and the key ring at rest holds them too (a
key reload or a restart would come back with them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from typing import Any

from aiohttp import web

from chukan.gateway.authlist.sync import require_list
from chukan.gateway.core import db
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.errors import AuthorizationListUnavailableError
from chukan.gateway.core.keyring import ring_path
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.probes import ready_answer, timed
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.records.witnessing import records_check
from chukan.keys import KeysError
from chukan.keys.ring import ring_from_bytes


async def check_hub(state: GatewayState) -> dict[str, Any]:
    """The hub answers and holds this agency's current public keys."""
    data = json.loads(await state.hub.get(f"/network/v1/agencies/{state.config.agency_code}"))
    ours = {
        "signing": state.keys.signing.key_id,
        "encryption": state.keys.encryption.key_id,
    }
    theirs = {
        "signing": data.get("signing_key", {}).get("key_id"),
        "encryption": data.get("encryption_key", {}).get("key_id"),
    }
    if ours != theirs:
        return {"ok": False, "reason": "the hub holds other keys for this agency"}
    return {"ok": True}


#: Outcomes of :func:`check_key_ring` by (file, its bytes' digest, its mode, keys in use).
_RING_CHECKS: dict[tuple[Any, ...], str | None] = {}


def check_key_ring(config: GatewayConfig, keys: AgencyKeys) -> dict[str, Any]:
    """The key ring at rest opens with the configured passphrase and holds the keys in
    use: a key reload or a restart would come back with them.  Opening it costs an
    scrypt, so the outcome is kept for the file's exact bytes and mode."""
    path = ring_path(config.key_dir, config.agency_code)
    try:
        data, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return {"ok": False, "reason": "the key ring cannot be read"}
    in_use = {k.key_id: k.public.raw for k in (keys.signing, keys.encryption)}
    memo = (path, hashlib.sha256(data).digest(), mode, tuple(sorted(in_use.items())))
    if memo not in _RING_CHECKS:
        reason: str | None = None
        if mode & 0o077:
            reason = "the key ring is readable by others"
        else:
            try:
                ring = ring_from_bytes(data, config.key_passphrase)
            except KeysError:
                reason = "the key ring does not open with the configured passphrase"
            else:
                held = {k.key_id: k.pair.public.raw for k in ring.signing_keys}
                held.update((k.key_id, k.pair.public.raw) for k in ring.encryption_keys)
                if ring.owner != config.agency_code or any(
                    held.get(key_id) != raw for key_id, raw in in_use.items()
                ):
                    reason = "the key ring does not hold the keys in use"
        if len(_RING_CHECKS) >= 64:
            _RING_CHECKS.clear()
        _RING_CHECKS[memo] = reason
    reason = _RING_CHECKS[memo]
    if reason is not None:
        return {"ok": False, "reason": reason}
    return {"ok": True, "signing_key": keys.signing.key_id}


async def ready(request: web.Request) -> web.Response:
    """200 when the database and hub answer, the authorization list is valid, the hub
    holds this agency's current keys and the key ring at rest holds them too (see
    :func:`check_key_ring`); 503 with the failing checks otherwise."""
    state = request.config_dict[GATEWAY_STATE]
    timeout = state.config.ops.ready_timeout
    # The database probe never raises: an outage is a failing check (503), not a 500.
    database, hub = await asyncio.gather(
        db.probe(state.pool, timeout), timed(check_hub(state), timeout)
    )
    authorization: dict[str, Any]
    try:
        authorization = {"ok": True, "version": require_list(state).version}
    except AuthorizationListUnavailableError as exc:  # the same reason queries are refused with
        authorization = {"ok": False, "reason": exc.reason}
    keys = await timed(asyncio.to_thread(check_key_ring, state.config, state.keys), timeout)
    records = await timed(records_check(state), timeout)
    return ready_answer(
        {
            "database": database,
            "hub": hub,
            "authorization_list": authorization,
            "keys": keys,
            "records": records,
        }
    )
