"""Error codes are unique across the project and each maps to one HTTP status."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import chukan
from chukan.codecs.errors import CodecError, XmlForbiddenError, XmlLimitError
from chukan.errorcodes import CodedError, DuplicateErrorCodeError, registered_codes
from chukan.gateway.core.errors import (
    HTTP_STATUS,
    ConflictError,
    GatewayError,
    RelayedRefusalError,
    http_status,
    status_for,
)
from chukan.keys.errors import KeysError, UnknownKeyError
from chukan.permits.errors import PermitExpiredError


def _import_everything() -> None:
    for info in pkgutil.walk_packages(chukan.__path__, "chukan."):
        if info.name != "chukan.__main__":
            importlib.import_module(info.name)


def test_a_second_class_with_a_taken_code_is_refused_at_definition() -> None:
    with pytest.raises(DuplicateErrorCodeError, match="conflict"):

        class AnotherConflictError(ConflictError):
            code = "conflict"


def test_a_subclass_without_its_own_code_inherits_and_registers_nothing() -> None:
    before = dict(registered_codes())

    class QuietConflictError(ConflictError):
        pass

    assert QuietConflictError.code == "conflict"
    assert dict(registered_codes()) == before


def test_every_package_roots_in_the_registry() -> None:
    for root in (CodecError, KeysError, GatewayError):
        assert issubclass(root, CodedError)
        assert registered_codes()[root.code] is root


def test_every_registered_code_has_a_status_and_the_table_names_only_real_codes() -> None:
    _import_everything()
    codes = registered_codes()
    assert set(HTTP_STATUS) <= set(codes), set(HTTP_STATUS) - set(codes)
    for code, cls in codes.items():
        status = http_status(cls)
        assert 400 <= status <= 599, (code, status)


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_exception_lives_in_its_package_errors_module() -> None:
    _import_everything()
    outside = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _subclasses(BaseException)
        if cls.__module__.startswith("chukan.")
        and not cls.__module__.endswith(".errors")
        and cls.__module__ != "chukan.errorcodes"
        and "<locals>" not in cls.__qualname__  # defined by a test to provoke the registry
    )
    assert outside == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (XmlLimitError("too big"), (413, "xml_too_large")),
        (XmlForbiddenError("dtd"), (400, "xml_forbidden")),
        (UnknownKeyError("who"), (401, "key_unknown")),
        (PermitExpiredError("late"), (403, "permit_expired")),
        (ConflictError("twice"), (409, "conflict")),
        (RelayedRefusalError("person_unknown", "hub refused", 404), (404, "person_unknown")),
        (RelayedRefusalError("hub_error", "hub refused", 500), (502, "hub_error")),
        (ValueError("a bug"), (500, "internal_error")),
    ],
)
def test_the_boundary_maps_every_kind(exc: Exception, expected: tuple[int, str]) -> None:
    assert status_for(exc) == expected
