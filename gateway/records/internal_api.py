"""情報提供等記録 for core systems: this agency's records, by person or by query."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_READ_RECORDS
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.core.validation import atena_id_value


async def list_records(request: web.Request) -> web.Response:
    """情報提供等記録 of this agency, optionally for one person or one query."""
    await authorize(request, OP_READ_RECORDS)
    state = request.config_dict[GATEWAY_STATE]
    atena_id = request.query.get("atena_id")
    query_id = request.query.get("query_id")
    conditions: list[str] = []
    args: list[Any] = []
    if atena_id is not None:
        args.append(atena_id_value(atena_id))
        conditions.append(f"atena_id = ${len(args)}")
    if query_id is not None:
        args.append(query_id)
        conditions.append(f"query_id = ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await state.pool.fetch(
        f"SELECT * FROM provision_records {where} ORDER BY id LIMIT 1000",  # noqa: S608 -- fixed fragments, values are parameters
        *args,
    )
    return web.json_response(
        {
            "records": [
                {
                    k: (
                        v.isoformat()
                        if isinstance(v, dt.datetime | dt.date)
                        else v.hex()
                        if isinstance(v, bytes)
                        else v
                    )
                    for k, v in dict(r).items()
                }
                for r in rows
            ]
        }
    )
