"""The one registry of stable error codes, shared by every package's root exception.

Each package (``codecs``, ``keys``, ``permits``, ``gateway``, ``simulators``)
roots its exceptions in a subclass of :class:`CodedError`.  A class that
declares a ``code`` registers it when the class is created, and a second class
claiming a code already taken is refused at import, as asyncpg refuses a
duplicate SQLSTATE: a code names one failure, whichever package raises it.
This module imports nothing of chukan, so the pure packages may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

_REGISTRY: dict[str, type[CodedError]] = {}


class DuplicateErrorCodeError(TypeError):
    """Two exception classes claim the same stable code."""


class CodedError(Exception):
    """An exception with a stable, machine-readable ``code`` (part of the API)."""

    code: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        taken = _REGISTRY.get(code)
        if taken is not None and _name(taken) != _name(cls):
            raise DuplicateErrorCodeError(
                f"error code {code!r} of {_name(cls)} is already {_name(taken)}'s"
            )
        _REGISTRY[code] = cls


class LocatedError(CodedError):
    """A failure in input that names where it is (a path, record, row or field).

    ``where`` never holds personal data: positions and names of fields only.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return self.message if self.where is None else f"{self.message} (at {self.where})"


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_codes() -> Mapping[str, type[CodedError]]:
    """Every code declared so far and its class (read-only)."""
    return MappingProxyType(_REGISTRY)
