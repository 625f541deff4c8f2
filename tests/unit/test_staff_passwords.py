"""scrypt password hashes: parameters stored, salted, constant-time checked."""

from __future__ import annotations

import pytest

from chukan.gateway.core.settings import StaffConfig
from chukan.gateway.staff.errors import WeakPasswordError
from chukan.gateway.staff.passwords import (
    check_password_strength,
    hash_password,
    verify_password,
)
from chukan.gateway.staff.sessions import token_sha256

FAST = {"n": 2**10, "r": 8, "p": 1}


def test_hash_verifies_and_carries_its_parameters() -> None:
    stored = hash_password("correct horse battery", **FAST)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "8", "1")
    assert salt and digest and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("", stored)


def test_salts_differ_and_parameters_are_honoured_on_verify() -> None:
    a = hash_password("same password here", **FAST)
    b = hash_password("same password here", n=2**11, r=4, p=2)
    assert a != b
    assert verify_password("same password here", a)
    assert verify_password("same password here", b)


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$AA==$AA==", "scrypt$1024$8$1$!!$??"],
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not verify_password("anything at all", stored)


def test_n_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        hash_password("whatever password", n=1000, r=8, p=1)


def test_password_strength() -> None:
    config = StaffConfig(min_password_length=12)
    check_password_strength("Tsuki-ga-kirei-desu", config, "yamada")
    check_password_strength("Tsuki-ga-kirei-desu", config, "")  # hash-password: no user
    for weak in ("short", "aaaaaaaaaaaaaaaa", "yamada-password-1"):
        with pytest.raises(WeakPasswordError):
            check_password_strength(weak, config, "yamada")


def test_tokens_are_stored_as_digests() -> None:
    assert len(token_sha256("token")) == 32
    assert token_sha256("token") != token_sha256("token2")
