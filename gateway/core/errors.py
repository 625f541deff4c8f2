"""Exceptions of ``chukan.gateway`` and how every package's errors map to HTTP.

Each error class carries a stable ``code`` (machine-readable, part of the API),
registered once for the whole project (:mod:`chukan.errorcodes`).  One table,
:data:`HTTP_STATUS`, maps codes to HTTP statuses; an exception takes the status
of the nearest class in its MRO that the table names, so the flows' errors
(in each flow package's ``errors`` module) need only pick the right kind here.
:func:`status_for` maps every package's exceptions at the boundary, as httpx's
``map_exceptions`` does, so handlers raise domain errors and never build
responses for failures themselves.  A
database that is unreachable or going away is 503 ``database_unavailable``
whatever asyncpg or the socket raised (``db.is_database_error``); any other
unmapped exception is a bug: 500 ``internal_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Final

import asyncpg

from chukan.codecs.errors import CodecError
from chukan.errorcodes import CodedError
from chukan.keys.errors import KeysError
from chukan.permits.errors import PermitsError


class GatewayError(CodedError):
    """Root of failures raised by the gateway and the simulators' servers."""

    code: ClassVar[str] = "gateway_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status of this failure (from :data:`HTTP_STATUS`)."""
        return http_status(type(self))

    def wire(self) -> tuple[int, str]:
        """The HTTP status and the code the caller sees."""
        return self.status, self.code


class BadRequestError(GatewayError):
    code = "bad_request"


class ValidationError(BadRequestError):
    """A field of a request is missing or malformed."""

    code = "validation_failed"


class BodyIncompleteError(BadRequestError):
    """The request's body did not arrive in full: the client closed the connection, or
    sent less than it announced.  The client's doing, so a 400 and an info event, not a
    500 with a traceback (seen by the hundred when a busy client gave up)."""

    code = "request_body_incomplete"


class IndividualNumberInvalidError(ValidationError):
    """個人番号 with the wrong shape or check digit (the value itself is never echoed)."""

    code = "individual_number_invalid"


class UnauthenticatedError(GatewayError):
    code = "unauthenticated"


class ForbiddenError(GatewayError):
    code = "forbidden"


class MessageSignatureError(UnauthenticatedError):
    """A network message whose signature, sender or key does not check out."""

    code = "message_signature_invalid"


class MessageReplayError(ForbiddenError):
    code = "message_replayed"


class MisaddressedError(ForbiddenError):
    code = "message_misaddressed"


class StaleMessageError(ForbiddenError):
    code = "message_stale"


class NotFoundError(GatewayError):
    code = "not_found"


class PersonUnknownError(NotFoundError):
    """No person with this 団体内統合宛名番号 (or 符号) is registered."""

    code = "person_unknown"


class QueryUnknownError(NotFoundError):
    code = "query_unknown"


class ItemNotFoundError(NotFoundError):
    code = "item_not_found"


class PersonNotAtProviderError(NotFoundError):
    """The hub knows the person, but the provider never acquired a 符号 for them."""

    code = "person_not_registered_at_provider"


class AgencyUnknownError(NotFoundError):
    code = "agency_unknown"


class ConflictError(GatewayError):
    code = "conflict"


class PersonConflictError(ConflictError):
    """The 宛名番号 is already bound to another person (or the person to another 宛名番号)."""

    code = "person_conflict"


class PayloadTooLargeError(GatewayError):
    code = "payload_too_large"


class UnsupportedMediaError(GatewayError):
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    """The hub or a peer did not answer usefully."""

    code = "upstream_unavailable"


class UnavailableError(GatewayError):
    """Not now: the request may succeed when it is sent again later."""

    code = "unavailable"


class CommandError(GatewayError):
    """A command-line invocation that cannot be carried out: bad arguments, files, keys.

    The kind of every ``chukan …`` command's own failures (never an HTTP answer).
    """

    code = "command_failed"


class ConfigFileError(CommandError):
    """A server's TOML configuration file cannot be used: the message names file, table, key."""

    code = "config_file_invalid"


class ConfigKeyUnknownError(ConfigFileError):
    """A key the configuration does not know (a typo must not pass silently)."""

    code = "config_key_unknown"


class InlineSecretError(ConfigFileError):
    """A secret written into the configuration file itself instead of a file or variable."""

    code = "config_secret_inline"


class SecretFileExposedError(ConfigFileError):
    """A secret (or private key) file that group or others may read."""

    code = "config_secret_file_exposed"


class RelayedRefusalError(GatewayError):
    """A peer (the hub) refused a request we relay: the caller sees the peer's own code.

    A 4xx answer keeps its status; anything else is 502, since it is the peer that failed.
    """

    code = "upstream_refused"

    def __init__(self, remote_code: str, message: str, remote_status: int) -> None:
        super().__init__(message)
        self.remote_code = remote_code
        self.remote_status = remote_status

    def wire(self) -> tuple[int, str]:
        status = self.remote_status if 400 <= self.remote_status < 500 else 502
        return status, self.remote_code


class DatabaseUnavailableError(UnavailableError):
    """PostgreSQL is unreachable, shutting down or refusing sessions: try again later.

    Raised explicitly or mapped from asyncpg's and the socket's errors by
    :func:`status_for` (see ``db.is_database_error``); never a bug in a statement.
    """

    code = "database_unavailable"


class MigrationsPendingError(UnavailableError):
    """A server's database lacks migrations this version ships (or one of them changed).

    A server refuses to start on it rather than run against a schema it does not
    know; migrating is the operator's step (``chukan db migrate``), done with the
    owner's login, which the running server does not hold.
    """

    code = "migrations_pending"

    def __init__(
        self, component: str, pending: list[str], changed: list[str], *, unreadable: bool = False
    ) -> None:
        self.component = component
        self.pending = pending
        self.changed = changed
        parts: list[str] = []
        if unreadable:
            parts.append(
                "this login may not read schema_migrations: the migration that lets it "
                "is not applied"
            )
        if pending:
            parts.append(f"{len(pending)} not applied: {', '.join(pending)}")
        if changed:
            parts.append(f"changed after they were applied: {', '.join(changed)}")
        remedy = (
            f"run `chukan db migrate --component {component}` with the database owner's URL"
            if not changed
            else "write a new migration instead of editing an applied one"
        )
        super().__init__(
            f"the {component} database is not at this version's schema "
            f"({'; '.join(parts)}): {remedy}"
        )
        self.details = {"component": component, "pending": pending, "changed": changed}


class ProvisionInProgressError(UnavailableError):
    """A copy of a provision request arrived while the first is still being answered."""

    code = "provision_in_progress"


class BusyError(UnavailableError):
    """Too many large request bodies are held by this process now: send it again later.

    ``retry_after`` (seconds) is sent as ``Retry-After``.
    """

    code = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(GatewayError):
    """This peer was refused too often this minute (:mod:`.refusals`): wait ``retry_after``
    seconds (sent as ``Retry-After``)."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConclusionConflictError(ConflictError):
    """An answer that contradicts the one conclusion a query already has."""

    code = "conclusion_conflict"


class IdempotencyKeyReusedError(ConflictError):
    """An Idempotency-Key already used for another request body."""

    code = "idempotency_key_reused"


class EnrolmentRefusedError(UpstreamError):
    """The hub answered our enrolment with a refusal (not an outage): no retry helps."""

    code = "enrolment_refused"


class AuthorizationListUnavailableError(UnavailableError):
    """No valid authorization list: nothing is sent or answered until one is held again.

    ``reason`` is the underlying code (``authorization_list_missing``,
    ``authorization_list_expired``, ``authorization_list_signature``, …); it is
    returned beside the code as ``error.details.reason``.
    """

    code = "authorization_list_unavailable"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"no valid authorization list ({reason})")
        self.reason = reason
        self.details = {"reason": reason}


class AuthorizationListRollbackError(ConflictError):
    """A list older than the newest one already received: versions never go back."""

    code = "authorization_list_rollback"


class AuthorizationListConflictError(ConflictError):
    """A list with a version already received but other content (equivocation)."""

    code = "authorization_list_conflict"


#: The one table of HTTP statuses: by the code of a class, found along the MRO.
HTTP_STATUS: Final[Mapping[str, int]] = {
    # chukan.codecs
    "codec_error": 400,
    "item_code_unsupported": 422,
    "xml_too_large": 413,
    # chukan.keys
    "keys_error": 400,
    "key_unknown": 401,
    # chukan.permits
    "permits_error": 403,
    # chukan.gateway and the simulators, by kind
    "gateway_error": 500,
    "bad_request": 400,
    "validation_failed": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "message_replayed": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "upstream_unavailable": 502,
    "upstream_refused": 502,
    "kokuhoren_refused": 502,
    "unavailable": 503,
}


def http_status(kind: type[BaseException]) -> int:
    """The status of the nearest class of ``kind``'s MRO named in :data:`HTTP_STATUS`."""
    for cls in kind.__mro__:
        code = cls.__dict__.get("code")
        if isinstance(code, str) and code in HTTP_STATUS:
            return HTTP_STATUS[code]
    return 500


def status_for(exc: Exception) -> tuple[int, str]:
    """HTTP status and stable code for any exception the packages define."""
    if isinstance(exc, GatewayError):
        return exc.wire()
    if isinstance(exc, CodecError | KeysError | PermitsError):
        return http_status(type(exc)), exc.code
    if is_database_error(exc):
        return http_status(DatabaseUnavailableError), DatabaseUnavailableError.code
    return 500, "internal_error"


# -- the database going away ------------------------------------------------------------------

#: Ours, and asyncpg's of a server that is unreachable, going away or refusing sessions.
_UNAVAILABLE: Final = (
    DatabaseUnavailableError,
    asyncpg.PostgresConnectionError,  # class 08: connection does not exist, failure, …
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up, shutting down
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
)
_CLOSED: Final = ("connection is closed", "connection was closed")


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or going away (not a bug)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return any(text in str(exc) for text in _CLOSED)
    # Refused, reset, unreachable, timed out (connect, pool acquire): a socket error counts
    # only when asyncpg raised it, not one from a file or an HTTP call to a peer.
    return isinstance(exc, OSError) and _raised_in_asyncpg(exc)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "asyncpg" or module.startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False
