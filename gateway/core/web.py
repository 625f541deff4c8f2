"""HTTP plumbing shared by the gateway and the simulators.

* :func:`error_middleware` maps every package's exceptions to
  ``{"error": {"code", "message"}}`` with a stable status (see ``errors.status_for``);
  a database that is unreachable or going away is 503 ``database_unavailable``
  with ``Retry-After``, noted in ``db``'s tracker (one event per outage, no
  traceback per request);
* signed network messages: the sender signs the exact body bytes with its
  Ed25519 key and names the key in the ``Chukan-Signature`` header;
* :func:`access_log_middleware` (outermost on every server): the request id
  (``X-Request-Id``, taken from the caller when well-formed, else generated;
  echoed, bound to every log event of the request and sent on to the next hop),
  one ``http_request`` event per request, the HTTP metrics, and the release of
  a large-body slot;
* :class:`BodyGate`: a process holds at most ``ops.max_large_bodies`` bodies
  larger than ``ops.large_body_bytes`` at once (:func:`read_body` waits for a
  slot, then 503 ``busy``); the slot is held until the request is answered,
  since the handler keeps the body (and what it decodes from it) until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from chukan.codecs.errors import CodecError
from chukan.gateway.core import db
from chukan.gateway.core.errors import (
    BadRequestError,
    BodyIncompleteError,
    BusyError,
    GatewayError,
    MessageSignatureError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
    status_for,
)
from chukan.gateway.core.metrics import HttpMetrics
from chukan.gateway.core.settings import OpsConfig
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

# -- request ids, the access log, metrics ---------------------------------------------------

REQUEST_ID_HEADER: Final = "X-Request-Id"
#: What a caller's request id may be: short, and safe in a header, a log line and SQL.
REQUEST_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
#: The id of the request being handled (the one sent on to the next hop).
REQUEST_ID: Final = web.RequestKey("request_id", str)
_CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("chukan_request_id", default=None)
#: The metrics a server's access log middleware counts into.
HTTP_METRICS: Final = web.AppKey("http_metrics", HttpMetrics)
#: Which server answered (``gateway:<agency>``, ``hub``, ``kokuhoren``), for the access log.
SERVER_NAME: Final = web.AppKey("server_name", str)

access_log = structlog.get_logger("chukan.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str | None:
    """The caller's ``X-Request-Id`` if well-formed (bounded, safe characters), else None."""
    if value is None or not REQUEST_ID_PATTERN.match(value):
        return None
    return value


def current_request_id() -> str | None:
    """The request id of the request (or delivery) this code runs for, if any."""
    return _CURRENT_REQUEST_ID.get()


@contextlib.contextmanager
def request_id_bound(request_id: str | None) -> Iterator[None]:
    """Run the block as part of ``request_id``: every log event carries it, and calls to
    the next hop send it (background work done for a stored request, e.g. a retried
    delivery)."""
    if request_id is None:
        yield
        return
    token = _CURRENT_REQUEST_ID.set(request_id)
    try:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            yield
    finally:
        _CURRENT_REQUEST_ID.reset(token)


def route_template(request: web.Request) -> str:
    """The route's template (``/internal/v1/queries/{query_id}``), never the values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost on every server: the request id, one ``http_request`` event, the metrics.

    The event names the method, the route template (never a path's values, which
    may be personal), the status, the time taken, the caller when known and the
    request id; never a body.
    """
    request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    request[REQUEST_ID] = request_id
    gate = request.config_dict.get(BODY_GATE)
    if gate is not None:
        request[_GATE] = gate
    started = time.perf_counter()
    status = 500
    try:
        with request_id_bound(request_id):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                status = exc.status
                exc.headers[REQUEST_ID_HEADER] = request_id
                raise
            except asyncio.CancelledError:
                status = 499  # the client went away before the answer
                raise
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
    finally:
        if gate is not None:
            gate.release(request)
        elapsed = time.perf_counter() - started
        route = route_template(request)
        metrics = request.config_dict.get(HTTP_METRICS)
        if metrics is not None:
            metrics.requests.inc(route, request.method, str(status))
            metrics.latency.observe(elapsed, route)
        access_log.info(
            "http_request",
            server=request.config_dict.get(SERVER_NAME),
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            caller=request.get(CALLER),
            request_id=request_id,
        )


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Streamed answers are prepared inside the handler: echo the id there too."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def observe(
    app: web.Application, server: str, metrics: HttpMetrics, ops: OpsConfig | None = None
) -> None:
    """Give a server's root application its name, metrics and large-body bound; the app's
    middlewares start with :func:`access_log_middleware`."""
    ops = ops or OpsConfig()
    app[SERVER_NAME] = server
    app[HTTP_METRICS] = metrics
    app[BODY_GATE] = BodyGate(
        server=server,
        threshold=ops.large_body_bytes,
        slots=ops.max_large_bodies,
        wait=ops.large_body_wait,
        metrics=metrics,
    )
    app.on_response_prepare.append(_echo_request_id)


# -- large bodies -----------------------------------------------------------------------------

#: Seconds a client is asked to wait after 503 ``busy``.
BUSY_RETRY_AFTER: Final = 5
_HOLDS_SLOT: Final = web.RequestKey("large_body_slot", bool)


class BodyGate:
    """At most ``slots`` requests of this server hold a body above ``threshold`` bytes.

    :func:`read_body` asks for a slot as soon as it knows the body is large (its
    ``Content-Length``, or the bytes read so far); :func:`access_log_middleware`
    gives it back when the request is answered.
    """

    def __init__(
        self, *, server: str, threshold: int, slots: int, wait: float, metrics: HttpMetrics
    ) -> None:
        self.server = server
        self.threshold = threshold
        self.slots = slots
        self.wait = wait
        self.metrics = metrics
        self.in_use = 0
        self._semaphore = asyncio.Semaphore(slots)

    async def admit(self, request: web.Request) -> None:
        """A slot for this request (once), waiting up to ``wait`` seconds; else 503 busy."""
        if request.get(_HOLDS_SLOT):
            return
        started = time.perf_counter()
        if self._semaphore.locked():
            access_log.info(
                "large_body_waiting", server=self.server, in_use=self.in_use, slots=self.slots
            )
        try:
            async with asyncio.timeout(self.wait):
                await self._semaphore.acquire()
        except TimeoutError:
            self.metrics.large_bodies_refused.inc()
            access_log.warning(
                "large_body_refused", server=self.server, in_use=self.in_use, slots=self.slots
            )
            raise BusyError(
                f"{self.slots} large request bodies are being processed; send again later",
                retry_after=BUSY_RETRY_AFTER,
            ) from None
        request[_HOLDS_SLOT] = True
        self.in_use += 1
        self.metrics.large_bodies.set(self.in_use)
        access_log.info(
            "large_body_admitted",
            server=self.server,
            in_use=self.in_use,
            slots=self.slots,
            waited_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def release(self, request: web.Request) -> None:
        if not request.get(_HOLDS_SLOT):
            return
        request[_HOLDS_SLOT] = False
        self.in_use -= 1
        self._semaphore.release()
        self.metrics.large_bodies.set(self.in_use)
        access_log.info(
            "large_body_released", server=self.server, in_use=self.in_use, slots=self.slots
        )


BODY_GATE: Final = web.AppKey("body_gate", BodyGate)
_GATE: Final = web.RequestKey("body_gate", BodyGate)


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
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return http_error_answer(request, exc)
        raise
    except Exception as exc:
        return error_answer(request, exc)
    return response  # the access log middleware logs every answer (``http_request``)


def http_error_answer(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (404, 405, 413, …) as our error body."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status, "http_error"
    )
    log.info("request_refused", path=request.path, status=exc.status, code=code)
    return error_response(exc.status, code, exc.reason)


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """An exception as its HTTP answer, logged once: shared by :func:`error_middleware`
    and each message of a batch, which is answered as it would be alone."""
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
    response = error_response(status, code, message, getattr(exc, "details", None))
    retry_after = getattr(exc, "retry_after", None)  # e.g. 503 busy
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _public_message(exc: Exception) -> str:
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, CodecError):
        return str(exc)
    return str(exc) or type(exc).__name__


async def read_body(request: web.Request, *, limit: int = DEFAULT_MAX_BODY) -> bytes:
    """The whole body, at most ``limit`` bytes; a large one first takes a slot of the
    server's :class:`BodyGate` (kept until the request is answered)."""
    size = request.content_length
    if size is not None and size > limit:
        raise PayloadTooLargeError(f"body larger than {limit} bytes")
    gate = request.get(_GATE)
    if gate is not None and size is not None and size > gate.threshold:
        await gate.admit(request)  # before a byte of it is held
    data = bytearray()
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise PayloadTooLargeError(f"body larger than {limit} bytes")
            if gate is not None and len(data) > gate.threshold:
                await gate.admit(request)  # chunked: large once it is
    except (ConnectionResetError, PayloadEncodingError) as exc:
        raise BodyIncompleteError(
            f"the request body did not arrive in full ({len(data)} bytes read): {exc}"
        ) from None
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
