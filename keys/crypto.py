"""Key pairs, hybrid encryption and signatures (DESIGN §6), as pure functions.

Only standard constructions from ``cryptography``:

* signatures: Ed25519 over the exact bytes signed;
* encryption: ECDH-ES with an ephemeral X25519 key, HKDF-SHA256 to a 256-bit
  key, AES-256-GCM with a random 96-bit nonce.  The HKDF ``info`` binds the
  algorithm name, the recipient key id and both public keys, and the caller's
  associated data (query id, permit id, parties) is authenticated by GCM, so a
  payload cut from one message cannot be replayed into another.

Every signature and ciphertext names its key id so that rotation (several
valid keys at once) needs no guessing.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    AlgorithmError,
    DecryptionError,
    KeyFormatError,
    SignatureError,
    UnknownKeyError,
)

SIGNATURE_ALGORITHM: Final = "Ed25519"
ENCRYPTION_ALGORITHM: Final = "ECDH-ES+X25519+HKDF-SHA256+A256GCM"
NONCE_BYTES: Final = 12
RAW_KEY_BYTES: Final = 32
#: Key passphrases are machine secrets: short ones are refused.
MIN_PASSPHRASE_BYTES: Final = 16


def b64e(data: bytes) -> str:
    """URL-safe base64 without padding: compact in XML attributes and headers."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Inverse of :func:`b64e`; refuses anything that is not strict base64url."""
    try:
        raw = text.encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, ValueError) as exc:
        raise KeyFormatError("not base64url") from exc


def key_id_for(owner: str, purpose: str, public_raw: bytes) -> str:
    """Key ids carry owner and purpose for operators, and a thumbprint for uniqueness."""
    thumb = hashlib.sha256(purpose.encode("ascii") + b"\x00" + public_raw).hexdigest()[:16]
    return f"{owner}.{purpose}.{thumb}"


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class PublicSigningKey:
    """An agency's (or the hub's) Ed25519 verification key."""

    key_id: str
    raw: bytes

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` signs ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"signature does not verify under key {self.key_id}") from exc


@dataclass(frozen=True, slots=True)
class SigningKeyPair:
    """An Ed25519 key pair; the private half never leaves the owner's process."""

    key_id: str
    private_key: Ed25519PrivateKey

    @property
    def public(self) -> PublicSigningKey:
        return PublicSigningKey(self.key_id, _raw_public(self.private_key.public_key()))

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


@dataclass(frozen=True, slots=True)
class PublicEncryptionKey:
    """An agency's X25519 key that others encrypt provisions to."""

    key_id: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class EncryptionKeyPair:
    """An X25519 key pair used to receive sealed payloads."""

    key_id: str
    private_key: X25519PrivateKey

    @property
    def public(self) -> PublicEncryptionKey:
        return PublicEncryptionKey(self.key_id, _raw_public(self.private_key.public_key()))


def generate_signing_key(owner: str) -> SigningKeyPair:
    private = Ed25519PrivateKey.generate()
    return SigningKeyPair(key_id_for(owner, "sig", _raw_public(private.public_key())), private)


def generate_encryption_key(owner: str) -> EncryptionKeyPair:
    private = X25519PrivateKey.generate()
    return EncryptionKeyPair(key_id_for(owner, "enc", _raw_public(private.public_key())), private)


def public_signing_key(key_id: str, raw: bytes) -> PublicSigningKey:
    """Build a verification key from transported bytes, checking they form a key."""
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError(f"key {key_id} is not an Ed25519 public key") from exc
    return PublicSigningKey(key_id, raw)


def public_encryption_key(key_id: str, raw: bytes) -> PublicEncryptionKey:
    """Build an encryption key from transported bytes, checking they form a key."""
    try:
        X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError(f"key {key_id} is not an X25519 public key") from exc
    return PublicEncryptionKey(key_id, raw)


# -- private keys at rest -------------------------------------------------------------


def private_key_to_pem(key: Ed25519PrivateKey | X25519PrivateKey, passphrase: bytes) -> bytes:
    """Encrypted PKCS#8 PEM (PBES2, AES-256-CBC).

    ``cryptography`` uses few PBKDF2 rounds here, so the passphrase must be a
    generated high-entropy secret (configuration), not a memorable password.
    """
    if not passphrase:
        raise KeyFormatError("a passphrase is required to write a private key")
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise KeyFormatError(
            f"the key passphrase must be a random secret of at least {MIN_PASSPHRASE_BYTES} bytes"
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def load_signing_key(owner: str, pem: bytes, passphrase: bytes) -> SigningKeyPair:
    key = _load_private(pem, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError("not an Ed25519 private key")
    return SigningKeyPair(key_id_for(owner, "sig", _raw_public(key.public_key())), key)


def load_encryption_key(owner: str, pem: bytes, passphrase: bytes) -> EncryptionKeyPair:
    key = _load_private(pem, passphrase)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFormatError("not an X25519 private key")
    return EncryptionKeyPair(key_id_for(owner, "enc", _raw_public(key.public_key())), key)


def _load_private(pem: bytes, passphrase: bytes) -> object:
    try:
        return serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # Never include the PEM or passphrase in the message.
        raise KeyFormatError("private key cannot be loaded (wrong passphrase or format)") from exc


# -- hybrid encryption ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sealed:
    """A payload encrypted to one recipient key, with everything needed to open it."""

    algorithm: str
    key_id: str
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes


def _derive(shared: bytes, key_id: str, epk: bytes, recipient_raw: bytes) -> bytes:
    info = b"|".join(
        (ENCRYPTION_ALGORITHM.encode("ascii"), key_id.encode("utf-8"), epk, recipient_raw)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal(recipient: PublicEncryptionKey, plaintext: bytes, aad: bytes) -> Sealed:
    """Encrypt ``plaintext`` so that only the holder of ``recipient``'s private key reads it."""
    ephemeral = X25519PrivateKey.generate()
    epk = _raw_public(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.raw))
    key = _derive(shared, recipient.key_id, epk, recipient.raw)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)
    return Sealed(ENCRYPTION_ALGORITHM, recipient.key_id, epk, nonce, ciphertext)


KeyLookup = Mapping[str, EncryptionKeyPair] | Callable[[str], EncryptionKeyPair | None]


def open_sealed(keys: KeyLookup, sealed: Sealed, aad: bytes) -> bytes:
    """Decrypt with whichever held key the payload names; any mismatch fails closed."""
    if sealed.algorithm != ENCRYPTION_ALGORITHM:
        raise AlgorithmError(f"encryption algorithm {sealed.algorithm!r} is not accepted")
    pair = keys.get(sealed.key_id) if isinstance(keys, Mapping) else keys(sealed.key_id)
    if pair is None:
        raise UnknownKeyError(f"no private key with id {sealed.key_id}")
    if len(sealed.nonce) != NONCE_BYTES or len(sealed.ephemeral_public) != RAW_KEY_BYTES:
        raise DecryptionError("sealed payload has malformed nonce or ephemeral key")
    try:
        peer = X25519PublicKey.from_public_bytes(sealed.ephemeral_public)
        shared = pair.private_key.exchange(peer)
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise DecryptionError("ephemeral key is not acceptable") from exc
    key = _derive(shared, sealed.key_id, sealed.ephemeral_public, pair.public.raw)
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag as exc:
        raise DecryptionError("payload does not authenticate (wrong key or tampered)") from exc


def verify_with(
    keys: Mapping[str, PublicSigningKey], key_id: str, data: bytes, signature: bytes
) -> PublicSigningKey:
    """Verify under the named key if it is one we trust; returns the key used."""
    key = keys.get(key_id)
    if key is None:
        raise UnknownKeyError(f"no trusted verification key with id {key_id}")
    key.verify(data, signature)
    return key
