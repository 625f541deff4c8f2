"""A symmetric secret at rest under a passphrase: the same construction as the key rings.

A key ring (:mod:`chukan.keys.ring`) is protected by scrypt of the passphrase with
a random salt.  A bare secret (the hub's 個人番号 HMAC key) gets the same scrypt
parameters, and AES-256-GCM under the derived key instead of PKCS#8 + a MAC: one
authenticated encryption that a wrong passphrase, an edited header or a flipped
byte all fail.  The header (format, purpose, key derivation) is the GCM associated
data, so a file sealed for one purpose cannot be passed off as another.

Pure: bytes in, bytes out.  Reading and writing files (modes, locks) is the
caller's job.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .crypto import MIN_PASSPHRASE_BYTES, NONCE_BYTES, b64d, b64e
from .errors import KeyFormatError

SEALED_FORMAT: Final = "chukan.secret.v1"
#: The key rings' scrypt cost (:mod:`chukan.keys.ring`): about 32 MiB and 0.1 s to open.
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_N_MAX: Final = 2**17
SALT_BYTES: Final = 16


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise KeyFormatError(
            f"the key passphrase must be a random secret of at least {MIN_PASSPHRASE_BYTES} bytes"
        )


def _key(passphrase: bytes, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def is_sealed_secret(data: bytes) -> bool:
    """Whether ``data`` looks like a document of :func:`seal_secret` (not whether it opens)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and document.get("format") == SEALED_FORMAT


def seal_secret(secret: bytes, passphrase: bytes, *, purpose: str) -> bytes:
    """``secret`` encrypted under ``passphrase`` for ``purpose``; the output holds no plaintext."""
    _check_passphrase(passphrase)
    salt = os.urandom(SALT_BYTES)
    header = {
        "format": SEALED_FORMAT,
        "purpose": purpose,
        "kdf": {"name": "scrypt", "salt": b64e(salt), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
    }
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(_key(passphrase, salt, SCRYPT_N)).encrypt(nonce, secret, _canonical(header))
    return _canonical({**header, "nonce": b64e(nonce), "ciphertext": b64e(sealed)})


def open_secret(data: bytes, passphrase: bytes, *, purpose: str) -> bytes:
    """Inverse of :func:`seal_secret`; a wrong passphrase, purpose or any edit raises."""
    _check_passphrase(passphrase)
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFormatError("not an encrypted secret file") from exc
    if not isinstance(document, dict) or document.get("format") != SEALED_FORMAT:
        raise KeyFormatError("not an encrypted secret file")
    if document.get("purpose") != purpose:
        raise KeyFormatError(f"the secret file is not a {purpose} secret")
    kdf = document.get("kdf")
    if not isinstance(kdf, dict):
        raise KeyFormatError("the secret file has no key derivation")
    n, salt, nonce, sealed = (
        kdf.get("n"),
        kdf.get("salt"),
        document.get("nonce"),
        document.get("ciphertext"),
    )
    if (
        kdf.get("name") != "scrypt"
        or kdf.get("r") != SCRYPT_R
        or kdf.get("p") != SCRYPT_P
        or not isinstance(n, int)
        or isinstance(n, bool)
        or not 2**14 <= n <= SCRYPT_N_MAX
        or n & (n - 1)
    ):
        raise KeyFormatError("the secret file uses unsupported key derivation parameters")
    if not (isinstance(salt, str) and isinstance(nonce, str) and isinstance(sealed, str)):
        raise KeyFormatError("the secret file is missing its salt, nonce or ciphertext")
    header = {k: document[k] for k in ("format", "purpose", "kdf")}
    try:
        return AESGCM(_key(passphrase, b64d(salt), n)).decrypt(
            b64d(nonce), b64d(sealed), _canonical(header)
        )
    except (InvalidTag, ValueError) as exc:
        raise KeyFormatError(
            "the secret file cannot be opened (wrong passphrase or modified)"
        ) from exc
