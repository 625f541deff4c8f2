"""Exceptions of ``chukan.simulators``: the hub's and 国保連's refusals.

They are kinds of the gateway's errors (:mod:`chukan.gateway.core.errors`), so
the one status table and error middleware answer them the same way.
"""

from __future__ import annotations

from chukan.gateway.core.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
)


class PeerMismatchError(ForbiddenError):
    """The client certificate speaks for another party than the message or request names."""

    code = "peer_mismatch"


# -- 国保連 mailbox -----------------------------------------------------------------------


class ClientCertificateRequiredError(UnauthenticatedError):
    """The mailbox requires mutual TLS and the caller presented no usable certificate."""

    code = "client_certificate_required"


class FileUndecryptableError(BadRequestError):
    """The file is not sealed for the simulator's key, or was altered in transit."""

    code = "file_undecryptable"


class FileNumberReusedError(ConflictError):
    """A ファイル管理番号 already used for a file with other content."""

    code = "file_management_number_reused"


class EnvelopeMisaddressedError(ForbiddenError):
    """A file envelope not from the authenticated 保険者, or not to 国保連."""

    code = "envelope_misaddressed"


class FileUnknownError(NotFoundError):
    """No file (received or to return) with this ファイル管理番号 for this 保険者."""

    code = "file_unknown"


class InsurerUnknownError(NotFoundError):
    """No 保険者 with this number is registered at 国保連."""

    code = "insurer_unknown"
