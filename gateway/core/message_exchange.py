"""Network messages between the hub and a gateway: several per HTTPS exchange under load.

Each exchange costs both ends a request's TLS records, HTTP parsing, middlewares
and access log, whatever it carries.  A :class:`MessagePoster` sends one peer's
messages: alone when they come one at a time (a batch of one is the plain
``POST …/messages`` with its signature header, as before), several in one
``POST …/messages/batch`` (:mod:`chukan.codecs.message_batch`) when they queue up
behind the exchanges in flight — a group commit for HTTP.  The receiver
(:func:`serve_batch`) handles each message of a batch exactly as it would alone,
concurrently, and answers each as it would have: its status, body and signature.

Nothing depends on how messages were grouped: each keeps its own claim, idempotency
and retry at both ends, and a batch that fails as a whole fails each of its messages
the way a single failed exchange would (the sender retries each on its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from chukan.codecs.errors import MessageBatchError
from chukan.codecs.message_batch import (
    BATCH_CONTENT_TYPE,
    MAX_BATCH_MESSAGES,
    BatchMessage,
    BatchReply,
    decode_batch,
    decode_replies,
    encode_batch,
    encode_replies,
)
from chukan.gateway.core.batching import Batcher
from chukan.gateway.core.errors import UnsupportedMediaError
from chukan.gateway.core.pacing import PeerLimit
from chukan.gateway.core.web import (
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    XML_CONTENT_TYPE,
    error_answer,
    error_response,
    http_error_answer,
    read_body,
    request_id_bound,
)

log = structlog.get_logger("chukan.http")

#: The most messages a sender puts in one exchange.
SEND_BATCH: Final = 32
#: Exchanges in flight to one peer at once: the next batch fills while they run.
SEND_IN_FLIGHT: Final = 2
#: The batch route, beside each ``…/messages`` route.
BATCH_SUFFIX: Final = "/batch"


@dataclass(frozen=True, slots=True)
class PeerReply:
    """A peer's answer to one message: as read from a plain exchange or from a batch."""

    status: int
    body: bytes
    signature: str | None
    content_type: str


class MessagePoster:
    """Messages to one peer's ``…/messages`` route, several per exchange while they queue.

    ``limit`` paces the exchanges (each takes one slot; see :mod:`pacing`).  A
    connection failure or a timeout of an exchange is raised to each of its messages'
    senders (``aiohttp.ClientError`` or ``TimeoutError``), as for a plain POST.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        limit: PeerLimit,
        server_hostname: str | None = None,
        max_batch: int = SEND_BATCH,
        in_flight: int = SEND_IN_FLIGHT,
        name: str = "messages",
    ) -> None:
        self.session = session
        self.url = url
        self.limit = limit
        self.server_hostname = server_hostname
        self._batcher: Batcher[BatchMessage, PeerReply] = Batcher(
            self._exchange,
            max_batch=min(max_batch, MAX_BATCH_MESSAGES),
            name=f"post-{name}",
            in_flight=in_flight,
        )

    @property
    def waiting(self) -> int:
        """Messages queued for an exchange not started yet."""
        return self._batcher.waiting

    async def post(self, message: BatchMessage) -> PeerReply:
        """The peer's answer to ``message``, sent alone or with others."""
        return await self._batcher.submit(message)

    async def close(self, *, cancel: bool = False) -> None:
        """Wait for the exchanges in flight; ``cancel``: cut them off (their messages'
        senders see ``CancelledError``, as a cancelled plain POST's would)."""
        await self._batcher.close(cancel=cancel)

    async def _exchange(self, messages: Sequence[BatchMessage]) -> list[PeerReply]:
        async with self.limit.slot():
            if len(messages) == 1:
                return [await self._alone(messages[0])]
            return await self._together(messages)

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.limit.timeout)

    async def _alone(self, message: BatchMessage) -> PeerReply:
        headers = {"Content-Type": XML_CONTENT_TYPE}
        if message.signature is not None:
            headers[SIGNATURE_HEADER] = message.signature
        if message.request_id is not None:
            headers[REQUEST_ID_HEADER] = message.request_id
        async with self.session.post(
            self.url,
            data=message.body,
            headers=headers,
            timeout=self._timeout(),
            server_hostname=self.server_hostname,
        ) as response:
            return PeerReply(
                response.status,
                await response.read(),
                response.headers.get(SIGNATURE_HEADER),
                response.content_type,
            )

    async def _together(self, messages: Sequence[BatchMessage]) -> list[PeerReply]:
        async with self.session.post(
            self.url + BATCH_SUFFIX,
            data=encode_batch(messages),
            headers={"Content-Type": BATCH_CONTENT_TYPE},
            timeout=self._timeout(),
            server_hostname=self.server_hostname,
        ) as response:
            body = await response.read()
            status, content_type = response.status, response.content_type
        if status in _CONTAINER_REFUSED or _refused_as_batch(status, body):
            # The container, not a message, was refused (too large, its shape): a refusal
            # no message would get alone must not conclude any of them; each goes alone.
            log.warning("message_batch_refused", url=self.url, status=status, size=len(messages))
            return list(await asyncio.gather(*(self._alone(m) for m in messages)))
        if status != 200:  # the batch refused as a whole: each message hears why
            return [PeerReply(status, body, None, content_type)] * len(messages)
        try:
            replies = decode_replies(body, len(messages))
        except MessageBatchError as exc:
            log.warning("batch_reply_invalid", url=self.url, error=str(exc))
            refusal = error_response(502, exc.code, str(exc))
            assert isinstance(refusal.body, bytes)
            return [PeerReply(502, refusal.body, None, "application/json")] * len(messages)
        return [PeerReply(r.status, r.body, r.signature, r.content_type) for r in replies]


#: Whole-batch answers that refuse the container itself (its size, its media type), or
#: say the peer has no batch route (not upgraded yet).
_CONTAINER_REFUSED: Final = frozenset({404, 405, 413, 415})


def _refused_as_batch(status: int, body: bytes) -> bool:
    """400 ``message_batch_invalid``: the container's shape, which no message has alone."""
    return status == 400 and MessageBatchError.code.encode() in body


#: Handles one message as its route would alone: its bytes and signature header value.
MessageHandler = Callable[[bytes, str | None], Awaitable[web.StreamResponse]]


async def serve_batch(request: web.Request, handle: MessageHandler) -> web.Response:
    """``POST …/messages/batch``: each message handled as alone, concurrently, and
    answered in order with what it would have been answered alone."""
    if request.content_type != BATCH_CONTENT_TYPE:
        raise UnsupportedMediaError(f"send a message batch with Content-Type: {BATCH_CONTENT_TYPE}")
    messages = decode_batch(await read_body(request))
    replies = await asyncio.gather(*(_serve_one(request, handle, m) for m in messages))
    return web.Response(body=encode_replies(replies), content_type=BATCH_CONTENT_TYPE)


async def _serve_one(
    request: web.Request, handle: MessageHandler, message: BatchMessage
) -> BatchReply:
    with request_id_bound(message.request_id):
        try:
            response = await handle(message.body, message.signature)
        except web.HTTPException as exc:
            response = http_error_answer(request, exc)
        except Exception as exc:
            response = error_answer(request, exc)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        raise TypeError("a message's handler answers with a whole web.Response")
    return BatchReply(
        response.status,
        response.body,
        response.content_type,
        response.headers.get(SIGNATURE_HEADER),
    )
