"""Backups at rest: a stream of AES-256-GCM chunks under a key derived from a passphrase.

Format ``chukan.backup.v1`` (all integers big-endian)::

    MAGIC | u32 header length | header (canonical JSON) | frame* (the last one final)
    frame = u8 flag (0 = more, 1 = final) | u32 ciphertext length | ciphertext (+16-byte tag)

The header is plaintext (what, when, which server: no personal data) and is
authenticated: the SHA-256 of magic, length and header is every chunk's associated
data.  The key is scrypt(passphrase, a random salt of this file) — the key rings'
cost, about 0.1 s and 32 MiB — and each chunk's 96-bit nonce is a random 7-byte
prefix of this file, the chunk's counter (u32) and its flag (the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizár).  So a flipped byte, a
dropped, repeated or reordered chunk, a chunk moved from another backup, an edited
header and a cut-off tail (no final chunk) all fail authentication; memory stays
one chunk whatever the size.  A key check value in the header (HMAC of a fixed
label) tells a wrong passphrase from an altered file; it reveals nothing a guess
at the passphrase could not learn by trying the first chunk.

Pure: file objects in, file objects out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from typing import IO, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from chukan.gateway.backup.errors import (
    BackupFormatError,
    BackupPassphraseError,
    BackupPassphraseWrongError,
    BackupTamperedError,
    BackupTruncatedError,
)
from chukan.keys import KeysError, b64d, b64e
from chukan.keys.crypto import MIN_PASSPHRASE_BYTES

MAGIC: Final = b"CHUKAN-BACKUP\x00v1\n"
FORMAT: Final = "chukan.backup.v1"
CIPHER: Final = "AES-256-GCM-STREAM"
CHUNK_BYTES: Final = 1 << 20
TAG_BYTES: Final = 16
NONCE_PREFIX_BYTES: Final = 7
SALT_BYTES: Final = 16
MAX_HEADER_BYTES: Final = 1 << 20
MAX_CHUNK_BYTES: Final = 16 << 20
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
FLAG_MORE: Final = 0
FLAG_FINAL: Final = 1
KEY_CHECK_LABEL: Final = b"chukan-backup-v1 key check"
MAX_CHUNKS: Final = 2**32


def canonical(document: dict[str, Any]) -> bytes:
    """The one byte form of a JSON document (sorted keys, no spaces)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise BackupPassphraseError(
            f"the backup passphrase must be a random secret of at least "
            f"{MIN_PASSPHRASE_BYTES} bytes"
        )


def _derive(passphrase: bytes, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def _key_check(key: bytes) -> str:
    return b64e(hmac.new(key, KEY_CHECK_LABEL, hashlib.sha256).digest()[:16])


def _nonce(prefix: bytes, counter: int, flag: int) -> bytes:
    return prefix + counter.to_bytes(4, "big") + bytes((flag,))


class EncryptingWriter:
    """Write plaintext in; complete chunks go out to ``sink`` as they fill.

    :meth:`close` writes the final chunk (possibly empty) and must be called: a
    stream without it reads as truncated.
    """

    def __init__(
        self,
        sink: IO[bytes],
        passphrase: bytes,
        about: dict[str, Any],
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        check_passphrase(passphrase)
        salt = os.urandom(SALT_BYTES)
        self._prefix = os.urandom(NONCE_PREFIX_BYTES)
        key = _derive(passphrase, salt, SCRYPT_N)
        header = {
            "format": FORMAT,
            "about": about,
            "kdf": {
                "name": "scrypt",
                "salt": b64e(salt),
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "check": _key_check(key),
            },
            "cipher": {
                "name": CIPHER,
                "nonce_prefix": b64e(self._prefix),
                "chunk_bytes": chunk_bytes,
            },
        }
        encoded = canonical(header)
        lead = MAGIC + len(encoded).to_bytes(4, "big") + encoded
        self._aad = hashlib.sha256(lead).digest()
        self._aead = AESGCM(key)
        self._sink = sink
        self._chunk = chunk_bytes
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        sink.write(lead)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("the backup stream is closed")
        self._buffer += data
        # Keep at least one byte back: only close() knows which chunk is the last.
        while len(self._buffer) > self._chunk:
            self._emit(bytes(self._buffer[: self._chunk]), FLAG_MORE)
            del self._buffer[: self._chunk]

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buffer), FLAG_FINAL)
            self._buffer.clear()
            self._closed = True

    def _emit(self, plaintext: bytes, flag: int) -> None:
        if self._counter >= MAX_CHUNKS:
            raise ValueError("backup too large for one stream")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, flag), plaintext, self._aad)
        self._sink.write(bytes((flag,)) + len(sealed).to_bytes(4, "big") + sealed)
        self._counter += 1


def _read_exact(source: IO[bytes], size: int) -> bytes | None:
    """``size`` bytes, None at a clean end of file; a partial read is a truncation."""
    data = source.read(size)
    if not data:
        return None
    while len(data) < size:
        more = source.read(size - len(data))
        if not more:
            raise BackupTruncatedError("the backup ends in the middle of a chunk (truncated)")
        data += more
    return data


def read_header(source: IO[bytes]) -> dict[str, Any]:
    """The plaintext header (not yet authenticated: that happens with the first chunk)."""
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise BackupFormatError("not a chukan backup (unknown magic bytes)")
    raw_length = source.read(4)
    if len(raw_length) != 4:
        raise BackupTruncatedError("the backup ends inside its header (truncated)")
    length = int.from_bytes(raw_length, "big")
    if not 0 < length <= MAX_HEADER_BYTES:
        raise BackupFormatError("the backup's header has an impossible length")
    encoded = source.read(length)
    if len(encoded) != length:
        raise BackupTruncatedError("the backup ends inside its header (truncated)")
    try:
        header = json.loads(encoded)
    except (ValueError, UnicodeDecodeError):
        raise BackupFormatError("the backup's header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupFormatError(f"not a {FORMAT} backup")
    if canonical(header) != encoded:
        raise BackupTamperedError("the backup's header is not in its canonical form (edited)")
    header["_aad"] = hashlib.sha256(MAGIC + raw_length + encoded).hexdigest()
    return header


def _kdf_parameters(header: dict[str, Any]) -> tuple[bytes, int, str, bytes, int]:
    kdf, cipher = header.get("kdf"), header.get("cipher")
    if not isinstance(kdf, dict) or not isinstance(cipher, dict):
        raise BackupFormatError("the backup's header lacks its key derivation or cipher")
    n, chunk = kdf.get("n"), cipher.get("chunk_bytes")
    if (
        kdf.get("name") != "scrypt"
        or kdf.get("r") != SCRYPT_R
        or kdf.get("p") != SCRYPT_P
        or not isinstance(n, int)
        or isinstance(n, bool)
        or not 2**14 <= n <= 2**17
        or n & (n - 1)
        or cipher.get("name") != CIPHER
        or not isinstance(chunk, int)
        or not 0 < chunk <= MAX_CHUNK_BYTES
    ):
        raise BackupFormatError("the backup uses unsupported key derivation or cipher parameters")
    try:
        salt, prefix = b64d(str(kdf["salt"])), b64d(str(cipher["nonce_prefix"]))
    except KeysError:
        raise BackupFormatError("the backup's salt or nonce prefix is not base64url") from None
    if len(prefix) != NONCE_PREFIX_BYTES or not salt:
        raise BackupFormatError("the backup's salt or nonce prefix has the wrong size")
    return salt, n, str(kdf.get("check", "")), prefix, chunk


def decrypted_chunks(source: IO[bytes], passphrase: bytes) -> Iterator[bytes]:
    """The plaintext of a backup, chunk by chunk, each authenticated before it is yielded.

    Raises :class:`BackupTruncatedError` when the stream ends before its final chunk
    and :class:`BackupTamperedError` for anything altered (including bytes after it).
    A consumer must read to the end before trusting that nothing is missing.
    """
    check_passphrase(passphrase)
    header = read_header(source)
    salt, n, check, prefix, chunk = _kdf_parameters(header)
    key = _derive(passphrase, salt, n)
    if not hmac.compare_digest(_key_check(key), check):
        raise BackupPassphraseWrongError("the passphrase does not open this backup")
    aead, aad = AESGCM(key), bytes.fromhex(header["_aad"])
    counter = 0
    while True:
        lead = _read_exact(source, 5)
        if lead is None:
            raise BackupTruncatedError(
                f"the backup ends after {counter} chunks without its final one (truncated)"
            )
        flag, length = lead[0], int.from_bytes(lead[1:], "big")
        if flag not in (FLAG_MORE, FLAG_FINAL) or not TAG_BYTES <= length <= chunk + TAG_BYTES:
            raise BackupTamperedError(f"chunk {counter} has an impossible flag or length")
        sealed = _read_exact(source, length)
        if sealed is None:
            raise BackupTruncatedError(f"the backup ends before chunk {counter} (truncated)")
        try:
            plaintext = aead.decrypt(_nonce(prefix, counter, flag), sealed, aad)
        except InvalidTag:
            raise BackupTamperedError(
                f"chunk {counter} fails authentication: the backup was altered"
            ) from None
        yield plaintext
        counter += 1
        if flag == FLAG_FINAL:
            if source.read(1):
                raise BackupTamperedError("bytes follow the backup's final chunk")
            return
