"""Exceptions of ``chukan.simulators``: the hub's and 国保連's refusals.

They are kinds of the gateway's errors (:mod:`chukan.gateway.core.errors`), so
the one status table and error middleware answer them the same way.
"""

from __future__ import annotations

from chukan.gateway.core.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    GatewayError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)


class PeerMismatchError(ForbiddenError):
    """The client certificate speaks for another party than the message or request names."""

    code = "peer_mismatch"


# -- hub: the witness of agencies' record checkpoints ---------------------------------------


class WitnessSignatureInvalidError(ForbiddenError):
    """A checkpoint not signed by one of the agency's registered signing keys."""

    code = "witness_signature_invalid"


class WitnessOutOfSequenceError(ConflictError):
    """A checkpoint whose segment does not follow the last one witnessed for the agency:
    checkpoints deleted, or a chain rewritten from an earlier point (an alarm)."""

    code = "witness_out_of_sequence"


class WitnessConflictError(ConflictError):
    """A checkpoint at a ``seq`` already witnessed with another hash, signature or
    records: the agency's chain was rewritten after it was witnessed (an alarm)."""

    code = "witness_conflict"


class HubRecordsUnavailableError(UnavailableError):
    """The hub routes no new query while it cannot record verifiably: its record chain
    is broken or its witness file does not match or cannot be written (X-Road stops
    exchanging when it cannot log).  Sent again once the fault is repaired, it is routed."""

    code = "records_unavailable"


# -- hub: enrolment credentials and the hub's own secrets ---------------------------------


class EnrolmentTokenRequiredError(UnauthenticatedError):
    """An enrolment without the agency's enrolment token (``Authorization: Bearer …``)."""

    code = "enrolment_token_required"


class EnrolmentTokenInvalidError(ForbiddenError):
    """A token the hub never issued for enrolment (the admin token among them)."""

    code = "enrolment_token_invalid"


class EnrolmentTokenRevokedError(ForbiddenError):
    """The agency's enrolment token was revoked, or replaced by a newer one."""

    code = "enrolment_token_revoked"


class EnrolmentTokenOtherAgencyError(ForbiddenError):
    """A valid enrolment token, but issued for another agency than the one enrolling."""

    code = "enrolment_token_other_agency"


class EnrolmentTokenUnknownError(NotFoundError):
    """The operator names an agency that holds no live enrolment token."""

    code = "enrolment_token_unknown"


class EnrolmentTokenWeakError(ValidationError):
    """An operator-chosen enrolment token too short or with characters a header cannot carry."""

    code = "enrolment_token_weak"


class HubSecretError(GatewayError):
    """The hub's 個人番号 HMAC key file cannot be used: the hub refuses to start."""

    code = "hub_secret_unusable"


class HubSecretExposedError(HubSecretError):
    """The HMAC key file (or its folder) is open to group or others."""

    code = "hub_secret_exposed"


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
