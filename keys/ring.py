"""An owner's key ring with rotation overlap (DESIGN §6: "keys rotate with an overlap").

A ring holds an owner's X25519 encryption and Ed25519 signing key pairs, each
with the time it became active and, once replaced, the time it was retired.
New messages always use the newest active key; a retired key still decrypts
(and its public half is still published for verifiers) until ``retired_at +
overlap``, so messages sealed or signed just before a rotation stay readable.
After that window the key is refused with :class:`KeyRetiredError`.

States of one key at a time ``now``:

* active: ``activated_at <= now`` and not retired yet (``now < retired_at``);
* retiring: ``retired_at <= now < retired_at + overlap``, decrypts, not used for new messages;
* expired: ``now >= retired_at + overlap``, refused; :meth:`KeyRing.prune` drops it.

A key whose ``activated_at`` is still ahead (pre-published) is never chosen for
new messages but does decrypt: it is our own key, so nothing is gained by refusing.

Serialisation (:func:`ring_to_bytes`) is a JSON document whose private keys are
encrypted PKCS#8 PEM.  The PKCS#8 passphrase is not the caller's passphrase but
scrypt of it with a random salt, because ``cryptography`` writes PKCS#8 with
only 2048 PBKDF2 iterations; the same scrypt output keys an HMAC-SHA256 over
the whole document, so validity times cannot be edited without the passphrase.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Generic, Literal, TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .crypto import (
    ENCRYPTION_ALGORITHM,
    SIGNATURE_ALGORITHM,
    EncryptionKeyPair,
    PublicEncryptionKey,
    PublicSigningKey,
    Sealed,
    SigningKeyPair,
    b64d,
    b64e,
    generate_encryption_key,
    generate_signing_key,
    load_encryption_key,
    load_signing_key,
    open_sealed,
    private_key_to_pem,
)
from .errors import KeyFormatError, KeyRetiredError, NoActiveKeyError, UnknownKeyError

DEFAULT_OVERLAP: Final = timedelta(days=7)
RING_FORMAT: Final = "chukan.keyring.v1"

_SCRYPT_N: Final = 2**15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SCRYPT_N_MAX: Final = 2**17  # refuse documents that would make loading cost > 128 MiB
_SALT_BYTES: Final = 16


P = TypeVar("P", EncryptionKeyPair, SigningKeyPair)
KeyState = Literal["pending", "active", "retiring", "expired"]


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


@dataclass(frozen=True, slots=True)
class RingKey(Generic[P]):
    """One key pair of a ring with its validity."""

    pair: P
    activated_at: datetime
    retired_at: datetime | None = None

    def __post_init__(self) -> None:
        _aware(self.activated_at, "activated_at")
        if self.retired_at is not None:
            _aware(self.retired_at, "retired_at")
            if self.retired_at < self.activated_at:
                raise ValueError(f"key {self.key_id} retires before it activates")

    @property
    def key_id(self) -> str:
        return self.pair.key_id

    def state(self, now: datetime, overlap: timedelta) -> KeyState:
        if self.retired_at is not None and now >= self.retired_at + overlap:
            return "expired"
        if self.retired_at is not None and now >= self.retired_at:
            return "retiring"
        if now < self.activated_at:
            return "pending"
        return "active"


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A public key with its validity, as the hub registry lists it.

    Senders encrypt only to an ``active`` encryption key; verifiers accept
    signatures under ``active`` and ``retiring`` signing keys until ``valid_until``.
    """

    public: PublicEncryptionKey | PublicSigningKey
    status: Literal["active", "retiring"]
    valid_from: datetime
    valid_until: datetime | None

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @property
    def purpose(self) -> Literal["enc", "sig"]:
        return "enc" if isinstance(self.public, PublicEncryptionKey) else "sig"

    @property
    def algorithm(self) -> str:
        return ENCRYPTION_ALGORITHM if self.purpose == "enc" else SIGNATURE_ALGORITHM


def _check_ids(owner: str, purpose: str, keys: Sequence[RingKey[Any]]) -> None:
    for key in keys:
        parts = key.key_id.rsplit(".", 2)
        if len(parts) != 3 or parts[0] != owner or parts[1] != purpose:
            raise ValueError(f"key {key.key_id} is not a {purpose} key of {owner}")


def _current(keys: Sequence[RingKey[P]], now: datetime, overlap: timedelta, what: str) -> P:
    best: RingKey[P] | None = None
    for key in keys:  # later entries win ties, so the last rotation is preferred
        if key.state(now, overlap) == "active" and (
            best is None or key.activated_at >= best.activated_at
        ):
            best = key
    if best is None:
        raise NoActiveKeyError(f"no {what} key is active at {now.isoformat()}")
    return best.pair


@dataclass(frozen=True, slots=True)
class KeyRing:
    """All of one owner's key pairs, old and new; immutable, :meth:`rotate` returns a new ring."""

    owner: str
    encryption_keys: tuple[RingKey[EncryptionKeyPair], ...]
    signing_keys: tuple[RingKey[SigningKeyPair], ...]
    overlap: timedelta = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if not self.owner:
            raise ValueError("a key ring needs an owner")
        if self.overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        _check_ids(self.owner, "enc", self.encryption_keys)
        _check_ids(self.owner, "sig", self.signing_keys)
        ids = [k.key_id for k in self._all_keys()]
        if len(set(ids)) != len(ids):
            raise ValueError("a key ring must not hold the same key twice")

    def _all_keys(self) -> tuple[RingKey[Any], ...]:
        return (*self.encryption_keys, *self.signing_keys)

    @classmethod
    def generate(
        cls, owner: str, *, now: datetime, overlap: timedelta = DEFAULT_OVERLAP
    ) -> KeyRing:
        """A fresh ring with one encryption and one signing key, active from ``now``."""
        _aware(now, "now")
        return cls(
            owner,
            (RingKey(generate_encryption_key(owner), now),),
            (RingKey(generate_signing_key(owner), now),),
            overlap,
        )

    def current_encryption(self, now: datetime) -> EncryptionKeyPair:
        """The key others should seal new payloads to (newest active)."""
        return _current(self.encryption_keys, _aware(now, "now"), self.overlap, "encryption")

    def current_signing(self, now: datetime) -> SigningKeyPair:
        """The key to sign new messages with (newest active)."""
        return _current(self.signing_keys, _aware(now, "now"), self.overlap, "signing")

    def decryption_key(self, key_id: str, now: datetime) -> EncryptionKeyPair:
        """The private key a payload names, while its overlap window lasts."""
        _aware(now, "now")
        for key in self.encryption_keys:
            if key.key_id == key_id:
                if key.state(now, self.overlap) == "expired":
                    raise KeyRetiredError(f"key {key_id} was retired and its overlap has ended")
                return key.pair
        raise UnknownKeyError(f"no private key with id {key_id}")

    def unseal(self, sealed: Sealed, aad: bytes, *, now: datetime) -> bytes:
        """:func:`~chukan.keys.crypto.open_sealed` with the overlap rule applied."""

        def lookup(key_id: str) -> EncryptionKeyPair | None:
            return self.decryption_key(key_id, now)

        return open_sealed(lookup, sealed, aad)

    def rotate(self, now: datetime, owner: str | None = None) -> KeyRing:
        """A new ring with fresh key pairs active from ``now``; all others retire at ``now``.

        ``owner`` defaults to the ring's owner; a different one is refused because
        a ring belongs to one owner.  Expired keys are kept; see :meth:`prune`.
        """
        _aware(now, "now")
        if owner is not None and owner != self.owner:
            raise ValueError(f"ring of {self.owner} cannot be rotated for {owner}")
        if any(k.activated_at > now for k in self._all_keys()):
            raise ValueError("ring holds a key activating after now; rotate later")

        def retire(key: RingKey[P]) -> RingKey[P]:
            if key.retired_at is None or key.retired_at > now:
                return replace(key, retired_at=now)
            return key

        return replace(
            self,
            encryption_keys=(
                *(retire(k) for k in self.encryption_keys),
                RingKey(generate_encryption_key(self.owner), now),
            ),
            signing_keys=(
                *(retire(k) for k in self.signing_keys),
                RingKey(generate_signing_key(self.owner), now),
            ),
        )

    def prune(self, now: datetime) -> KeyRing:
        """Drop keys whose overlap has ended, so their private halves are destroyed at rest too."""
        _aware(now, "now")
        return replace(
            self,
            encryption_keys=tuple(
                k for k in self.encryption_keys if k.state(now, self.overlap) != "expired"
            ),
            signing_keys=tuple(
                k for k in self.signing_keys if k.state(now, self.overlap) != "expired"
            ),
        )

    def published(self, now: datetime) -> list[PublishedKey]:
        """Public keys for the hub registry: active and retiring, encryption first, newest first."""
        _aware(now, "now")
        out: list[PublishedKey] = []
        entries: tuple[tuple[RingKey[Any], ...], ...] = (self.encryption_keys, self.signing_keys)
        for keys in entries:
            listed: list[PublishedKey] = []
            for key in keys:
                state = key.state(now, self.overlap)
                if state not in ("active", "retiring"):
                    continue
                listed.append(
                    PublishedKey(
                        public=key.pair.public,
                        status="active" if state == "active" else "retiring",
                        valid_from=key.activated_at,
                        valid_until=None
                        if key.retired_at is None
                        else key.retired_at + self.overlap,
                    )
                )
            listed.sort(key=lambda p: p.valid_from, reverse=True)
            out.extend(listed)
        return out

    def verification_keys(self, now: datetime) -> dict[str, PublicSigningKey]:
        """This owner's signing keys a verifier should accept at ``now`` (for ``verify_with``)."""
        return {
            p.key_id: p.public
            for p in self.published(now)
            if isinstance(p.public, PublicSigningKey)
        }


# -- serialisation ---------------------------------------------------------------------


def _derive(passphrase: bytes, salt: bytes, n: int) -> tuple[bytes, bytes]:
    """(PKCS#8 passphrase, MAC key) from the caller's passphrase; both depend on the salt."""
    if not passphrase:
        raise KeyFormatError("a passphrase is required for a key ring")
    out = Scrypt(salt=salt, length=64, n=n, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)
    return b64e(out[:32]).encode("ascii"), out[32:]


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(mac_key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(mac_key, _canonical(body), hashlib.sha256).hexdigest()


def ring_to_bytes(ring: KeyRing, passphrase: bytes) -> bytes:
    """The ring as JSON with every private key as encrypted PKCS#8; never plaintext key material."""
    salt = os.urandom(_SALT_BYTES)
    key_pass, mac_key = _derive(passphrase, salt, _SCRYPT_N)

    def entry(purpose: str, key: RingKey[Any]) -> dict[str, Any]:
        return {
            "purpose": purpose,
            "key_id": key.key_id,
            "activated_at": key.activated_at.isoformat(),
            "retired_at": None if key.retired_at is None else key.retired_at.isoformat(),
            "private_key_pem": private_key_to_pem(key.pair.private_key, key_pass).decode("ascii"),
        }

    body: dict[str, Any] = {
        "format": RING_FORMAT,
        "owner": ring.owner,
        "overlap_seconds": ring.overlap.total_seconds(),
        "kdf": {
            "name": "scrypt",
            "salt": b64e(salt),
            "n": _SCRYPT_N,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
        },
        "keys": [entry("enc", k) for k in ring.encryption_keys]
        + [entry("sig", k) for k in ring.signing_keys],
    }
    return _canonical({**body, "mac": _mac(mac_key, body)})


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KeyFormatError(f"key ring field {name!r} is missing or has the wrong type")
    return value


def _when(text: Any, name: str) -> datetime:
    if not isinstance(text, str):
        raise KeyFormatError(f"key ring field {name!r} is not a timestamp")
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise KeyFormatError(f"key ring field {name!r} is not a timestamp") from exc
    if value.tzinfo is None:
        raise KeyFormatError(f"key ring field {name!r} has no time zone")
    return value


def ring_from_bytes(data: bytes, passphrase: bytes) -> KeyRing:
    """Inverse of :func:`ring_to_bytes`; a wrong passphrase or any edit raises KeyFormatError."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFormatError("key ring is not JSON") from exc
    if not isinstance(document, dict) or document.get("format") != RING_FORMAT:
        raise KeyFormatError("not a key ring document")
    mac = _field(document, "mac", str)
    body = {k: v for k, v in document.items() if k != "mac"}
    kdf = _field(body, "kdf", dict)
    n = _field(kdf, "n", int)
    if (
        kdf.get("name") != "scrypt"
        or kdf.get("r") != _SCRYPT_R
        or kdf.get("p") != _SCRYPT_P
        or not 2**14 <= n <= _SCRYPT_N_MAX
        or n & (n - 1)
    ):
        raise KeyFormatError("key ring uses unsupported key derivation parameters")
    salt = b64d(_field(kdf, "salt", str))
    key_pass, mac_key = _derive(passphrase, salt, n)
    if not hmac.compare_digest(_mac(mac_key, body), mac):
        raise KeyFormatError("key ring cannot be opened (wrong passphrase or modified)")

    owner = _field(body, "owner", str)
    encryption: list[RingKey[EncryptionKeyPair]] = []
    signing: list[RingKey[SigningKeyPair]] = []
    for item in _field(body, "keys", list):
        if not isinstance(item, dict):
            raise KeyFormatError("key ring entry is not an object")
        pem = _field(item, "private_key_pem", str).encode("utf-8")
        activated = _when(item.get("activated_at"), "activated_at")
        retired_raw = item.get("retired_at")
        retired = None if retired_raw is None else _when(retired_raw, "retired_at")
        purpose = item.get("purpose")
        pair: EncryptionKeyPair | SigningKeyPair
        if purpose == "enc":
            pair = load_encryption_key(owner, pem, key_pass)
        elif purpose == "sig":
            pair = load_signing_key(owner, pem, key_pass)
        else:
            raise KeyFormatError("key ring entry has an unknown purpose")
        if pair.key_id != item.get("key_id"):
            raise KeyFormatError("key ring entry's key id does not match its key")
        try:
            if isinstance(pair, EncryptionKeyPair):
                encryption.append(RingKey(pair, activated, retired))
            else:
                signing.append(RingKey(pair, activated, retired))
        except ValueError as exc:
            raise KeyFormatError(f"key ring entry is inconsistent: {exc}") from exc
    seconds = _field(body, "overlap_seconds", (int, float))
    try:
        return KeyRing(owner, tuple(encryption), tuple(signing), timedelta(seconds=seconds))
    except (ValueError, OverflowError) as exc:
        raise KeyFormatError(f"key ring is inconsistent: {exc}") from exc
