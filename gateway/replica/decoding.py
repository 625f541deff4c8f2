"""Entries of a registration message as staged rows: the part a validation worker runs.

Kept apart from :mod:`chukan.gateway.replica.registration` and importing only the
codecs, so that a process-pool worker of ``chukan replica import`` (spawned, it
imports the module of the function it runs) starts without aiohttp, asyncpg and
the gateway's state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Final, TypeAlias

from chukan.codecs.item_schema import lxml_schema
from chukan.codecs.items import ITEM_CODES
from chukan.codecs.registration import (
    DEFAULT_STREAM_LIMITS,
    REGISTRATION_XSD,
    EncodedEntry,
    EntryRejection,
    Segment,
    StreamLimits,
    encode_record_batch,
)
from chukan.codecs.registration_split import encode_record_slice, warm_slices

STAGING_COLUMNS: Final = (
    "position",
    "record_id",
    "deleted",
    "atena_id",
    "item_code",
    "record_key",
    "valid_from",
    "valid_to",
    "content",
    "digest",
    "manual_review",
)
#: One staged entry, in STAGING_COLUMNS order.
StagedRow: TypeAlias = tuple[
    int, str, bool, str, str, str, dt.date, dt.date | None, bytes | None, str | None, bool | None
]


def entry_row(entry: EncodedEntry, position: int) -> StagedRow:
    """The staged form of an accepted entry; the item in canonical bytes and their SHA-256,
    and the entry's 自動応答不可フラグ (None: absent)."""
    content = entry.content
    return (
        position,
        entry.record_id,
        entry.segment is Segment.DELETION,
        entry.integrated_address_number,
        entry.item_code,
        entry.data_set_record_key,
        entry.publication_date,
        entry.published_end_date,
        content,
        None if content is None else hashlib.sha256(content).hexdigest(),
        entry.manual_review,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Consecutive entries of a message: staged rows and rejections."""

    rows: list[StagedRow]
    rejections: list[EntryRejection]
    #: Input bytes read when the batch was cut (for progress reports).
    consumed: int = 0
    #: Set on an empty batch that voids every batch before it: the message is being
    #: decoded again from its start by the streaming parser (a byte-range split fell back).
    restart: bool = False

    @property
    def entries(self) -> int:
        return len(self.rows) + len(self.rejections)


def collect(results: list[EncodedEntry | EntryRejection], first_position: int) -> DecodedBatch:
    """A batch of consecutive checked entries, the first at ``first_position``."""
    rows: list[StagedRow] = []
    rejections: list[EntryRejection] = []
    for position, result in enumerate(results, start=first_position):
        if isinstance(result, EncodedEntry):
            rows.append(entry_row(result, position))
        else:
            rejections.append(result)
    return DecodedBatch(rows, rejections)


def decode_batch(
    data: bytes, first_position: int, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> DecodedBatch:
    """Validate consecutive raw entries given as one ``record_batch`` document (runs in a
    worker process of the bulk import)."""
    return collect(encode_record_batch(data, first_position, limits), first_position)


def decode_slice(
    data: bytes, first_position: int, expected: int, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> DecodedBatch:
    """Validate the ``expected`` entries of one byte-range slice of a message (runs in a
    worker process of the bulk import); raises ``SliceRefused`` to ask for a fall back."""
    return collect(encode_record_slice(data, first_position, expected, limits), first_position)


def warm_worker() -> None:
    """Process-pool initializer: compile every schema once, before the first batch."""
    lxml_schema(REGISTRATION_XSD)
    for spec in ITEM_CODES.values():
        lxml_schema(spec.xsd_file)
    warm_slices()
