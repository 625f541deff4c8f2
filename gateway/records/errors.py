"""Failures of the provision records (情報提供等記録)."""

from __future__ import annotations

from chukan.gateway.core.errors import (
    ConflictError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)


class ChainBrokenError(ConflictError):
    """The segment a checkpoint would vouch for does not verify: nothing is signed.

    ``seq`` and ``record_id`` name the first record that fails, where there is one
    (``None`` when the chain head does not match its records).
    """

    code = "record_chain_broken"

    def __init__(
        self, message: str, *, seq: int | None = None, record_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.record_id = record_id


class WitnessFormatError(ValidationError):
    """A witness request or receipt that is not of the documented shape."""

    code = "witness_format_invalid"


class RecordsUnwitnessedError(UnavailableError):
    """New exchanges are refused: records have waited longer than ``[records]
    witness_grace`` for the witness, the witness refused a checkpoint (a rewritten chain),
    or the chain is broken.  A component that cannot record verifiably stops exchanging."""

    code = "records_unwitnessed"


class WitnessUnavailableError(UpstreamError):
    """The witness could not be reached, failed, or answered with a receipt that does not
    verify under the pinned hub key: the checkpoint waits for the next attempt."""

    code = "witness_unavailable"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        #: The witness's own error code, or what went wrong here (for the alarm state).
        self.reason = reason


class WitnessRefusedError(ConflictError):
    """The witness refused a checkpoint (409): the chain no longer continues what it
    witnessed — a rewrite or deleted checkpoints.  An alarm, not a retry."""

    code = "witness_refused"

    def __init__(self, message: str, *, reason: str, seq: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq
