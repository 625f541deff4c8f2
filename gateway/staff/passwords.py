"""Staff passwords: scrypt hashes (salt and cost stored with the hash) and the password policy.

Hashing costs tens of milliseconds on purpose, so the handlers run it in a
worker thread (:func:`hash_in_thread`, :func:`verify_in_thread`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from typing import Final

from chukan.gateway.core.settings import StaffConfig
from chukan.gateway.staff.errors import WeakPasswordError

MAX_PASSWORD_LENGTH: Final = 1024
SCRYPT_DKLEN: Final = 32
SCRYPT_SALT_BYTES: Final = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=SCRYPT_DKLEN,
        maxmem=256 * n * r * p + 1024 * 1024,
    )


def hash_password(password: str, *, n: int, r: int, p: int) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64): the parameters travel with the hash."""
    if n < 2 or n & (n - 1):
        raise ValueError("scrypt n must be a power of two")
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


def hash_with(config: StaffConfig, password: str) -> str:
    """:func:`hash_password` at the configured scrypt cost."""
    return hash_password(password, n=config.scrypt_n, r=config.scrypt_r, p=config.scrypt_p)


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never verifies."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(actual, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


async def hash_in_thread(config: StaffConfig, password: str) -> str:
    return await asyncio.to_thread(hash_with, config, password)


async def verify_in_thread(password: str, stored: str) -> bool:
    return await asyncio.to_thread(verify_password, password, stored)


_DUMMY: dict[tuple[int, int, int], str] = {}


def dummy_hash(config: StaffConfig) -> str:
    """A hash of a random password at the configured cost, checked against for unknown
    users so that timing does not tell which accounts exist (made once per cost)."""
    key = (config.scrypt_n, config.scrypt_r, config.scrypt_p)
    if key not in _DUMMY:
        _DUMMY[key] = hash_with(config, secrets.token_urlsafe(16))
    return _DUMMY[key]


def check_password_strength(password: str, config: StaffConfig, username: str) -> None:
    if len(password) < config.min_password_length:
        raise WeakPasswordError(
            f"password must be at least {config.min_password_length} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if (username and username.lower() in password.lower()) or len(set(password)) < 5:
        raise WeakPasswordError("password is too easy to guess")
