"""What a running 国保連 simulator holds (pool and keys), and its answers signed with them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from aiohttp import web

from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.simulators.kokuhoren.config import KokuhorenConfig


@dataclass
class KokuhorenState:
    config: KokuhorenConfig
    pool: asyncpg.Pool
    keys: AgencyKeys


KOKUHOREN_STATE: Final = web.AppKey("kokuhoren_state", KokuhorenState)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def signed_response(
    state: KokuhorenState, body: bytes, status: int = 200, content_type: str = "application/json"
) -> web.Response:
    """Every mailbox answer carries the simulator's signature (``Chukan-Signature``)."""
    return web.Response(
        body=body,
        status=status,
        content_type=content_type,
        headers={SIGNATURE_HEADER: signature_header(state.keys.signing, body)},
    )


def signed_json(state: KokuhorenState, payload: dict[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return signed_response(state, body, status)
