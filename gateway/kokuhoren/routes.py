"""国保連 伝送 on the internal API (grant ``kokuhoren.transmit``); the mailbox client's lifecycle.

* ``POST /internal/v1/kokuhoren/recipient-changes`` ``{"changes": [...]}``
* ``POST /internal/v1/kokuhoren/transmissions`` ``{"month": "YYYYMM", "kind": ...}``
* ``GET  /internal/v1/kokuhoren/transmissions/{id}[?wait=s]``
* ``POST /internal/v1/kokuhoren/transmissions/{id}/resend`` (the same file, same number)
* ``POST /internal/v1/kokuhoren/flows/{flow}/records`` ``{"records": [...]}`` — ``flow``
  ``benefit_plan`` (給付管理票), ``reimbursement`` (償還払い実績) or ``special_collection``
  (特別徴収依頼); ``GET`` the same path (``?month=YYYYMM``) lists them with their intake
  (and 特別徴収結果)
* ``POST /internal/v1/kokuhoren/transmissions`` also takes those flows as ``kind``
* ``POST /internal/v1/kokuhoren/returns`` ``{"month": "YYYYMM"}``
* ``GET  /internal/v1/kokuhoren/returns/{job_id}[?wait=s]``

The flow itself (SQL, states, jobs) is in :mod:`chukan.gateway.kokuhoren.changes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from chukan.gateway.core.access import authorize
from chukan.gateway.core.config import OP_KOKUHOREN_TRANSMIT
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState
from chukan.gateway.core.tls import client_session
from chukan.gateway.core.web import read_json
from chukan.gateway.kokuhoren.changes import (
    KIND_DATA_TYPES,
    TASK_PREFIX,
    build_transmission,
    insurer_number,
    parse_month,
    resend_transmission,
    resume_jobs,
    returns_json,
    start_return_ingest,
    store_changes,
    transmission_json,
)
from chukan.gateway.kokuhoren.errors import KokuhorenNotConfiguredError
from chukan.gateway.kokuhoren.flow_json import OUTGOING
from chukan.gateway.kokuhoren.flows import (
    build_flow_transmission,
    flow_records_json,
    flow_spec,
    store_records,
)
from chukan.gateway.kokuhoren.transmission import MailboxClient

MAX_CHANGES_PER_REQUEST: Final = 1000
MAX_CHANGES_BODY: Final = 4 * 1024 * 1024
POLL_INTERVAL: Final = 0.1

KOKUHOREN_CLIENT: Final = web.AppKey("kokuhoren_client", MailboxClient)


def _client(request: web.Request) -> MailboxClient:
    client = request.config_dict.get(KOKUHOREN_CLIENT)
    if client is None:
        raise KokuhorenNotConfiguredError("this gateway has no 国保連 mailbox configured")
    return client


def _wait_seconds(request: web.Request, state: GatewayState) -> float:
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise ValidationError("wait must be a number of seconds") from None
    return max(0.0, min(wait, state.config.timing.max_wait))


async def _answer_when(
    request: web.Request,
    state: GatewayState,
    read: Callable[[], Awaitable[dict[str, Any]]],
    final: Callable[[dict[str, Any]], bool],
) -> web.Response:
    """``read()``'s answer once ``final`` holds for it, or as it is when ``?wait=N`` is over."""
    deadline = time.monotonic() + _wait_seconds(request, state)
    while True:
        body = await read()
        if final(body) or time.monotonic() >= deadline or state.stopping.is_set():
            return web.json_response(body)
        await asyncio.sleep(POLL_INTERVAL)


def _id(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ValidationError(f"{name} must be a positive integer")
    return int(value)


async def post_recipient_changes(request: web.Request) -> web.Response:
    """Store changes of recipients for the next file; all of the batch or none."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer = insurer_number(state)
    data = await read_json(request, limit=MAX_CHANGES_BODY)
    items = data.get("changes")
    if not isinstance(items, list) or not items:
        raise ValidationError("changes must be a non-empty list")
    if len(items) > MAX_CHANGES_PER_REQUEST:
        raise ValidationError(f"at most {MAX_CHANGES_PER_REQUEST} changes per request")
    body = await store_changes(state, items, insurer, system.system_id)
    return web.json_response(body, status=201 if body["stored"] else 200)


async def post_transmission(request: web.Request) -> web.Response:
    """Build the month's file from the pending changes and start its delivery job."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer = insurer_number(state)
    client = _client(request)
    data = await read_json(request)
    month = parse_month(data.get("month"))
    kind = data.get("kind", "change")
    if isinstance(kind, str) and kind in OUTGOING:
        body = await build_flow_transmission(
            state, client, insurer, month, OUTGOING[kind], system.system_id
        )
        return web.json_response(body, status=202)
    if kind not in KIND_DATA_TYPES:
        raise ValidationError(
            "kind must be 'change', 'correction', " + ", ".join(f"'{k}'" for k in OUTGOING)
        )
    body = await build_transmission(state, client, insurer, month, kind, system.system_id)
    return web.json_response(body, status=202)


async def get_transmission(request: web.Request) -> web.Response:
    """Status and intake result of one transmission; ``?wait=N`` waits for a final state."""
    await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    transmission_id = _id(request, "transmission_id")
    return await _answer_when(
        request,
        state,
        lambda: transmission_json(state, transmission_id),
        lambda body: body["status"] != "queued",
    )


async def post_resend(request: web.Request) -> web.Response:
    """Deliver a transmission's file again, under the same ファイル管理番号 (operator lever).

    For a ``failed`` transmission once its cause is fixed (a mailbox outage longer than
    the retry budget), or a ``delivered`` one whose intake result is in doubt: the mailbox
    is idempotent per ファイル管理番号, so a file it already holds is not registered twice
    and the answer is its stored intake result (``duplicate``).  The job runs again with a
    fresh retry budget; 409 ``transmission_in_progress`` while it is still queued.
    """
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    client = _client(request)
    transmission_id = _id(request, "transmission_id")
    body = await resend_transmission(state, client, transmission_id, system.system_id)
    return web.json_response(body, status=202)


async def post_flow_records(request: web.Request) -> web.Response:
    """Store records of one flow for the next file of that flow; all of the batch or none."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer = insurer_number(state)
    spec = flow_spec(request.match_info["flow"])
    data = await read_json(request, limit=MAX_CHANGES_BODY)
    items = data.get("records")
    if not isinstance(items, list) or not items:
        raise ValidationError("records must be a non-empty list")
    if len(items) > MAX_CHANGES_PER_REQUEST:
        raise ValidationError(f"at most {MAX_CHANGES_PER_REQUEST} records per request")
    body = await store_records(state, spec, items, insurer, system.system_id)
    return web.json_response(body, status=201 if body["stored"] else 200)


async def get_flow_records(request: web.Request) -> web.Response:
    """The records of one flow with status, intake result and (特別徴収) results."""
    await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    spec = flow_spec(request.match_info["flow"])
    month = request.query.get("month")
    if month is not None:
        month = str(parse_month(month))
    return web.json_response(await flow_records_json(state, spec, month))


async def post_returns(request: web.Request) -> web.Response:
    """Fetch and ingest the return files (給付実績) of a month, as a job."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer_number(state)
    client = _client(request)
    data = await read_json(request)
    month = str(parse_month(data.get("month")))
    job_id = await start_return_ingest(state, client, month, system.system_id)
    return web.json_response({"job_id": job_id, "month": month, "status": "queued"}, status=202)


async def get_returns(request: web.Request) -> web.Response:
    """An ingest job and the return files of its month; ``?wait=N`` waits for it to end."""
    await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    job_id = _id(request, "job_id")
    return await _answer_when(
        request,
        state,
        lambda: returns_json(state, job_id),
        lambda body: body["status"] in ("done", "failed"),
    )


async def _stop_jobs(state: GatewayState) -> None:
    """Cancel this flow's background jobs and wait until each has ended."""
    ours = [t for t in state.tasks if t.get_name().startswith(TASK_PREFIX)]
    for task in ours:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*ours, return_exceptions=True)


def setup_kokuhoren(app: web.Application) -> None:
    """The mailbox client's lifecycle (on the root application).

    Call after the gateway's own lifecycle is registered: the client needs its state.
    """

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[GATEWAY_STATE]
        link = state.config.kokuhoren
        if link is None or state.config.insurer_number is None:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            session = client_session(state.config.tls)  # TLS when the network has it
            stack.push_async_callback(session.close)
            client = MailboxClient(
                link,
                state.config.insurer_number,
                state.keys,
                session,
                state.config.timing.http_timeout,
            )
            app[KOKUHOREN_CLIENT] = client
            stack.push_async_callback(_stop_jobs, state)
            await resume_jobs(state, client)
            yield

    app.cleanup_ctx.append(lifecycle)


def add_internal_routes(internal: web.Application) -> None:
    """Routes on the core systems' ``/internal`` face (paths relative to its prefix)."""
    internal.router.add_post("/v1/kokuhoren/recipient-changes", post_recipient_changes)
    internal.router.add_post("/v1/kokuhoren/transmissions", post_transmission)
    internal.router.add_get("/v1/kokuhoren/transmissions/{transmission_id}", get_transmission)
    internal.router.add_post("/v1/kokuhoren/transmissions/{transmission_id}/resend", post_resend)
    internal.router.add_post("/v1/kokuhoren/flows/{flow}/records", post_flow_records)
    internal.router.add_get("/v1/kokuhoren/flows/{flow}/records", get_flow_records)
    internal.router.add_post("/v1/kokuhoren/returns", post_returns)
    internal.router.add_get("/v1/kokuhoren/returns/{job_id}", get_returns)
