"""The gateway's client of the hub: signed envelopes out, signed answers checked in.

Every call made while handling a request (or work done for a stored one, see
:func:`~chukan.gateway.core.web.request_id_bound`) sends its request id as
``X-Request-Id``, so the hub, the provider and their records name the same id.
Envelopes go through one :class:`~chukan.gateway.core.message_exchange.MessagePoster`:
alone when they come one at a time, several per HTTPS exchange while they queue behind
the exchanges in flight (each still signed, answered and retried on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from chukan.codecs.envelope import HUB, Body, Envelope, Header, decode_message, encode_message
from chukan.codecs.envelope import new_message_id as _new_message_id
from chukan.codecs.message_batch import BatchMessage
from chukan.gateway.core.errors import (
    AgencyUnknownError,
    EnrolmentRefusedError,
    MessageSignatureError,
    MisaddressedError,
    UpstreamError,
)
from chukan.gateway.core.message_exchange import SEND_BATCH, MessagePoster
from chukan.gateway.core.pacing import PeerLimit
from chukan.gateway.core.web import (
    REQUEST_ID_HEADER,
    accepted_request_id,
    current_request_id,
    signature_header,
    verify_signature,
)
from chukan.keys import PublicSigningKey, SigningKeyPair, b64d, public_signing_key

PEER_KEY_TTL: Final = 60.0


def _traced(headers: dict[str, str] | None = None, request_id: str | None = None) -> dict[str, str]:
    """``headers`` plus the request id this call is made for, when there is one."""
    out = dict(headers or {})
    request_id = request_id or current_request_id()
    if request_id is not None:
        out[REQUEST_ID_HEADER] = request_id
    return out


@dataclass(frozen=True, slots=True)
class HubReply:
    status: int
    body: bytes
    signature: str | None

    def error(self) -> tuple[str, str]:
        """The stable error code and message of a refusal (or a generic one)."""
        try:
            error = json.loads(self.body)["error"]
            return str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            return "hub_error", f"hub answered HTTP {self.status}"


@dataclass
class HubClient:
    base_url: str
    agency_code: str
    signer: SigningKeyPair
    hub_key: PublicSigningKey
    session: aiohttp.ClientSession
    timeout: float
    _peer_keys: dict[str, tuple[float, dict[str, PublicSigningKey]]] = field(default_factory=dict)
    #: How many exchanges this process has at the hub at once (local pacing only, see
    #: :mod:`~chukan.gateway.core.pacing`); the gateway's state holds the same limit.
    limit: PeerLimit = field(init=False)
    _poster: MessagePoster = field(init=False)

    def __post_init__(self) -> None:
        self.limit = PeerLimit(self.timeout)
        self._poster = MessagePoster(
            self.session,
            self.base_url.rstrip("/") + "/network/v1/messages",
            limit=self.limit,
            name="hub",
        )

    def room(self) -> int:
        """Envelopes that would go out with the next exchange: what may be handed over now.

        0 while an exchange already waits for a slot or a whole batch waits for one:
        a busy hub's backlog then stays in our database (the sweep), not in memory here
        where a claim could lapse before it is sent.
        """
        if self.limit.waiting:
            return 0
        return max(0, SEND_BATCH - self._poster.waiting)

    async def close(self) -> None:
        """Send what is queued (within one timeout) before the session closes."""
        # What is not sent by then is durable: the sweep sends it again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poster.close(), self.timeout)

    @property
    def trusted_hub(self) -> dict[str, PublicSigningKey]:
        return {self.hub_key.key_id: self.hub_key}

    def envelope(self, body: Body, receiver: str = HUB) -> bytes:
        header = Header(
            _new_message_id(),
            type(body).__name__,
            self.agency_code,
            receiver,
            dt.datetime.now(dt.UTC),
        )
        return encode_message(header, body)

    async def send(self, body: Body, *, request_id: str | None = None) -> HubReply:
        """POST one signed envelope to the hub, alone or with others queued at the same
        moment; network failures (of its exchange) become UpstreamError.

        ``request_id``: the id of the request this is sent for (default: the current one).
        """
        message = self.envelope(body)
        # A malformed id is dropped as the hub would drop it alone (and a batch refuses it).
        traced = accepted_request_id(request_id or current_request_id())
        try:
            reply = await self._poster.post(
                BatchMessage(message, signature_header(self.signer, message), traced)
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"the hub could not be reached ({type(exc).__name__})") from None
        return HubReply(reply.status, reply.body, reply.signature)

    def open_reply(self, reply: HubReply) -> Envelope:
        """Verify a signed envelope the hub answered with, addressed to us."""
        verify_signature(reply.signature, reply.body, self.trusted_hub)
        envelope = decode_message(reply.body)
        if envelope.header.sender != HUB or envelope.header.receiver != self.agency_code:
            raise MessageSignatureError("hub reply is not addressed to this agency")
        return envelope

    async def verify_sender(self, envelope: Envelope, raw: bytes, signature: str | None) -> None:
        """Addressed to us and signed by its sender: the hub, or a peer agency's current key.

        A peer's key unknown here may be a rotation: the registry is asked once more.
        """
        header = envelope.header
        if header.receiver != self.agency_code:
            raise MisaddressedError("message is not addressed to this agency")
        if header.sender == HUB:
            verify_signature(signature, raw, self.trusted_hub)
            return
        keys = await self.peer_signing_keys(header.sender)
        try:
            verify_signature(signature, raw, keys)
        except MessageSignatureError:
            keys = await self.peer_signing_keys(header.sender, refresh=True)
            verify_signature(signature, raw, keys)

    async def get(self, path: str) -> bytes:
        try:
            async with self.session.get(
                self.base_url.rstrip("/") + path,
                headers=_traced(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                body = await response.read()
                if response.status == 404:
                    raise AgencyUnknownError(f"hub has no {path}")
                if response.status != 200:
                    raise UpstreamError(f"hub answered HTTP {response.status} for {path}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"the hub could not be reached ({type(exc).__name__})") from None

    async def peer_signing_keys(
        self, agency: str, *, refresh: bool = False
    ) -> dict[str, PublicSigningKey]:
        """A peer agency's verification keys from the hub registry, cached briefly."""
        cached = self._peer_keys.get(agency)
        if cached is not None and not refresh and time.monotonic() - cached[0] < PEER_KEY_TTL:
            return cached[1]
        data: Any = json.loads(await self.get(f"/network/v1/agencies/{agency}"))
        keys = {
            k["key_id"]: public_signing_key(k["key_id"], b64d(k["public"]))
            for k in data.get("keys", [])
            if k.get("purpose") == "sig"
        }
        self._peer_keys[agency] = (time.monotonic(), keys)
        return keys

    async def enrol(self, token: str, payload: dict[str, Any]) -> None:
        try:
            async with self.session.post(
                self.base_url.rstrip("/") + "/admin/v1/agencies",
                json=payload,
                headers=_traced({"Authorization": f"Bearer {token}"}),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if 400 <= response.status < 500:
                    # The hub's code says which: no token, the admin token, revoked, another's.
                    code, message = HubReply(response.status, await response.read(), None).error()
                    raise EnrolmentRefusedError(
                        f"hub refused enrolment: HTTP {response.status} {code}: {message}"
                    )
                if response.status not in (200, 201):
                    raise UpstreamError(f"hub could not enrol us now: HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"the hub could not be reached ({type(exc).__name__})") from None
