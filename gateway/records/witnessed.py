"""Checking a record chain against the witness's receipts, pure: ``records verify --witness``.

The walk (:mod:`.verify`) feeds :class:`WitnessCheck` every record as it streams by
(``seq``, ``id`` and canonical bytes) and, range by range, the receipts that cover it and
the chain's hashes at their ``seq``.  For each receipt it checks the witness's
countersignature under the pinned hub key, that the receipts follow one another
(``after_seq`` is the previous ``seq``), that the chain's hash at its ``seq`` is the
witnessed one (else ``witnessed_checkpoint_mismatch``, naming the first differing
record) and that the database still holds that checkpoint (else
``witnessed_checkpoint_missing``).  Each segment's records are compared with the
digests the witness holds (:func:`compare_segment`): a rewrite, even one that re-hashed
the whole chain, is named row by row (``witnessed_record_altered``, ``…_deleted``,
``…_inserted``).

Memory: the records of one segment (a few hundred by default) and the receipts of one
range of ``seq``; never the whole chain.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from chukan.gateway.records.chain import Issue, VerifyReport
from chukan.gateway.records.witness_format import Receipt
from chukan.keys import KeysError, PublicSigningKey

#: How far (in seq) a record is looked for when renumbered, beyond the count difference.
RENUMBER_SLACK: Final = 2


class SegmentRow(NamedTuple):
    """One stored record as the comparison needs it (canonical None: unreadable)."""

    seq: int
    id: int
    canonical: bytes | None


def with_seq(canonical: bytes, seq: int, other: int) -> bytes:
    """The canonical bytes the same record would have at ``other`` instead of ``seq``."""
    old = f"seq:{len(str(seq))}:{seq};".encode()
    new = f"seq:{len(str(other))}:{other};".encode()
    return canonical.replace(old, new, 1)


def _digest(canonical: bytes | None) -> bytes | None:
    return None if canonical is None else hashlib.sha256(canonical).digest()


def compare_segment(
    after_seq: int, witnessed: Sequence[bytes], rows: Sequence[SegmentRow]
) -> list[Issue]:
    """Name every record of one witnessed segment that differs from what was witnessed.

    ``witnessed`` are the digests of records ``after_seq + 1 …`` as the witness holds
    them; ``rows`` the records stored now with a ``seq`` in the segment, in order.  A
    record is matched to a witnessed digest at its own ``seq`` or, when rows were
    deleted or inserted and the rest renumbered, at a ``seq`` near it; the two
    sequences are then aligned (:class:`difflib.SequenceMatcher`): a witnessed record
    with a stored one in its place but another digest is ``witnessed_record_altered``,
    one with none ``witnessed_record_deleted`` (named by its witnessed ``seq``), a
    stored record with no witnessed one ``witnessed_record_inserted``."""
    digests = [_digest(r.canonical) for r in rows]
    if len(rows) == len(witnessed) and all(
        d == w and r.seq == after_seq + i + 1
        for i, (d, w, r) in enumerate(zip(digests, witnessed, rows, strict=True))
    ):
        return []
    position = {w: i for i, w in enumerate(witnessed)}
    slack = abs(len(rows) - len(witnessed)) + RENUMBER_SLACK
    tokens: list[int] = []
    for j, (row, digest) in enumerate(zip(rows, digests, strict=True)):
        found = position.get(digest) if digest is not None else None
        if found is None and row.canonical is not None:
            for other in range(max(row.seq - slack, after_seq + 1), row.seq + slack + 1):
                if other != row.seq and other - after_seq <= len(witnessed):
                    candidate = hashlib.sha256(with_seq(row.canonical, row.seq, other)).digest()
                    if position.get(candidate) == other - after_seq - 1:
                        found = other - after_seq - 1
                        break
        tokens.append(found if found is not None else -1 - j)  # unmatched: a token of its own
    issues: list[Issue] = []
    matcher = difflib.SequenceMatcher(None, list(range(len(witnessed))), tokens, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):
            row = rows[j1 + k]
            issues.append(
                Issue(
                    "witnessed_record_altered",
                    row.seq,
                    row.id,
                    f"differs from the record witnessed at seq {after_seq + i1 + k + 1}",
                )
            )
        for i in range(i1 + paired, i2):
            issues.append(
                Issue(
                    "witnessed_record_deleted",
                    after_seq + i + 1,
                    None,
                    "a witnessed record is missing",
                )
            )
        for j in range(j1 + paired, j2):
            row = rows[j]
            issues.append(
                Issue("witnessed_record_inserted", row.seq, row.id, "not among the witnessed")
            )
    return issues


def receipt_problem(
    receipt: Receipt, tenant: str, hub_keys: Mapping[str, PublicSigningKey]
) -> Issue | None:
    """Why a receipt cannot be trusted (None: it is the witness's, for this tenant)."""
    if receipt.tenant != tenant:
        return Issue("witness_receipt_invalid", receipt.seq, None, "a receipt of another tenant")
    key = hub_keys.get(receipt.witness_key_id)
    if key is None:
        return Issue(
            "witness_key_unknown", receipt.seq, None, f"witness key {receipt.witness_key_id}"
        )
    try:
        key.verify(receipt.message(), receipt.witness_signature)
    except KeysError:
        return Issue("witness_signature_invalid", receipt.seq, None, "bad witness signature")
    if not receipt.records_match():
        return Issue(
            "witness_receipt_invalid", receipt.seq, None, "record digests differ from signed"
        )
    return None


@dataclass
class WitnessCheck:
    """The receipts' side of one walk (see the module's docstring)."""

    tenant: str
    report: VerifyReport
    hub_keys: Mapping[str, PublicSigningKey]
    #: Receipts whose segments are still to be compared, in order.
    segments: deque[Receipt] = field(default_factory=deque)
    #: Receipts whose head hash is still to be checked, in order.
    heads: deque[Receipt] = field(default_factory=deque)
    rows: list[SegmentRow] = field(default_factory=list)
    previous_seq: int = 0
    last_seq: int = 0
    receipts: int = 0
    first_differing: int | None = None
    #: The chain's base after a disposal (retention): receipts up to it are only linked up
    #: and signature-checked, and a segment reaching back past it is not compared.
    base_seq: int = 0

    def add(self, receipt: Receipt) -> None:
        """The next receipt, in ``seq`` order (before the walk reaches its records)."""
        self.receipts += 1
        self.last_seq = max(self.last_seq, receipt.seq)
        problem = receipt_problem(receipt, self.tenant, self.hub_keys)
        if receipt.after_seq != self.previous_seq:
            self.report.issues.append(
                Issue(
                    "witness_receipts_gap",
                    receipt.seq,
                    None,
                    f"follows seq {receipt.after_seq}, not {self.previous_seq}",
                )
            )
        self.previous_seq = receipt.seq
        if problem is not None:
            self.report.issues.append(problem)
            return
        if receipt.seq <= self.base_seq:
            return
        if receipt.records and receipt.after_seq >= self.base_seq:
            self.segments.append(receipt)
        self.heads.append(receipt)

    def row(self, seq: int, row_id: int, canonical: bytes | None) -> None:
        """The next record the walk reads (in ``seq`` order)."""
        while self.segments and seq > self.segments[0].seq:
            self._close()
        if self.segments and seq > self.segments[0].after_seq:
            self.rows.append(SegmentRow(seq, row_id, canonical))

    def close_through(self, high: int | None) -> None:
        """Every record up to ``high`` (None: all) has been read."""
        while self.segments and (high is None or self.segments[0].seq <= high):
            self._close()

    def _close(self) -> None:
        receipt = self.segments.popleft()
        issues = compare_segment(receipt.after_seq, receipt.records, self.rows)
        self.rows = []
        for issue in issues:
            if issue.seq is not None and (
                self.first_differing is None or issue.seq < self.first_differing
            ):
                self.first_differing = issue.seq
        self.report.issues.extend(issues)

    def watched(self, low: int | None, high: int | None) -> list[int]:
        """The ``seq`` of the receipts whose heads fall in the range ``(low, high]``."""
        return [
            r.seq
            for r in self.heads
            if (low is None or r.seq > low) and (high is None or r.seq <= high)
        ]

    def check_heads(
        self,
        high: int | None,
        hashes: Mapping[int, bytes | None],
        checkpoints: Mapping[int, bytes],
    ) -> None:
        """The chain's hash (``hashes``) and the stored checkpoint at each witnessed ``seq``
        up to ``high``, once the walk is past it."""
        while self.heads and (high is None or self.heads[0].seq <= high):
            receipt = self.heads.popleft()
            actual = hashes.get(receipt.seq)
            if actual != receipt.hash:
                first = self.first_differing
                where = (
                    f"first differing record: seq {first}"
                    if first is not None and first <= receipt.seq
                    else "no witnessed record differs; the chain's hashes do"
                )
                if actual is None:
                    where = "no record at this sequence; " + where
                self.report.issues.append(
                    Issue("witnessed_checkpoint_mismatch", receipt.seq, None, where)
                )
            if checkpoints.get(receipt.seq) != receipt.hash:
                self.report.issues.append(
                    Issue(
                        "witnessed_checkpoint_missing",
                        receipt.seq,
                        None,
                        "the database holds no checkpoint with the witnessed hash here",
                    )
                )
