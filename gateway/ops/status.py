"""``GET /internal/v1/status``: what an operator needs to see (no secrets, no personal data)."""

from __future__ import annotations

from aiohttp import web

from chukan.gateway.authlist.sync import LIST_SYNC, list_history, list_status
from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_READ_STATUS
from chukan.gateway.core.keyring import key_status
from chukan.gateway.core.state import GATEWAY_STATE, utcnow


async def gateway_status(request: web.Request) -> web.Response:
    await authorize(request, OP_READ_STATUS)
    state = request.config_dict[GATEWAY_STATE]
    status = list_status(state, request.config_dict[LIST_SYNC])
    return web.json_response(
        {
            "agency": state.config.agency_code,
            "endpoint": state.endpoint,
            "tls": state.config.tls is not None,
            "authorization_list": {**status, "history": await list_history(state)},
            "keys": {
                "signing_key": state.keys.signing.key_id,
                "encryption_key": state.keys.encryption.key_id,
                "overlap_seconds": state.ring.overlap.total_seconds(),
                "ring": key_status(state.ring, utcnow()),
            },
        }
    )
