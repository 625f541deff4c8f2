"""HTTP plumbing shared by the gateway and the simulators.

* :func:`error_middleware` maps every package's exceptions to
  ``{"error": {"code", "message"}}`` with a stable status (see ``errors.status_for``);
  a database that is unreachable or going away is 503 ``database_unavailable``
  with ``Retry-After``, noted in ``db``'s tracker (one event per outage, no
  traceback per request);
* signed network messages: the sender signs the exact body bytes with its
  Ed25519 key and names the key in the ``Chukan-Signature`` header.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from aiohttp import web

from chukan.codecs.errors import CodecError
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    BadRequestError,
    GatewayError,
    MessageSignatureError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
    status_for,
)
from chukan.keys import KeyFormatError, PublicSigningKey, SigningKeyPair, b64d, b64e

log = structlog.get_logger("chukan.http")

#: The authenticated caller of a request (core-system id), for logs and records.
CALLER: Final = web.RequestKey("caller", str)

SIGNATURE_HEADER: Final = "Chukan-Signature"
XML_CONTENT_TYPE: Final = "application/xml"
DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
#: Seconds a client is asked to wait after 503 ``database_unavailable``.
DATABASE_RETRY_AFTER: Final = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:  # e.g. per-record errors of a batch, never personal values
        error["details"] = details
    return web.json_response({"error": error}, status=status)


@web.middleware
async def private_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers that may carry personal data are never stored by a cache on the way."""
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One place where exceptions become HTTP answers, and where they are logged."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
                exc.status, "http_error"
            )
            log.info("request_refused", path=request.path, status=exc.status, code=code)
            return error_response(exc.status, code, exc.reason)
        raise
    except Exception as exc:
        status, code = status_for(exc)
        if db.is_database_error(exc):  # ours; a peer's relayed code is the peer's outage
            # Logged once per outage by the tracker; per request one line, no traceback.
            db.note_unavailable(exc)
            log.warning(
                "request_failed",
                path=request.path,
                status=status,
                code=code,
                error=type(exc).__name__,
            )
            message = (
                exc.message
                if isinstance(exc, GatewayError)
                else "the database is unavailable; try again in a few seconds"
            )
            response = error_response(status, code, message)
            response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
            return response
        if status >= 500 and isinstance(exc, GatewayError) and status != 500:
            # An expected condition with its own code (hub unreachable, no valid list):
            # worth a warning, not a traceback.
            log.warning("request_failed", path=request.path, status=status, code=code)
            message = exc.message
        elif status >= 500:
            log.exception("request_failed", path=request.path, code=code)
            message = "internal error" if code == "internal_error" else str(exc)
        else:
            message = _public_message(exc)
            log.info(
                "request_refused",
                path=request.path,
                method=request.method,
                status=status,
                code=code,
                caller=request.get(CALLER),
            )
        return error_response(status, code, message, getattr(exc, "details", None))
    log.debug(
        "request_done",
        path=request.path,
        status=response.status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


def _public_message(exc: Exception) -> str:
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, CodecError):
        return str(exc)
    return str(exc) or type(exc).__name__


async def read_body(request: web.Request, *, limit: int = DEFAULT_MAX_BODY) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"body larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError(f"body larger than {limit} bytes")
    return bytes(data)


async def read_xml(request: web.Request, *, limit: int = DEFAULT_MAX_BODY) -> bytes:
    if request.content_type not in ("application/xml", "text/xml"):
        raise UnsupportedMediaError("send XML with Content-Type: application/xml")
    return await read_body(request, limit=limit)


async def read_json(request: web.Request, *, limit: int = 256 * 1024) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaError("send JSON with Content-Type: application/json")
    raw = await read_body(request, limit=limit)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError("body must be a JSON object")
    return value


def require_str(data: Mapping[str, Any], name: str, *, max_length: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"field {name!r} is required and must be a string")
    if len(value) > max_length:
        raise ValidationError(f"field {name!r} is longer than {max_length} characters")
    return value


def optional_str(data: Mapping[str, Any], name: str, *, max_length: int = 256) -> str | None:
    if data.get(name) is None:
        return None
    return require_str(data, name, max_length=max_length)


# -- signed messages ------------------------------------------------------------------


def signature_header(signer: SigningKeyPair, body: bytes) -> str:
    return f"keyId={signer.key_id};sig={b64e(signer.sign(body))}"


def parse_signature_header(value: str | None) -> tuple[str, bytes]:
    if not value:
        raise MessageSignatureError("message is not signed")
    fields: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, content = part.strip().partition("=")
        if not sep or name in fields:
            raise MessageSignatureError("malformed signature header")
        fields[name] = content
    if set(fields) != {"keyId", "sig"}:
        raise MessageSignatureError("malformed signature header")
    try:
        return fields["keyId"], b64d(fields["sig"])
    except KeyFormatError:
        raise MessageSignatureError("malformed signature header") from None


def verify_signature(
    header_value: str | None, body: bytes, trusted: Mapping[str, PublicSigningKey]
) -> PublicSigningKey:
    """Check the body against the named key, which must be one of ``trusted``."""
    key_id, signature = parse_signature_header(header_value)
    key = trusted.get(key_id)
    if key is None:
        raise MessageSignatureError("message is signed with a key that is not trusted")
    try:
        key.verify(body, signature)
    except Exception:
        raise MessageSignatureError("message signature does not verify") from None
    return key


def signed_xml_response(signer: SigningKeyPair, body: bytes, status: int = 200) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type=XML_CONTENT_TYPE,
        headers={SIGNATURE_HEADER: signature_header(signer, body)},
    )
