"""The 国保連 伝送 mailbox protocol, shared by the gateway and the 国保連 simulator (pure).

A file travels as a JSON *file envelope*: who sends it to whom, its ファイル管理番号
and file name, the SHA-256 of the plaintext, and the plaintext sealed for the
receiver's X25519 key (:func:`chukan.keys.seal`). The associated data binds
sender, receiver, number and name, so a sealed file cannot be replayed under
another number or by another sender. The envelope bytes are signed by the
sender (``Chukan-Signature``); the mailbox answers with a signed *intake result*
(取込結果): counts and per-record errors (record number, field, code; never a
value from the file).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from chukan.gateway.kokuhoren.errors import EnvelopeInvalidError, FileDigestMismatchError
from chukan.keys import PublicEncryptionKey, Sealed, b64d, b64e, open_sealed, seal
from chukan.keys.crypto import KeyLookup
from chukan.keys.errors import KeyFormatError

#: The 国保連 side of every exchange (the 保険者 side is its 保険者番号).
KOKUHOREN_PARTY: Final = "kokuhoren"
FILE_MANAGEMENT_NUMBER: Final = re.compile(r"^[0-9]{10}$")
PARTY: Final = re.compile(rf"^(?:[0-9]{{6}}|{KOKUHOREN_PARTY})$")
FILE_NAME: Final = re.compile(r"^10_[0-9]{3}[0-9]{6}[0-9]{6}\.csv$")
DIGEST: Final = re.compile(r"^[0-9a-f]{64}$")
INTAKE_STATUSES: Final = ("accepted", "partially_accepted", "rejected")


def file_aad(sender: str, receiver: str, file_management_number: str, file_name: str) -> bytes:
    """Associated data binding a sealed file to its parties, number and name."""
    return (
        f"chukan-kokuhoren-file|{sender}|{receiver}|{file_management_number}|{file_name}".encode()
    )


def file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _text(data: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise EnvelopeInvalidError(f"envelope field {name!r} is missing or malformed")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EnvelopeInvalidError(f"{what} must be a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class FileEnvelope:
    """One sealed file in transit between a 保険者 and 国保連."""

    sender: str
    receiver: str
    file_management_number: str
    file_name: str
    digest: str
    sealed: Sealed

    @property
    def aad(self) -> bytes:
        return file_aad(self.sender, self.receiver, self.file_management_number, self.file_name)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "sender": self.sender,
                "receiver": self.receiver,
                "file_management_number": self.file_management_number,
                "file_name": self.file_name,
                "digest": self.digest,
                "sealed": {
                    "alg": self.sealed.algorithm,
                    "key_id": self.sealed.key_id,
                    "epk": b64e(self.sealed.ephemeral_public),
                    "nonce": b64e(self.sealed.nonce),
                    "ciphertext": b64e(self.sealed.ciphertext),
                },
            },
            separators=(",", ":"),
        ).encode("ascii")

    @classmethod
    def from_bytes(cls, raw: bytes) -> FileEnvelope:
        try:
            data = _object(json.loads(raw), "the envelope")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EnvelopeInvalidError("the envelope is not JSON") from None
        sealed = _object(data.get("sealed"), "sealed")
        try:
            parts = {
                name: b64d(_text(sealed, name, re.compile(r"^[A-Za-z0-9_\-]+$")))
                for name in ("epk", "nonce", "ciphertext")
            }
        except KeyFormatError:
            raise EnvelopeInvalidError("sealed parts must be base64url") from None
        return cls(
            sender=_text(data, "sender", PARTY),
            receiver=_text(data, "receiver", PARTY),
            file_management_number=_text(data, "file_management_number", FILE_MANAGEMENT_NUMBER),
            file_name=_text(data, "file_name", FILE_NAME),
            digest=_text(data, "digest", DIGEST),
            sealed=Sealed(
                algorithm=_text(sealed, "alg", re.compile(r"^[A-Za-z0-9+\-]{1,64}$")),
                key_id=_text(sealed, "key_id", re.compile(r"^[A-Za-z0-9._\-]{1,128}$")),
                ephemeral_public=parts["epk"],
                nonce=parts["nonce"],
                ciphertext=parts["ciphertext"],
            ),
        )


def seal_file(
    recipient: PublicEncryptionKey,
    content: bytes,
    *,
    sender: str,
    receiver: str,
    file_management_number: str,
    file_name: str,
) -> FileEnvelope:
    """Seal ``content`` for ``recipient`` in an envelope naming both parties."""
    aad = file_aad(sender, receiver, file_management_number, file_name)
    return FileEnvelope(
        sender,
        receiver,
        file_management_number,
        file_name,
        file_digest(content),
        seal(recipient, content, aad),
    )


def open_file(keys: KeyLookup, envelope: FileEnvelope) -> bytes:
    """The plaintext of ``envelope``; fails closed on any key, tag or digest mismatch."""
    content = open_sealed(keys, envelope.sealed, envelope.aad)
    if file_digest(content) != envelope.digest:
        raise FileDigestMismatchError("the file does not match the digest of its envelope")
    return content


# -- intake result (取込結果) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntakeError:
    """One refused record (or, without a record number, a defect of the whole file)."""

    record_number: int | None
    field: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "record_number": self.record_number,
            "field": self.field,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What 国保連 made of one file: counts and per-record errors, no personal values."""

    file_management_number: str
    file_name: str
    status: str
    record_count: int
    accepted: int
    rejected: int
    errors: tuple[IntakeError, ...]
    received_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file_management_number": self.file_management_number,
            "file_name": self.file_name,
            "status": self.status,
            "record_count": self.record_count,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "errors": [error.to_json() for error in self.errors],
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, value: Any) -> IntakeResult:
        data = _object(value, "the intake result")
        status = data.get("status")
        if status not in INTAKE_STATUSES:
            raise EnvelopeInvalidError("intake status is not one of the documented values")
        counts = [data.get(name) for name in ("record_count", "accepted", "rejected")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise EnvelopeInvalidError("intake counts must be non-negative integers")
        errors_json = data.get("errors")
        if not isinstance(errors_json, list):
            raise EnvelopeInvalidError("intake errors must be a list")
        errors: list[IntakeError] = []
        for item in errors_json:
            error = _object(item, "an intake error")
            number, field, code, message = (
                error.get(k) for k in ("record_number", "field", "code", "message")
            )
            if not (number is None or (isinstance(number, int) and not isinstance(number, bool))):
                raise EnvelopeInvalidError("record_number must be an integer or null")
            if not (field is None or isinstance(field, str)):
                raise EnvelopeInvalidError("field must be a string or null")
            if not isinstance(code, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", code):
                raise EnvelopeInvalidError("error codes are lower-case identifiers")
            errors.append(IntakeError(number, field, code, str(message)[:500]))
        received_at = data.get("received_at")
        record_count, accepted, rejected = counts
        assert isinstance(record_count, int)
        assert isinstance(accepted, int)
        assert isinstance(rejected, int)
        return cls(
            file_management_number=_text(data, "file_management_number", FILE_MANAGEMENT_NUMBER),
            file_name=_text(data, "file_name", FILE_NAME),
            status=status,
            record_count=record_count,
            accepted=accepted,
            rejected=rejected,
            errors=tuple(errors),
            received_at=str(received_at),
        )
