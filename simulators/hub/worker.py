"""The delivery worker: sends what the outbox holds, hears answers, concludes expired queries.

A provision request ends only with the provider's signed answer (or "held" for
manual review); anything else is retried until its permit and grace have
passed, then the query concludes ``expired`` with the hub's own signed refusal.
A conclusion is pushed to its requester until acknowledged (the requester can
also ask for it).  The worker is supervised: should it end with an error, it
restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.envelope import (
    HUB,
    Header,
    ProvisionAnswer,
    QueryRefusal,
    decode_message,
    encode_message,
    new_message_id,
)
from chukan.codecs.message_batch import BatchMessage
from chukan.gateway.core import db
from chukan.gateway.core.aio import wait_event
from chukan.gateway.core.message_exchange import SEND_BATCH, MessagePoster, PeerReply
from chukan.gateway.core.pacing import PeerLimit
from chukan.gateway.core.web import (
    accepted_request_id,
    current_request_id,
    request_id_bound,
    signature_header,
    verify_signature,
)
from chukan.simulators.hub import auth, outbox
from chukan.simulators.hub.conclusions import conclude
from chukan.simulators.hub.registry import Agency, load_agency, tls_server_name
from chukan.simulators.hub.state import HUB_STATE, HubState, utcnow

log = structlog.get_logger("chukan.hub")

DELIVERY_BATCH: Final = 64

#: A leased delivery: as claimed from the outbox, or as queued already leased.
Delivery = asyncpg.Record


@dataclass(frozen=True, slots=True)
class Known:
    """What routing a query established, kept for delivering it at once: both agencies
    (read for the query a moment before) and its permit."""

    provider: Agency
    requester: Agency
    permit_id: str


@dataclass(slots=True)
class Peer:
    """This process's deliveries to one agency: how they go, and whether it is away.

    Local pacing only (see :mod:`chukan.gateway.core.pacing`): nothing depends on it
    but how soon deliveries go out.  Deliveries go through the agency's ``poster``:
    alone while they come one at a time, several per exchange while they queue (each
    still its own message, claim and retry).  While the agency cannot be reached, one delivery
    (``probe``) keeps trying it with its backoff and the others are held back (not
    tried: N deliveries to a dead agency would cost N attempts per backoff); its
    first answer makes every one of them due at once.
    """

    limit: PeerLimit
    #: The delivery that found it unreachable, and keeps trying it; None: reachable.
    probe: int | None = None
    #: Until when the others are held back for ``probe`` (monotonic; each of its failed
    #: attempts extends it): should the probe end otherwise or go to another process,
    #: the next delivery to come after it probes.
    probe_until: float = 0.0
    #: Not known to answer (yet): at start, or since it was away or timed out.  The
    #: next answer makes its deliveries that wait out a backoff (or a hold) due at once.
    unsure: bool = True
    #: The agency's network face, as last read from the registry (rebuilt if it moves).
    poster: MessagePoster | None = None
    #: Posters of endpoints the agency left, finishing what they carry (closed at stop).
    retired: list[MessagePoster] = field(default_factory=list)


#: Each hub's peers (per state: tests run several hubs in one process).
_PEERS: Final[dict[int, dict[str, Peer]]] = {}

#: How long a delivery to an unreachable agency is held back at most: the probe's first
#: answer releases it at once; this bounds the wait should the probe's process be gone.
HOLD_WHILE_AWAY: Final = dt.timedelta(seconds=60)


def _peer(state: HubState, code: str) -> Peer:
    peers = _PEERS.setdefault(id(state), {})
    peer = peers.get(code)
    if peer is None:
        peer = peers[code] = Peer(PeerLimit(state.config.delivery_timeout))
    return peer


def _poster(state: HubState, peer: Peer, agency: Agency) -> MessagePoster:
    """The poster to ``agency``'s network face as the registry gives it now."""
    url = agency.endpoint.rstrip("/") + "/network/v1/messages"
    server_name = tls_server_name(state, agency.code, agency.endpoint)
    poster = peer.poster
    if poster is not None and (poster.url, poster.server_hostname) == (url, server_name):
        return poster
    if poster is not None:  # the agency moved: what the old one carries still ends
        peer.retired.append(poster)
    peer.poster = MessagePoster(
        state.session, url, limit=peer.limit, server_hostname=server_name, name=agency.code
    )
    return peer.poster


def can_deliver_now(state: HubState, code: str) -> bool:
    """Whether a delivery to ``code`` started now would go out soon: the agency is not away
    and no more than a batch waits in front of it (the next exchange takes them all).  If
    not, it is queued for the worker, which claims only what it can send soon."""
    peer = _peer(state, code)
    return peer.probe is None and (peer.poster is None or peer.poster.waiting <= SEND_BATCH)


def _waiting(state: HubState) -> int:
    """Deliveries of this process queued for an exchange to their agency not started yet."""
    return sum(p.poster.waiting for p in _PEERS.get(id(state), {}).values() if p.poster is not None)


def _unreachable(exc: BaseException) -> bool:
    """Refused, reset or cut off: the agency is away (a timeout only says it is slow)."""
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, TimeoutError)


async def _post(state: HubState, agency: Agency, delivery: Delivery) -> PeerReply | None:
    """One delivery to ``agency``, alone or with others queued for it, once a slot to it is
    free: its timeout starts then, so a backlog waits here (its deliveries are durable)
    instead of timing out at the peer.

    None: not attempted, the agency being away while another delivery probes it (held
    back until it answers again).  Raises ``aiohttp.ClientError`` or ``TimeoutError``
    (retried with backoff): an exchange that fails fails each of its deliveries, and one
    of them becomes the probe.
    """
    peer = _peer(state, agency.code)
    if peer.probe not in (None, delivery["id"]) and time.monotonic() < peer.probe_until:
        return None
    message = BatchMessage(
        delivery["body"],
        delivery["signature"],
        accepted_request_id(current_request_id()),  # the query's: bound for each delivery
    )
    try:
        reply = await _poster(state, peer, agency).post(message)
    except (aiohttp.ClientError, TimeoutError) as exc:
        peer.unsure = True
        probe = delivery["id"]
        if _unreachable(exc) and _probes(state, peer, probe):
            held = await outbox.hold_target(state.pool, agency.code, probe, HOLD_WHILE_AWAY)
            log.warning("agency_unreachable", agency=agency.code, held=held, probe=probe)
        raise
    if peer.unsure:
        peer.probe, peer.unsure = None, False
        due = await outbox.make_target_due(state.pool, agency.code)
        if due:
            state.wake.set()
            log.info("deliveries_resumed", agency=agency.code, count=due)
    return reply


def _probes(state: HubState, peer: Peer, delivery_id: int) -> bool:
    """After an attempt found the agency unreachable: this delivery probes it from now on,
    unless another does (whose turn is not over).  True when it became the probe: the
    others are then held back (its own backoff brings it round again, ``probe_until``
    being well after that)."""
    now = time.monotonic()
    config = state.config
    turn = 2 * (config.delivery_max_backoff + config.delivery_timeout) + 1
    if peer.probe == delivery_id:
        peer.probe_until = now + turn  # still away: its turn goes on
        return False
    if peer.probe is not None and now < peer.probe_until:
        return False  # another delivery probes it: this one is held when it comes again
    peer.probe, peer.probe_until = delivery_id, now + turn
    return True


async def _hold(state: HubState, delivery: Delivery) -> bool:
    """A delivery not attempted, its agency being away: held back until the probe's first
    answer (or ``HOLD_WHILE_AWAY``); True when it is to give up."""
    return await outbox.retry_later(state, delivery, "agency_away", hold=HOLD_WHILE_AWAY)


def _error_of(payload: bytes) -> tuple[str, str]:
    """An agency's error answer as (code, message); anything odd is ``provider_error``."""
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "provider_error", "the provider refused the request"
    if not code.replace("_", "").isalnum() or not code.islower():
        return "provider_error", "the provider refused the request"
    return code, message[:500]


# -- provision requests -----------------------------------------------------------------


async def _deliver_provision_request(
    state: HubState, delivery: Delivery, known: Known | None = None
) -> None:
    """Only a signed answer (or "held") ends a provision request; everything else is retried.

    ``known``: what routing the query established (its agencies, its permit), when this
    process routed it a moment ago; else read here.
    """
    provider = (
        known.provider if known is not None else await load_agency(state.pool, delivery["target"])
    )
    try:
        reply = await _post(state, provider, delivery)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    else:
        if reply is None:  # its agency is away
            if await _hold(state, delivery):
                await _expire(state, delivery, "agency_away")
            return
        failed = await _take_reply(state, delivery, provider, reply, known)
        if failed is None:
            return
        error = failed
    if await outbox.retry_later(state, delivery, error):
        await _expire(state, delivery, error)


async def _take_reply(
    state: HubState, delivery: Delivery, provider: Agency, reply: PeerReply, known: Known | None
) -> str | None:
    """The provider's reply to a provision request: None if it ends the delivery (a signed
    answer, or "held"), else the error to retry it with."""
    if reply.status == 200:
        error, answer = await _accept_answer(state, delivery, provider, reply, known)
        if error is None and answer is not None:  # leased to us: delivered at once
            await _deliver_answer(state, answer, None if known is None else known.requester)
        return error
    if reply.status == 202:
        await _held(state, delivery, provider)
        return None
    return f"HTTP {reply.status} {_error_of(reply.body)[0]}"


async def _held(state: HubState, delivery: Delivery, provider: Agency) -> None:
    """The provider holds the request for manual review: its answer comes later, on its own."""
    async with state.pool.acquire() as conn, conn.transaction():
        if await outbox.finish(conn, delivery, "done"):
            await conn.execute(
                "INSERT INTO hub_record_events (query_id, kind, outcome) "
                "SELECT $1, 'held', 'held' WHERE NOT EXISTS (SELECT 1 FROM hub_record_events "
                "WHERE query_id = $1 AND kind = 'concluded') ON CONFLICT DO NOTHING",
                delivery["query_id"],
            )
    log.info("provision_held", query_id=delivery["query_id"], provider=provider.code)


async def _accept_answer(
    state: HubState,
    delivery: Delivery,
    provider: Agency,
    reply: PeerReply,
    known: Known | None,
) -> tuple[str | None, asyncpg.Record | None]:
    """Check the provider's signed answer and conclude with it: an error text to retry,
    or the answer's delivery, leased to this process, when this conclusion won."""
    try:
        signature = reply.signature
        verify_signature(signature, reply.body, provider.signing_keys)
        assert signature is not None  # verified: there is one
        envelope = decode_message(reply.body)
    except Exception as exc:  # e.g. a key the registry does not list yet: ask again later
        log.warning("provider_answer_unverified", query_id=delivery["query_id"], error=str(exc))
        return getattr(exc, "code", "provider_answer_invalid"), None
    body = envelope.body
    if known is not None:
        requester, permit_id = known.requester.code, known.permit_id
    else:
        record = await state.pool.fetchrow(
            "SELECT requester, permit_id FROM hub_records WHERE query_id = $1",
            delivery["query_id"],
        )
        assert record is not None
        requester, permit_id = record["requester"], record["permit_id"]
    if (
        not isinstance(body, ProvisionAnswer)
        or body.query_id != delivery["query_id"]
        or envelope.header.sender != provider.code
        or body.permit_id != permit_id
        or envelope.header.receiver != requester
    ):
        log.warning("provider_answer_mismatch", query_id=delivery["query_id"])
        return "provider_answer_mismatch", None
    leased: list[asyncpg.Record] = []
    # Delivered at once by this task if a slot to the requester is free; else queued
    # for the worker, which claims only what it can send.
    at_once = can_deliver_now(state, requester)
    await conclude(
        state,
        body.query_id,
        body.outcome,
        body.reason_code,
        requester=requester,
        sender=provider.code,
        message=reply.body,
        signature=signature,
        header=envelope.header,
        direction="in",
        permit_id=body.permit_id,
        delivery=delivery,
        lease_answer=(outbox.lease(state.config), leased.append) if at_once else None,
    )
    return None, leased[0] if leased else None


async def _expire(state: HubState, delivery: Delivery, error: str) -> None:
    """The provider never answered while the permit and its grace lived: conclude expired."""
    record = await state.pool.fetchrow(
        "SELECT requester, permit_id FROM hub_records WHERE query_id = $1", delivery["query_id"]
    )
    assert record is not None
    query_id = delivery["query_id"]
    refusal = QueryRefusal(
        query_id, "provider_unreachable", "the provider did not answer in time", record["permit_id"]
    )
    header = Header(new_message_id(), "QueryRefusal", HUB, record["requester"], utcnow())
    message = encode_message(header, refusal)
    await conclude(
        state,
        query_id,
        "expired",
        "provider_unreachable",
        requester=record["requester"],
        sender=HUB,
        message=message,
        signature=signature_header(state.keys.signing, message),
        header=header,
        direction="out",
        permit_id=record["permit_id"],
        delivery=delivery,
        finish_status="failed",
    )
    log.warning("delivery_expired", delivery=delivery["id"], query_id=query_id, error=error)


# -- conclusions to requesters ----------------------------------------------------------


async def _deliver_answer(
    state: HubState, delivery: Delivery, requester: Agency | None = None
) -> None:
    """A conclusion to its requester, until acknowledged (the requester can also ask)."""
    if requester is None:
        requester = await load_agency(state.pool, delivery["target"])
    try:
        reply = await _post(state, requester, delivery)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
        give_up = await outbox.retry_later(state, delivery, error)
    else:
        if reply is None:  # its agency is away
            error = "agency_away"
            give_up = await _hold(state, delivery)
        elif reply.status < 300:
            await outbox.finish(state.pool, delivery, "done")
            log.info("answer_delivered", query_id=delivery["query_id"])
            return
        else:
            error = f"HTTP {reply.status} {_error_of(reply.body)[0]}"
            give_up = await outbox.retry_later(state, delivery, error)
    if give_up:
        await outbox.finish(state.pool, delivery, "failed", error)
        log.warning("answer_undelivered", query_id=delivery["query_id"], error=error)


# -- the loop and its supervision -------------------------------------------------------


async def _deliver_one(state: HubState, delivery: Delivery, known: Known | None = None) -> None:
    """One attempt, as part of the query's request: its id is logged and sent on."""
    with request_id_bound(delivery["request_id"]):
        await _attempt(state, delivery, known)


async def _attempt(state: HubState, delivery: Delivery, known: Known | None) -> None:
    try:
        if delivery["kind"] == "provision_request":
            await _deliver_provision_request(state, delivery, known)
        else:
            await _deliver_answer(state, delivery)
    except Exception as exc:  # a bug or an outage in one delivery must not stop the others
        if db.is_database_error(exc):
            db.note_unavailable(exc)  # logged once per outage
        else:
            log.exception("delivery_crashed", delivery=delivery["id"])
        with contextlib.suppress(Exception):  # if even this fails, the lease runs out
            await outbox.retry_later(state, delivery, "internal_error")


async def _delivery_loop(state: HubState) -> None:
    """Keep up to ``DELIVERY_BATCH`` deliveries in flight, claiming more as each ends.

    Waiting for a whole batch before claiming again would hold every new query
    behind the slowest delivery of the previous batch.
    """
    running: set[asyncio.Task[None]] = set()
    failing = False

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        state.wake.set()

    try:
        while True:
            state.wake.clear()
            # Deliveries waiting for a slot to a slow agency count as running: the
            # worker claims (and leases) only what it can send soon.
            free = DELIVERY_BATCH - len(running) - _waiting(state)
            due: list[asyncpg.Record] = []
            if free > 0:
                try:
                    due = await outbox.claim_due(state, limit=free)
                except Exception as exc:  # the worker never ends on an error
                    if db.is_database_error(exc):
                        db.note_unavailable(exc)  # logged once per outage
                    elif not failing:
                        log.exception("delivery_pass_failed")
                    failing = True
                else:
                    if failing:
                        log.info("delivery_pass_recovered")
                    failing = False
            for delivery in due:
                task = asyncio.create_task(_deliver_one(state, delivery))
                running.add(task)
                task.add_done_callback(finished)
            if due and len(due) == free:
                continue  # more may be due at once
            await wait_event(state.wake, 0.5)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


#: Deliveries started at once by the process that queued them, per hub (stopped with it).
_INLINE: Final[dict[int, set[asyncio.Task[None]]]] = {}


def deliver_now(state: HubState, delivery: Delivery, known: Known) -> None:
    """Start a delivery this process queued already leased to itself (the worker's claim is
    skipped); should the process die, the lease runs out and a worker delivers it."""
    running = _INLINE.setdefault(id(state), set())
    # In a context of its own, as the worker's: not the routing request's log context.
    task = asyncio.create_task(_deliver_one(state, delivery, known), context=contextvars.Context())
    running.add(task)
    task.add_done_callback(running.discard)


def start_worker(state: HubState) -> None:
    """Run the delivery worker, supervised: should it ever end with an error, it restarts."""
    worker = asyncio.create_task(_delivery_loop(state), name="hub-deliveries")

    def ended(task: asyncio.Task[None]) -> None:
        if task.cancelled() or state.worker is not task:
            return  # stopped with the hub
        log.error("background_task_failed", task="hub-deliveries", exc_info=task.exception())
        start_worker(state)

    worker.add_done_callback(ended)
    state.worker = worker


async def stop_worker(state: HubState) -> None:
    """Stop the worker for good (it is not restarted) and wait for its deliveries to end."""
    worker, state.worker = state.worker, None
    inline = _INLINE.pop(id(state), set())
    for task in inline:
        task.cancel()
    await asyncio.gather(*inline, return_exceptions=True)
    if worker is not None:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    peers = _PEERS.pop(id(state), {})
    # Their deliveries are durable: an exchange cut off now is retried when the lease ends.
    posters = [p for peer in peers.values() for p in (peer.poster, *peer.retired) if p]
    await asyncio.gather(*(p.close(cancel=True) for p in posters), return_exceptions=True)


async def retry_deliveries(request: web.Request) -> web.Response:
    """Operator lever: every pending delivery is due now (after an outage was fixed)."""
    auth.require_admin(request)
    auth.require_operator(request)
    state = request.config_dict[HUB_STATE]
    count = await outbox.make_all_due(state.pool)
    state.wake.set()
    log.info("deliveries_rescheduled", count=count)
    return web.json_response({"rescheduled": count})
