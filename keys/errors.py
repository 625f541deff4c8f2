"""Exceptions of ``chukan.keys``: one root, subtrees by failure kind."""

from __future__ import annotations

from typing import ClassVar

from chukan.errorcodes import CodedError


class KeysError(CodedError):
    """Root of every key, encryption and signature failure."""

    code: ClassVar[str] = "keys_error"


class KeyFormatError(KeysError):
    """Key material that cannot be loaded (bad encoding, wrong type, bad passphrase)."""

    code: ClassVar[str] = "key_format"


class UnknownKeyError(KeysError):
    """A ciphertext or signature names a key id we do not hold."""

    code: ClassVar[str] = "key_unknown"


class DecryptionError(KeysError):
    """Authentication of a sealed payload failed: wrong key, tampering or wrong context."""

    code: ClassVar[str] = "decryption_failed"


class SignatureError(KeysError):
    """A signature does not verify under the named key."""

    code: ClassVar[str] = "signature_invalid"


class AlgorithmError(KeysError):
    """A message names an algorithm this implementation does not accept."""

    code: ClassVar[str] = "algorithm_unsupported"


class CertificateError(KeysError):
    """A certificate that is malformed, not ours, or not shaped as this CA issues them."""

    code: ClassVar[str] = "certificate_invalid"


class KeyRetiredError(KeysError):
    """The named key was ours but its overlap window has ended."""

    code: ClassVar[str] = "key_retired"


class NoActiveKeyError(KeysError):
    """The ring holds no key that is active at the requested time."""

    code: ClassVar[str] = "key_none_active"
