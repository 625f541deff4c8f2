"""Exceptions of the 国保連 伝送 flow: recipient changes, transmissions, the mailbox, return files.

Each picks its kind (and so its HTTP status) from :mod:`chukan.gateway.core.errors`;
the mailbox's own refusal keeps the mailbox's code (``kokuhoren_refused`` is 502).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chukan.gateway.core.errors import (
    BadRequestError,
    ConflictError,
    GatewayError,
    NotFoundError,
    UpstreamError,
    ValidationError,
)

# -- the internal API -----------------------------------------------------------------------


class KokuhorenNotConfiguredError(ConflictError):
    """This gateway has no 保険者番号 or no 国保連 mailbox configured."""

    code = "kokuhoren_not_configured"


class RecipientChangesInvalidError(ValidationError):
    """Some posted changes are malformed; ``details.errors`` names each (none is stored)."""

    code = "recipient_changes_invalid"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = {"errors": errors}


class ChangeIdConflictError(ConflictError):
    """A ``change_id`` already stored with other content (none of the batch is stored)."""

    code = "change_id_conflict"

    def __init__(self, message: str, change_ids: list[str]) -> None:
        super().__init__(message)
        self.details = {"change_ids": change_ids}


class NothingToTransmitError(ConflictError):
    """No pending change of this kind is dated up to the end of the month."""

    code = "nothing_to_transmit"


class NoValidRecordsError(ValidationError):
    """Every pending change of the month was refused at generation time."""

    code = "no_valid_records"

    def __init__(self, message: str, refused: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = {"refused": refused}


class TransmissionUnknownError(NotFoundError):
    """No transmission with this id."""

    code = "transmission_unknown"


class TransmissionInProgressError(ConflictError):
    """The transmission is still being delivered: there is nothing to send again yet."""

    code = "transmission_in_progress"


class ReturnIngestUnknownError(NotFoundError):
    """No return-file ingest job with this id."""

    code = "return_ingest_unknown"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """Why one field (or the record) cannot be used; safe to show and to log."""

    field: str | None
    code: str
    message: str
    item: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "item": self.item, "code": self.code, "message": self.message}


class RecordInvalidError(ValidationError):
    """A JSON record with one or more problems (one per field; never a value)."""

    code = "kokuhoren_record_invalid"

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


# -- the mailbox ----------------------------------------------------------------------------


class EnvelopeInvalidError(ValidationError):
    """A file envelope or intake result that does not have the documented shape."""

    code = "envelope_invalid"


class FileDigestMismatchError(BadRequestError):
    """The opened file does not have the digest its envelope announced."""

    code = "file_digest_mismatch"


class MailboxUnavailableError(UpstreamError):
    """The 国保連 mailbox could not be reached or answered 5xx: try again later."""

    code = "kokuhoren_unavailable"


class MailboxRefusedError(GatewayError):
    """The mailbox refused the request (4xx); ``remote_code`` is its stable code."""

    code = "kokuhoren_refused"

    def __init__(self, remote_status: int, remote_code: str, message: str) -> None:
        super().__init__(message)
        self.remote_status = remote_status
        self.remote_code = remote_code


class MailboxAnswerInvalidError(UpstreamError):
    """An answer of the mailbox whose signature or shape does not check out."""

    code = "kokuhoren_answer_invalid"


class ReturnFileInvalidError(UpstreamError):
    """A return file that is not addressed to this 保険者 or does not match its listing."""

    code = "return_file_invalid"
