"""The hash chain of the provision records, pure: canonical form, hashes, verification.

Every record's hash covers its canonical content (:func:`canonical_record`, the
same bytes as ``chukan_record_canonical`` in SQL, migration 0003) and the
previous record's hash; a checkpoint signs ``(seq, hash)`` of a chain head
(:func:`checkpoint_message`).  No I/O here: :mod:`.verify` and
:mod:`.checkpoints` feed these functions the rows they read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, NamedTuple, TypeAlias

import asyncpg

from chukan.gateway.records.errors import ChainBrokenError
from chukan.keys import PublicSigningKey, public_signing_key

CANONICAL_VERSION: Final = "chukan-record-v1"
CHECKPOINT_VERSION: Final = "chukan-checkpoint-v1"

#: Content columns, in canonical order after tenant and seq.
CONTENT_COLUMNS: Final = (
    "role",
    "query_id",
    "permit_id",
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "legal_basis",
    "atena_id",
    "requested_at",
    "provided_at",
    "outcome",
    "reason_code",
    "non_disclosure",
)
_TIMESTAMPS: Final = frozenset({"requested_at", "provided_at", "recorded_at"})

#: A record row: from asyncpg, or a plain mapping (tests, exports).
Row: TypeAlias = Mapping[str, Any] | asyncpg.Record


# -- canonical form and hashes ---------------------------------------------------------------


def _canon(name: str, value: str | None) -> str:
    if value is None:
        return f"{name}:-;"
    return f"{name}:{len(value.encode('utf-8'))}:{value};"


def canonical_timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("record timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(name: str, value: Any, timestamps: Collection[str], what: str) -> str | None:
    if value is None:
        return None
    if name in timestamps:
        return canonical_timestamp(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} field {name} has an unexpected type {type(value).__name__}")


def canonical_fields(
    row: Row, names: Iterable[str], timestamps: Collection[str], what: str = "record"
) -> str:
    """``name:length:value;`` (``name:-;`` for NULL) of each field in order: the canonical
    form shared by the gateways' records and the hub's events (their SQL twins agree)."""
    return "".join(_canon(n, _text(n, row[n], timestamps, what)) for n in names)


def canonical_record(row: Row) -> bytes:
    """The bytes a record's hash covers: every field but id and the hashes, in fixed order."""
    names = ("tenant", "seq", *CONTENT_COLUMNS, "recorded_at")
    text = CANONICAL_VERSION + ";" + canonical_fields(row, names, _TIMESTAMPS)
    return text.encode("utf-8")


def genesis_hash(tenant: str) -> bytes:
    """The prev_hash of a tenant's first record (``chukan_chain_genesis`` in SQL)."""
    return hashlib.sha256(f"{CANONICAL_VERSION}|genesis|{tenant}".encode()).digest()


def chain_hash(prev_hash: bytes, row: Row) -> bytes:
    return hashlib.sha256(prev_hash + canonical_record(row)).digest()


def checkpoint_message(tenant: str, seq: int, head_hash: bytes, signed_at: dt.datetime) -> bytes:
    """What a checkpoint signature covers."""
    return (
        f"{CHECKPOINT_VERSION}|{tenant}|{seq}|{head_hash.hex()}|{canonical_timestamp(signed_at)}"
    ).encode()


# -- verification ----------------------------------------------------------------------------


def verify_segment(
    rows: Sequence[Row], *, after_seq: int, prev_hash: bytes, head_seq: int, head_hash: bytes
) -> None:
    """The records after ``after_seq`` (whose hash is ``prev_hash``) up to the chain head
    link up, number on and hash right: else :class:`ChainBrokenError` (strict, no report)."""
    prev, expected = prev_hash, after_seq + 1
    for row in rows:
        if (
            row["seq"] != expected
            or row["prev_hash"] != prev
            or chain_hash(prev, row) != row["hash"]
        ):
            raise ChainBrokenError(
                f"record chain does not verify at seq {row['seq']}",
                seq=row["seq"],
                record_id=row["id"],
            )
        prev, expected = row["hash"], expected + 1
    if expected - 1 != head_seq or prev != head_hash:
        raise ChainBrokenError("record chain head does not match its records", seq=head_seq)


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: ``kind`` is altered, deleted, inserted, broken_link, head_missing,
    head_mismatch, checkpoint_signature_invalid, checkpoint_key_unknown,
    checkpoint_mismatch or checkpoint_unmatched; against the witness's receipts
    (:mod:`.witnessed`) witnessed_record_altered, witnessed_record_deleted,
    witnessed_record_inserted, witnessed_checkpoint_mismatch, witnessed_checkpoint_missing,
    witness_receipts_gap, witness_signature_invalid, witness_key_unknown,
    witness_receipt_invalid and unwitnessed_records."""

    kind: str
    seq: int | None
    id: int | None = None
    detail: str = ""
    #: ``witnessed_checkpoint_mismatch``: the first record that differs from the witnessed.
    first_seq: int | None = None


@dataclass
class VerifyReport:
    tenant: str
    records: int = 0
    head_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    keys_trusted: bool = True
    issues: list[Issue] = field(default_factory=list)
    #: Whether the witness's receipts were consulted, and what they say (receipts, last
    #: witnessed seq, the unwitnessed tail).
    witnessed: bool = False
    witness: dict[str, Any] | None = None
    #: Where the walk began after records past retention were disposed of (the chain
    #: base), and how many older records around that boundary were left unwalked.
    base_seq: int | None = None
    records_before_base: int = 0

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "keys_trusted": self.keys_trusted,
            "base_seq": self.base_seq,
            "records_before_base": self.records_before_base,
            "witnessed": self.witnessed,
            **(
                {"witness": self.witness}
                if self.witnessed
                else {
                    "warnings": [
                        "no witness was consulted: a chain rewritten and re-signed inside "
                        "the database is not detected (use --witness hub or --receipts)"
                    ]
                }
            ),
            "issues": [asdict(i) for i in self.issues],
        }


class ChainRow(NamedTuple):
    """One record as the walk needs it: its place, its stored hashes and the canonical bytes
    of its content as read (None when the content could not be read back at all, e.g. a
    timestamp outside what a record can hold: such a row cannot match its hash)."""

    seq: int
    id: int
    prev_hash: bytes
    hash: bytes
    canonical: bytes | None

    @property
    def valid(self) -> bool:
        """Its content matches its own hash (over its own ``prev_hash``)."""
        return (
            self.canonical is not None
            and hashlib.sha256(self.prev_hash + self.canonical).digest() == self.hash
        )


def chain_row(row: Row) -> ChainRow:
    """A whole record row (from asyncpg, a mapping) as the walk's :class:`ChainRow`."""
    return ChainRow(row["seq"], row["id"], row["prev_hash"], row["hash"], canonical_record(row))


@dataclass
class ChainWalk:
    """A walk along a tenant's chain, fed the records one ``seq`` at a time (in order),
    then the chain head (:meth:`close`); the checkpoints are fed as the walk passes them
    (:meth:`watch` before their records, :meth:`checkpoint` after).  Every altered,
    deleted or inserted record and every checkpoint the chain no longer matches becomes
    an :class:`Issue` of :attr:`report` (the checkpoints' after the records' and the
    head's, once :meth:`close` has run).

    Memory does not grow with the chain: the walk keeps the previous record's hash and
    the hashes at the ``seq`` of the checkpoints it is watching, nothing else."""

    tenant: str
    report: VerifyReport
    head_seq: int | None
    prev_hash: bytes | None
    expected: int = 1
    last_seq: int = 0
    previous_reported: bool = False
    previous_checkpoint: int = 0
    watching: dict[int, bytes | None] = field(default_factory=dict)
    checkpoint_issues: list[Issue] = field(default_factory=list)
    #: Told every record (seq, id, canonical bytes) as it is walked: the witness check.
    observer: Callable[[int, int, bytes | None], None] | None = None
    prev_hex: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.prev_hex = None if self.prev_hash is None else self.prev_hash.hex()

    def add(self, kind: str, seq: int | None, row_id: int | None = None, detail: str = "") -> None:
        self.report.issues.append(Issue(kind, seq, row_id, detail))

    def single(
        self, seq: int, row_id: int, prev_hex: str, hash_hex: str, canonical: bytes | None
    ) -> None:
        """The one record numbered ``seq``, its stored hashes in hex.  The common case — where
        the chain expects it, linking on, matching its hash — is decided here without
        building a :class:`ChainRow`; anything else goes through :meth:`group`."""
        if (
            seq == self.expected
            and prev_hex == self.prev_hex
            and canonical is not None
            and self.prev_hash is not None
            and (self.head_seq is None or seq <= self.head_seq)
        ):
            digest = hashlib.sha256(self.prev_hash + canonical).digest()
            if digest.hex() == hash_hex:
                if self.observer is not None:
                    self.observer(seq, row_id, canonical)
                self.report.records += 1
                self.previous_reported = False
                self.prev_hash, self.prev_hex = digest, hash_hex
                if seq in self.watching:
                    self.watching[seq] = digest
                self.last_seq, self.expected = seq, seq + 1
                return
        row = ChainRow(seq, row_id, bytes.fromhex(prev_hex), bytes.fromhex(hash_hex), canonical)
        self.group(seq, [row])

    def group(self, seq: int, rows: Sequence[ChainRow]) -> None:
        """The records numbered ``seq`` (more than one when records were inserted)."""
        if self.observer is not None:
            for row in rows:
                self.observer(row.seq, row.id, row.canonical)
        self.report.records += len(rows)
        if seq < 1 or (self.head_seq is not None and seq > self.head_seq):
            for row in rows:
                self.add("inserted", seq, row.id, "sequence number beyond the chain head")
            return
        if seq > self.expected:
            for missing in range(self.expected, seq):
                self.add("deleted", missing, None, "sequence number missing from the chain")
            self.previous_reported = True
        checked = [
            (row, row.valid, self.prev_hash is None or row.prev_hash == self.prev_hash)
            for row in rows
        ]
        genuine = next(
            (c for c in checked if c[1] and c[2]),
            next((c for c in checked if c[2]), next((c for c in checked if c[1]), checked[0])),
        )
        row, valid, links = genuine
        if not valid:
            self.add("altered", seq, row.id, "content does not match the record's hash")
        elif not links and not self.previous_reported:
            self.add("broken_link", seq, row.id, "previous hash does not match the chain")
        for other, _, _ in checked:
            if other is not row:
                self.add("inserted", seq, other.id, "duplicate sequence number")
        self.previous_reported = not valid
        self.prev_hash, self.prev_hex = row.hash, row.hash.hex()
        if seq in self.watching:
            self.watching[seq] = row.hash
        self.last_seq, self.expected = seq, seq + 1

    def close(self, head: Row | None) -> None:
        """After the last record: the chain head (``seq``, ``hash``) they must end at; then
        the findings of the checkpoints checked so far."""
        self._close_head(head)
        self.report.issues.extend(self.checkpoint_issues)
        self.checkpoint_issues = []

    def _close_head(self, head: Row | None) -> None:
        if head is None:
            if self.report.records:
                self.add("head_missing", None, None, "records exist but the chain head is gone")
            return
        for missing in range(self.last_seq + 1, head["seq"] + 1):
            self.add("deleted", missing, None, "sequence number missing from the chain")
        if self.last_seq == head["seq"] and self.prev_hash != head["hash"]:
            self.add("head_mismatch", head["seq"], None, "chain head hash differs")

    def watch(self, seqs: Iterable[int]) -> None:
        """Keep the hashes of the records at these ``seq`` (the checkpoints to come), instead
        of those watched so far."""
        self.watching = dict.fromkeys(seqs)

    def checkpoint(self, cp: Row, trusted_keys: Mapping[str, PublicSigningKey] | None) -> None:
        """One signed checkpoint, in ``seq`` order, once the walk is past its ``seq`` (which
        it was :meth:`watch`-ing); ``trusted_keys`` None trusts the public key stored
        beside it."""
        self.report.checkpoints += 1
        self.report.last_checkpoint_seq = cp["seq"]
        keys = trusted_keys
        if keys is None:
            keys = {cp["key_id"]: public_signing_key(cp["key_id"], cp["public_key"])}
        key = keys.get(cp["key_id"])
        message = checkpoint_message(self.tenant, cp["seq"], cp["hash"], cp["signed_at"])
        found = self.checkpoint_issues
        if key is None:
            found.append(Issue("checkpoint_key_unknown", cp["seq"], None, f"key {cp['key_id']}"))
        else:
            try:
                key.verify(message, cp["signature"])
            except Exception:
                found.append(
                    Issue("checkpoint_signature_invalid", cp["seq"], None, "bad signature")
                )
        actual = self.watching.get(cp["seq"])
        if actual is None:
            found.append(
                Issue("checkpoint_unmatched", cp["seq"], None, "no record at this sequence")
            )
        elif actual != cp["hash"]:
            found.append(
                Issue(
                    "checkpoint_mismatch",
                    cp["seq"],
                    None,
                    f"records {self.previous_checkpoint + 1}..{cp['seq']} were rewritten "
                    "after they were signed",
                )
            )
        self.previous_checkpoint = cp["seq"]
