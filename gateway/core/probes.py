"""What every server's ``/health`` and ``/ready`` share: checks with a deadline, one answer shape.

A check is a mapping with ``ok`` (and a ``reason`` when not ok, plus whatever
numbers help an operator).  ``/health`` is liveness: 200 while the process and
its database answer (``status`` ``ok`` or ``degraded``), 503 when the database
does not.  ``/ready`` is 200 only when every check passes, 503 with the failing
checks otherwise — what a load balancer or an orchestrator routes by.  The
gateway's checks are in ``gateway/ops``; the hub's and the 国保連 simulator's in
their ``probes`` modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core.errors import GatewayError

log = structlog.get_logger("chukan.ops")

Check = dict[str, Any]


async def timed(check: Awaitable[Check], limit: float) -> Check:
    """Run one check within ``limit`` seconds; a failure is a failing check, never a 500."""
    try:
        return await asyncio.wait_for(check, limit)
    except TimeoutError:
        return {"ok": False, "reason": "timed out"}
    except GatewayError as exc:
        return {"ok": False, "reason": exc.code}
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        return {"ok": False, "reason": type(exc).__name__}


def ready_answer(checks: Mapping[str, Check], **extra: Any) -> web.Response:
    """200 ``ready`` when every check passes; 503 ``not_ready`` (logged) otherwise."""
    ok = all(c["ok"] for c in checks.values())
    if not ok:
        log.warning("not_ready", failing=sorted(name for name, c in checks.items() if not c["ok"]))
    return web.json_response(
        {"status": "ready" if ok else "not_ready", **extra, "checks": dict(checks)},
        status=200 if ok else 503,
    )


def health_answer(database: Check, *, degraded: bool = False, **extra: Any) -> web.Response:
    """Liveness: 503 when the database does not answer (nothing can be served), else 200,
    ``degraded`` when something else an operator should see is wrong."""
    status = "ok" if database["ok"] and not degraded else "degraded"
    return web.json_response(
        {"status": status, **extra, "database": database},
        status=200 if database["ok"] else 503,
    )
