"""``/health``: liveness, and whether the database and the authorization list serve."""

from __future__ import annotations

from aiohttp import web

from chukan.gateway.authlist.sync import LIST_SYNC, list_status
from chukan.gateway.core import db
from chukan.gateway.core.probes import health_answer
from chukan.gateway.core.state import GATEWAY_STATE


async def health(request: web.Request) -> web.Response:
    """Liveness and, for operators, whether the database answers and a valid authorization
    list is in force: ``degraded`` without either; 503 when the database does not answer
    ``SELECT 1`` within ``ops.ready_timeout`` (nothing can be served), 200 otherwise."""
    state = request.config_dict[GATEWAY_STATE]
    database = await db.probe(state.pool, state.config.ops.ready_timeout)
    authorization = list_status(state, request.config_dict[LIST_SYNC])
    return health_answer(
        database,
        degraded=not authorization["available"],
        agency=state.config.agency_code,
        authorization_list=authorization,
    )
