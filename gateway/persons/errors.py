"""Exceptions of the person lifecycle (団体内統合宛名: 転出, 死亡, merge, unregistration)
and of the erasure of persons' data."""

from __future__ import annotations

from chukan.gateway.core.errors import ConflictError, NotFoundError, ValidationError


class PersonUnregisteredError(NotFoundError):
    """The person's 符号 was ended by unregistration: the hub routes nothing to it and
    the provider refuses, both with this code."""

    code = "person_unregistered"


class PersonStateConflictError(ConflictError):
    """The event contradicts the person's recorded state (e.g. a merge into an
    unregistered 宛名番号, or 転出 of a person already unregistered)."""

    code = "person_state_conflict"


class ResidentCodeUnknownError(NotFoundError):
    """J-LIS (simulated) holds no resident with this 住民票コード."""

    code = "resident_code_unknown"


class ResidentCodeInvalidError(ValidationError):
    """A 住民票コード is 11 digits."""

    code = "resident_code_invalid"
