"""Private keys at rest: encrypted PKCS#8 files, mode 0600, generated on first start.

The passphrase comes from configuration (``CHUKAN_KEY_PASSPHRASE``); key
material and passphrases are never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from chukan.keys import (
    EncryptionKeyPair,
    SigningKeyPair,
    generate_encryption_key,
    generate_signing_key,
    load_encryption_key,
    load_signing_key,
    private_key_to_pem,
)

log = structlog.get_logger("chukan.keystore")


@dataclass(frozen=True, slots=True)
class AgencyKeys:
    """The keys one party holds: it signs with one and receives sealed payloads with the other."""

    signing: SigningKeyPair
    encryption: EncryptionKeyPair


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_or_create_keys(key_dir: Path, owner: str, passphrase: bytes) -> AgencyKeys:
    """Load ``owner``'s keys from ``key_dir``, generating and saving them the first time."""
    sig_path = key_dir / f"{owner}.sig.pem"
    enc_path = key_dir / f"{owner}.enc.pem"
    if sig_path.exists() and enc_path.exists():
        keys = AgencyKeys(
            load_signing_key(owner, sig_path.read_bytes(), passphrase),
            load_encryption_key(owner, enc_path.read_bytes(), passphrase),
        )
        log.info("keys_loaded", owner=owner, signing=keys.signing.key_id)
        return keys
    keys = AgencyKeys(generate_signing_key(owner), generate_encryption_key(owner))
    _write_private(sig_path, private_key_to_pem(keys.signing.private_key, passphrase))
    _write_private(enc_path, private_key_to_pem(keys.encryption.private_key, passphrase))
    log.info(
        "keys_generated",
        owner=owner,
        signing=keys.signing.key_id,
        encryption=keys.encryption.key_id,
    )
    return keys
