"""Several network messages in one HTTPS exchange, each exactly as it travels alone.

Under load the hub and a gateway exchange many small envelopes with each other at
the same moment; each exchange alone costs a request's TLS records, HTTP parsing,
middleware and access log at both ends.  A batch carries several messages, each
with its detached signature (the ``Chukan-Signature`` header's value) and request
id, over the envelope's exact bytes, so the receiver checks and handles each one as
it would alone — its claim, its idempotency, its answer — and answers with one
reply per message, in order.  A batch is a container only: nothing about a message
depends on the messages beside it.

The container is JSON (``application/json``) with each body in base64::

    {"messages": [{"body": "<base64>", "signature": "...", "request_id": "..."}]}
    {"replies": [{"status": 202, "content_type": "application/json",
                  "body": "<base64>", "signature": null}]}

Pure: bytes in, values out; hostile input raises :class:`MessageBatchError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from chukan.codecs.errors import MessageBatchError

#: The most messages one batch may carry (the sender's batches are smaller).
MAX_BATCH_MESSAGES: Final = 64
#: The media type of both directions.
BATCH_CONTENT_TYPE: Final = "application/json"
#: A signature header value (``keyId=…;sig=…``, checked by the receiver), bounded.
_SIGNATURE: Final = re.compile(r"^[\x20-\x7e]{1,400}$")
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_CONTENT_TYPE: Final = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BatchMessage:
    """One message of a batch: the envelope's bytes, its signature, its request id."""

    body: bytes
    signature: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchReply:
    """The receiver's answer to one message, as it would have answered it alone."""

    status: int
    body: bytes
    content_type: str
    signature: str | None = None


def encode_batch(messages: Sequence[BatchMessage]) -> bytes:
    """The batch a sender posts (1 to :data:`MAX_BATCH_MESSAGES` messages)."""
    if not 1 <= len(messages) <= MAX_BATCH_MESSAGES:
        raise MessageBatchError(f"a batch carries 1 to {MAX_BATCH_MESSAGES} messages")
    return json.dumps(
        {
            "messages": [
                {
                    "body": base64.b64encode(m.body).decode("ascii"),
                    "signature": m.signature,
                    "request_id": m.request_id,
                }
                for m in messages
            ]
        },
        separators=(",", ":"),
    ).encode("ascii")


def decode_batch(raw: bytes) -> list[BatchMessage]:
    """The messages of a posted batch, each checked for shape; never half a batch."""
    entries = _list_of(raw, "messages")
    if not 1 <= len(entries) <= MAX_BATCH_MESSAGES:
        raise MessageBatchError(f"a batch carries 1 to {MAX_BATCH_MESSAGES} messages")
    messages = []
    for index, entry in enumerate(entries):
        where = f"messages[{index}]"
        _require_keys(entry, {"body", "signature", "request_id"}, where)
        messages.append(
            BatchMessage(
                body=_body(entry, where),
                signature=_optional(entry, "signature", _SIGNATURE, where),
                request_id=_optional(entry, "request_id", _REQUEST_ID, where),
            )
        )
    return messages


def encode_replies(replies: Sequence[BatchReply]) -> bytes:
    """The receiver's answer to a batch: one reply per message, in order."""
    return json.dumps(
        {
            "replies": [
                {
                    "status": r.status,
                    "content_type": r.content_type,
                    "body": base64.b64encode(r.body).decode("ascii"),
                    "signature": r.signature,
                }
                for r in replies
            ]
        },
        separators=(",", ":"),
    ).encode("ascii")


def decode_replies(raw: bytes, expected: int) -> list[BatchReply]:
    """The replies to a batch of ``expected`` messages; anything else is refused whole."""
    entries = _list_of(raw, "replies")
    if len(entries) != expected:
        raise MessageBatchError(f"{len(entries)} replies to a batch of {expected} messages")
    replies = []
    for index, entry in enumerate(entries):
        where = f"replies[{index}]"
        _require_keys(entry, {"status", "content_type", "body", "signature"}, where)
        status = entry.get("status")  # absent: refused below, never a KeyError
        if type(status) is not int or not 100 <= status <= 599:
            raise MessageBatchError("status must be an HTTP status code", where=where)
        content_type = _optional(entry, "content_type", _CONTENT_TYPE, where)
        replies.append(
            BatchReply(
                status=status,
                body=_body(entry, where),
                content_type=content_type or "application/octet-stream",
                signature=_optional(entry, "signature", _SIGNATURE, where),
            )
        )
    return replies


def _list_of(raw: bytes, name: str) -> list[Any]:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageBatchError(f"a batch is a JSON object: {exc}") from None
    if not isinstance(document, dict) or set(document) != {name}:
        raise MessageBatchError(f"a batch is a JSON object with one member, {name!r}")
    entries = document[name]
    if not isinstance(entries, list):
        raise MessageBatchError(f"{name!r} must be a list")
    return entries


def _require_keys(entry: object, allowed: set[str], where: str) -> None:
    if not isinstance(entry, dict) or "body" not in entry or not set(entry) <= allowed:
        raise MessageBatchError(
            f"each entry is an object with {', '.join(sorted(allowed))}", where=where
        )


def _body(entry: dict[str, Any], where: str) -> bytes:
    body = entry["body"]
    if not isinstance(body, str):
        raise MessageBatchError("body must be base64 text", where=where)
    try:
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MessageBatchError("body is not valid base64", where=where) from None


def _optional(entry: dict[str, Any], name: str, pattern: re.Pattern[str], where: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    # fullmatch: "$" alone would let a trailing newline through.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MessageBatchError(f"{name} is malformed", where=where)
    return value
