"""The hub's evidence: every message it routed, and the per-query records the operator reads.

``hub_records`` is a view over ``hub_record_events`` (opened, held, concluded);
routing and the delivery worker append the events, this module only reads them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from aiohttp import web

from chukan.codecs.envelope import Header
from chukan.gateway.core import db
from chukan.simulators.hub import auth
from chukan.simulators.hub.state import HUB_STATE

#: Keeps routed messages byte for byte; followed by VALUES or a SELECT of those columns.
ROUTED_INSERT: Final = (
    "INSERT INTO routed_messages "
    "(message_id, message_type, sender, receiver, query_id, permit_id, direction, body) "
)


async def log_routed(
    conn: db.Conn,
    *,
    header: Header,
    direction: str,
    body: bytes,
    query_id: str | None,
    permit_id: str | None,
) -> None:
    """Keep a message the hub routed, byte for byte, in the caller's transaction."""
    await conn.execute(
        ROUTED_INSERT + "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        header.message_id,
        header.message_type,
        header.sender,
        header.receiver,
        query_id,
        permit_id,
        direction,
        body,
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in row.items()
    }


async def list_records(request: web.Request) -> web.Response:
    """``GET /admin/v1/records``: every query the hub saw, for the operator."""
    auth.require_admin(request)
    auth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    rows = await state.pool.fetch("SELECT * FROM hub_records ORDER BY requested_at")
    return web.json_response({"records": [_jsonable(dict(r)) for r in rows]})
