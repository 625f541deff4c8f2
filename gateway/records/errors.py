"""Failures of the provision records (情報提供等記録)."""

from __future__ import annotations

from chukan.gateway.core.errors import ConflictError, ValidationError


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
