"""Witnessed checkpoints, pure: what an agency sends its witness and the receipt it keeps.

A gateway sends every signed checkpoint of its record chain to a witness outside
its database (the hub, acting as the network's timestamping authority), with the
digest of each record the checkpoint covers since the previous one.  The witness
checks the agency's signature and that the segment follows the last one it
witnessed, countersigns with its own key and time, and keeps it; the gateway
keeps the receipt.  A database superuser who rewrites the chain (and re-hashes
it, and deletes the checkpoints) cannot rewrite what the witness holds, and the
per-record digests let ``records verify`` name the very rows that changed.

No I/O here: the hub's witness routes and the gateway's checkpointer and
``records verify`` build and read these values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from chukan.gateway.records.chain import Row, canonical_record, canonical_timestamp
from chukan.gateway.records.errors import WitnessFormatError

WITNESS_VERSION: Final = "chukan-witness-v1"
#: The most records one witnessed segment may cover (a checkpoint is due long before).
MAX_SEGMENT: Final = 100_000
_DIGEST_BYTES: Final = 32


def record_digest(row: Row) -> bytes:
    """A record's own digest: SHA-256 of its canonical content, *not* chained, so that a
    changed record changes its digest alone (the chain hash of every later one changes)."""
    return hashlib.sha256(canonical_record(row)).digest()


def records_digest(digests: Sequence[bytes]) -> bytes:
    """One digest over a segment's record digests, in ``seq`` order (what the witness signs)."""
    return hashlib.sha256(b"".join(digests)).digest()


def witness_message(
    *,
    tenant: str,
    after_seq: int,
    seq: int,
    head_hash: bytes,
    signed_at: dt.datetime,
    key_id: str,
    signature: bytes,
    segment_digest: bytes,
    witnessed_at: dt.datetime,
) -> bytes:
    """What the witness's countersignature covers: the agency's signed checkpoint, the
    segment it closes (``after_seq`` < seq ≤ ``seq``, with its records' digest) and the
    witness's own time."""
    return "|".join(
        (
            WITNESS_VERSION,
            tenant,
            str(after_seq),
            str(seq),
            head_hash.hex(),
            canonical_timestamp(signed_at),
            key_id,
            signature.hex(),
            segment_digest.hex(),
            canonical_timestamp(witnessed_at),
        )
    ).encode()


def _hex(document: Mapping[str, Any], name: str, size: int | None = None) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise WitnessFormatError(f"{name} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise WitnessFormatError(f"{name} is not hex") from None
    if size is not None and len(raw) != size:
        raise WitnessFormatError(f"{name} must be {size} bytes")
    return raw


def _int(document: Mapping[str, Any], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WitnessFormatError(f"{name} must be a non-negative integer")
    return value


def _text(document: Mapping[str, Any], name: str, limit: int = 200) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise WitnessFormatError(f"{name} must be a non-empty string")
    return value


def _time(document: Mapping[str, Any], name: str) -> dt.datetime:
    value = _text(document, name)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise WitnessFormatError(f"{name} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise WitnessFormatError(f"{name} must carry its time zone")
    return parsed


def _checkpoint_fields(document: Any, what: str) -> dict[str, Any]:
    """The signed checkpoint's fields, common to a request and a receipt, parsed and checked."""
    if not isinstance(document, Mapping):
        raise WitnessFormatError(f"{what} is a JSON object")
    after_seq, seq = _int(document, "after_seq"), _int(document, "seq")
    if seq <= after_seq:
        raise WitnessFormatError("seq must be beyond after_seq")
    return {
        "tenant": _text(document, "tenant"),
        "after_seq": after_seq,
        "seq": seq,
        "hash": _hex(document, "hash", _DIGEST_BYTES),
        "signed_at": _time(document, "signed_at"),
        "key_id": _text(document, "key_id"),
        "signature": _hex(document, "signature"),
    }


def _digests(raw: list[Any]) -> tuple[bytes, ...]:
    return tuple(_hex({"r": r}, "r", _DIGEST_BYTES) for r in raw)


@dataclass(frozen=True, slots=True)
class WitnessRequest:
    """A signed checkpoint and the digests of the records since the previous one."""

    tenant: str
    after_seq: int
    seq: int
    hash: bytes
    signed_at: dt.datetime
    key_id: str
    signature: bytes
    records: tuple[bytes, ...]

    @property
    def segment_digest(self) -> bytes:
        return records_digest(self.records)

    def to_json(self) -> dict[str, Any]:
        return _checkpoint_json(self) | {"records": [d.hex() for d in self.records]}

    @classmethod
    def from_json(cls, document: Any) -> WitnessRequest:
        """Parse and check the shape (not the signature): :class:`WitnessFormatError`."""
        fields = _checkpoint_fields(document, "a witness request")
        size = fields["seq"] - fields["after_seq"]
        if size > MAX_SEGMENT:
            raise WitnessFormatError(f"a segment covers at most {MAX_SEGMENT} records")
        records = document.get("records")
        if not isinstance(records, list) or len(records) != size:
            raise WitnessFormatError("records must list one digest per record of the segment")
        return cls(**fields, records=_digests(records))


@dataclass(frozen=True, slots=True)
class Receipt:
    """The witness's countersignature over one checkpoint: kept by the gateway, fetched from
    the witness, or read from an exported file by an auditor.  ``records`` (the segment's
    record digests) is empty when the receipt was kept without them."""

    tenant: str
    after_seq: int
    seq: int
    hash: bytes
    signed_at: dt.datetime
    key_id: str
    signature: bytes
    segment_digest: bytes
    witnessed_at: dt.datetime
    witness_key_id: str
    witness_signature: bytes
    records: tuple[bytes, ...] = ()

    def message(self) -> bytes:
        return witness_message(
            tenant=self.tenant,
            after_seq=self.after_seq,
            seq=self.seq,
            head_hash=self.hash,
            signed_at=self.signed_at,
            key_id=self.key_id,
            signature=self.signature,
            segment_digest=self.segment_digest,
            witnessed_at=self.witnessed_at,
        )

    def records_match(self) -> bool:
        """The record digests carried (if any) are the ones the witness signed."""
        return not self.records or records_digest(self.records) == self.segment_digest

    def to_json(self, *, with_records: bool = True) -> dict[str, Any]:
        document = _checkpoint_json(self) | {
            "segment_digest": self.segment_digest.hex(),
            "witnessed_at": self.witnessed_at.isoformat(),
            "witness_key_id": self.witness_key_id,
            "witness_signature": self.witness_signature.hex(),
        }
        if with_records and self.records:
            document["records"] = [d.hex() for d in self.records]
        return document

    @classmethod
    def from_json(cls, document: Any) -> Receipt:
        """Parse and check the shape (not the signatures): :class:`WitnessFormatError`."""
        fields = _checkpoint_fields(document, "a receipt")
        raw_records = document.get("records", [])
        if not isinstance(raw_records, list) or (
            raw_records and len(raw_records) != fields["seq"] - fields["after_seq"]
        ):
            raise WitnessFormatError("records must list one digest per record of the segment")
        return cls(
            **fields,
            segment_digest=_hex(document, "segment_digest", _DIGEST_BYTES),
            witnessed_at=_time(document, "witnessed_at"),
            witness_key_id=_text(document, "witness_key_id"),
            witness_signature=_hex(document, "witness_signature"),
            records=_digests(raw_records),
        )


def _checkpoint_json(value: WitnessRequest | Receipt) -> dict[str, Any]:
    """The signed checkpoint's fields as JSON, common to a request and a receipt."""
    return {
        "tenant": value.tenant,
        "after_seq": value.after_seq,
        "seq": value.seq,
        "hash": value.hash.hex(),
        "signed_at": value.signed_at.isoformat(),
        "key_id": value.key_id,
        "signature": value.signature.hex(),
    }


def receipt_for(
    request: WitnessRequest, *, witnessed_at: dt.datetime, witness_key_id: str, signature: bytes
) -> Receipt:
    """The receipt of ``request`` once the witness has signed :func:`witness_message`."""
    return Receipt(
        tenant=request.tenant,
        after_seq=request.after_seq,
        seq=request.seq,
        hash=request.hash,
        signed_at=request.signed_at,
        key_id=request.key_id,
        signature=request.signature,
        segment_digest=request.segment_digest,
        witnessed_at=witnessed_at,
        witness_key_id=witness_key_id,
        witness_signature=signature,
        records=request.records,
    )
