"""The hash chain of the hub's record events, pure: canonical form, hashes, witness lines.

Every event of ``hub_record_events`` (opened, held, concluded) carries ``seq``,
``prev_hash`` and ``hash = sha256(prev_hash || canonical_event(row))``, set by the
database (migration 0041, ``hub_event_canonical``: the same bytes as
:func:`canonical_event`).  The hub signs ``(seq, hash)`` of its chain head with
its own key (:func:`checkpoint_message`: the gateways' checkpoint message, for the
chain named ``hub``, which no agency code can be) and appends every checkpoint,
with the digest and name of each event it covers, to a witness file outside the
database (:class:`WitnessEntry`, one JSON line each).  The walk that names
altered, deleted and inserted events is the gateways' own
(:class:`~chukan.gateway.records.chain.ChainWalk`), fed the hub's rows by
:mod:`chukan.simulators.hub.checkpoints`; :class:`WitnessCheck` adds what the
witness file says.  No I/O here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from chukan.gateway.records import chain as records_chain
from chukan.gateway.records.chain import Issue, Row, canonical_fields

#: The chain's name in checkpoint messages and reports (agency codes are digits).
HUB_CHAIN: Final = "hub"
CANONICAL_VERSION: Final = "chukan-hub-record-v1"
WITNESS_VERSION: Final = "chukan-hub-witness-v1"

#: The columns of an event, in canonical order after ``seq`` (``recorded_at`` last).
EVENT_COLUMNS: Final = (
    "query_id",
    "kind",
    "permit_id",
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "legal_basis",
    "requester_person_code",
    "provider_person_code",
    "requested_at",
    "permit_expires_at",
    "answered_at",
    "outcome",
    "reason_code",
    "non_disclosure",
)
_NAMES: Final = ("seq", *EVENT_COLUMNS, "recorded_at")
_TIMESTAMPS: Final = frozenset({"requested_at", "permit_expires_at", "answered_at", "recorded_at"})
#: Every column of a stored event, for reading whole events back.
ROW_COLUMNS: Final = "id, " + ", ".join(_NAMES) + ", prev_hash, hash"


def canonical_event(row: Row) -> bytes:
    """The bytes an event's hash covers: every field but id, request_id and the hashes."""
    text = CANONICAL_VERSION + ";" + canonical_fields(row, _NAMES, _TIMESTAMPS, "event")
    return text.encode("utf-8")


def genesis_hash() -> bytes:
    """The prev_hash of the first event (``hub_chain_genesis`` in SQL)."""
    return hashlib.sha256(f"{CANONICAL_VERSION}|genesis".encode()).digest()


def event_hash(prev_hash: bytes, row: Row) -> bytes:
    return hashlib.sha256(prev_hash + canonical_event(row)).digest()


def event_digest(row: Row) -> bytes:
    """An event's own digest (not chained): what the witness file keeps of it."""
    return hashlib.sha256(canonical_event(row)).digest()


def checkpoint_message(seq: int, head_hash: bytes, signed_at: dt.datetime) -> bytes:
    """What the hub's checkpoint signature covers."""
    return records_chain.checkpoint_message(HUB_CHAIN, seq, head_hash, signed_at)


def verify_segment(
    rows: Sequence[Row], *, after_seq: int, prev_hash: bytes, head_seq: int, head_hash: bytes
) -> int | None:
    """The events after ``after_seq`` link up to the head: None, else the first bad ``seq``
    (``head_seq`` when only the head disagrees).  The checkpointer signs nothing then."""
    prev, expected = prev_hash, after_seq + 1
    for row in rows:
        if row["seq"] != expected or row["prev_hash"] != prev:
            return int(row["seq"])
        if event_hash(prev, row) != row["hash"]:
            return int(row["seq"])
        prev, expected = row["hash"], expected + 1
    if expected - 1 != head_seq or prev != head_hash:
        return head_seq
    return None


# -- the witness file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessEntry:
    """One signed checkpoint as the witness file keeps it: the segment ``after_seq`` <
    seq ≤ ``seq``, and for each of its events (in ``seq`` order) its digest, query id and
    kind, so a deleted event is named even once the database has forgotten it."""

    seq: int
    after_seq: int
    hash: bytes
    signed_at: dt.datetime
    key_id: str
    signature: bytes
    digests: tuple[bytes, ...]
    events: tuple[tuple[str, str], ...]

    def to_line(self) -> str:
        return json.dumps(
            {
                "version": WITNESS_VERSION,
                "seq": self.seq,
                "after_seq": self.after_seq,
                "hash": self.hash.hex(),
                "signed_at": self.signed_at.isoformat(),
                "key_id": self.key_id,
                "signature": self.signature.hex(),
                "events": [
                    [d.hex(), q, k] for d, (q, k) in zip(self.digests, self.events, strict=True)
                ],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_line(cls, line: str) -> WitnessEntry:
        """Parse one line (ValueError if it is not of the documented shape)."""
        try:
            document = json.loads(line)
            if document.get("version") != WITNESS_VERSION:
                raise ValueError("unknown witness line version")
            events = document["events"]
            seq, after_seq = int(document["seq"]), int(document["after_seq"])
            if after_seq < 0 or seq <= after_seq or len(events) != seq - after_seq:
                raise ValueError("a witness line must list one event per seq")
            signed_at = dt.datetime.fromisoformat(document["signed_at"])
            if signed_at.tzinfo is None:
                raise ValueError("signed_at must carry its time zone")
            return cls(
                seq=seq,
                after_seq=after_seq,
                hash=bytes.fromhex(document["hash"]),
                signed_at=signed_at,
                key_id=str(document["key_id"]),
                signature=bytes.fromhex(document["signature"]),
                digests=tuple(bytes.fromhex(e[0]) for e in events),
                events=tuple((str(e[1]), str(e[2])) for e in events),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a witness line: {exc}") from None


def witness_entry(checkpoint: Row, rows: Sequence[Row]) -> WitnessEntry:
    """The witness line of a stored checkpoint and the events of its segment."""
    return WitnessEntry(
        seq=checkpoint["seq"],
        after_seq=checkpoint["after_seq"],
        hash=checkpoint["hash"],
        signed_at=checkpoint["signed_at"],
        key_id=checkpoint["key_id"],
        signature=checkpoint["signature"],
        digests=tuple(event_digest(r) for r in rows),
        events=tuple((r["query_id"], r["kind"]) for r in rows),
    )


@dataclass
class WitnessCheck:
    """What the witness file says about the chain, checked as the events stream past.

    Events are matched by (query id, kind), which the hub records once each: a witnessed
    event the database no longer holds is *deleted*, a database event inside the
    witnessed range that was never witnessed is *inserted*, and one whose content
    differs from its witnessed digest is *altered* (an event only renumbered by a
    deletion or insertion before it is not counted again).  Memory holds the witnessed
    events not yet seen."""

    entries: list[WitnessEntry]
    witnessed: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    last_seq: int = 0
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        expected = 0
        for entry in self.entries:
            if entry.after_seq != expected:
                self.issues.append(
                    Issue(
                        "witness_gap",
                        entry.seq,
                        None,
                        f"the witness file goes from seq {expected} to a segment after "
                        f"{entry.after_seq}",
                    )
                )
            for offset, (digest, key) in enumerate(
                zip(entry.digests, entry.events, strict=True), start=entry.after_seq + 1
            ):
                self.witnessed[key] = (offset, digest)
            expected = entry.seq
        self.last_seq = expected

    def event(self, row: Row) -> None:
        """One database event (any order)."""
        key = (row["query_id"], row["kind"])
        found = self.witnessed.pop(key, None)
        if found is None:
            if row["seq"] <= self.last_seq:
                self.issues.append(
                    _named("inserted", row["seq"], row, "an event the witness never saw")
                )
            return
        seq, digest = found
        if event_digest(row) == digest:
            return
        if row["seq"] != seq and event_digest({**dict(row), "seq": seq}) == digest:
            return  # renumbered, not changed
        self.issues.append(_named("altered", seq, row, "content differs from the witnessed digest"))

    def finish(self) -> list[Issue]:
        """After the last event: the witnessed events never seen were deleted."""
        for (query_id, kind), (seq, _) in sorted(self.witnessed.items(), key=lambda i: i[1][0]):
            self.issues.append(
                Issue("deleted", seq, None, f"query {query_id} {kind}: witnessed, now missing")
            )
        self.witnessed = {}
        self.issues.sort(key=lambda i: (i.seq or 0, i.kind))
        return self.issues


def _named(kind: str, seq: int, row: Row, detail: str) -> Issue:
    return Issue(kind, seq, row["id"], f"query {row['query_id']} {row['kind']}: {detail}")


def read_witness_lines(lines: Iterable[str]) -> list[WitnessEntry]:
    """Every entry of a witness file, in file order (blank lines skipped)."""
    return [WitnessEntry.from_line(line) for line in lines if line.strip()]


def merge_issues(first: Sequence[Issue], more: Sequence[Issue]) -> list[Issue]:
    """``first`` and then those of ``more`` not already there (same kind and seq)."""
    seen = {(i.kind, i.seq) for i in first}
    return [*first, *(i for i in more if (i.kind, i.seq) not in seen)]


def query_ids(issues: Sequence[Issue], names: Mapping[int, str]) -> list[dict[str, Any]]:
    """The issues as JSON, each with the query id of its event where it is known."""
    out = []
    for issue in issues:
        document: dict[str, Any] = {
            "kind": issue.kind,
            "seq": issue.seq,
            "id": issue.id,
            "detail": issue.detail,
        }
        if issue.detail.startswith("query "):  # named from the witness file
            document["query_id"] = issue.detail.split()[1]
        elif issue.seq is not None and issue.seq in names:
            document["query_id"] = names[issue.seq]
        out.append(document)
    return out
