"""Group commit of provisions: many decided provisions, one statement, one commit.

Every provision appends a record to the tenant's hash chain, and the chain's
head is locked from the record's insert to the commit; one provision per
transaction therefore commits one at a time, each waiting for its own WAL
flush.  Here a provision that has been decided and answered (sealed and signed,
but not yet sent) waits in a queue; one statement writes every waiting one —
permit consumed, answer stored, record appended — and one commit makes them all
durable at once.  No answer leaves before that commit (DESIGN §9).

The reads that decide provisions are batched the same way (one statement for
every provision waiting to be decided).  Only one batch of each kind per process
is in flight: while it runs, the next one fills (:mod:`chukan.gateway.core.batching`).
A provision the batch did not take (its permit or message seen meanwhile — a
copy racing the first) or a batch that failed is handed back to the caller,
which runs the one-transaction path (:mod:`.provide`) and gets its single outcome
there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.batching import Batcher
from chukan.gateway.core.state import GATEWAY_STATE
from chukan.gateway.records.store import RecordEntry
from chukan.gateway.replica.items import PROVISION_READ_SQL

log = structlog.get_logger("chukan.gateway")

#: At most this many provisions per statement (bounded parameter arrays).
MAX_BATCH: Final = 128

#: Permit consumed, answer stored and record appended for every provision of the
#: batch whose permit is new; a provision whose permit was used meanwhile is left
#: out entirely (the caller's one-transaction path decides it).  A message id
#: stored before under another permit would leave a consumed permit without
#: answer: the statement fails instead, and every provision of the batch goes the
#: one-transaction way.
BATCH_SQL: Final = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::integer[], $4::bytea[],
                             $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::text[], $11::text[], $12::text[], $13::text[],
                             $14::integer[], $15::text[], $16::timestamptz[], $17::text[],
                             $18::text[], $19::boolean[])
            WITH ORDINALITY AS t(message_id, permit_expires_at, status, body, signature,
                                 request_id, query_id, permit_id, requester, provider,
                                 business_code, procedure_code, item_code, legal_basis,
                                 atena_id, requested_at, outcome, reason_code,
                                 non_disclosure, position)),
    used AS (
        INSERT INTO used_permits (permit_id, query_id, expires_at)
        SELECT permit_id, query_id, permit_expires_at FROM input ORDER BY position
        ON CONFLICT DO NOTHING RETURNING permit_id),
    claimed AS (
        INSERT INTO provision_answers (message_id, permit_id, status, body, signature,
                                       expires_at)
        SELECT i.message_id, i.permit_id, i.status, i.body, i.signature,
               greatest(now(), i.permit_expires_at) + $20::interval
        FROM input i JOIN used u USING (permit_id) ORDER BY i.position
        ON CONFLICT DO NOTHING RETURNING message_id),
    recorded AS (
        INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
            business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
            provided_at, outcome, reason_code, non_disclosure, request_id)
        SELECT 'provider', i.query_id, i.permit_id, i.requester, i.provider,
               i.business_code, i.procedure_code, i.item_code, i.legal_basis, i.atena_id,
               i.requested_at, CASE WHEN i.outcome = 'provided' THEN now() END, i.outcome,
               i.reason_code, i.non_disclosure, i.request_id
        FROM input i JOIN used u USING (permit_id) ORDER BY i.position
        RETURNING permit_id)
    SELECT i.message_id,
           chukan_require((u.permit_id IS NULL) = (c.message_id IS NULL),
                          'a provision message id was answered under another permit')
             AND u.permit_id IS NOT NULL AS written,
           (SELECT count(*) FROM recorded) AS recorded
    FROM input i LEFT JOIN used u USING (permit_id) LEFT JOIN claimed c USING (message_id)"""


@dataclass(frozen=True, slots=True)
class Decided:
    """A provision decided and answered, waiting for its durable write."""

    message_id: str
    permit_expires_at: dt.datetime
    status: int
    body: bytes
    signature: str | None
    request_id: str | None
    #: the provider's record (its ``provided_at`` is the commit's time, set in SQL)
    record: RecordEntry


#: The record's columns in BATCH_SQL's input, after the answer's.
_RECORD_INPUT: Final = (
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
    "outcome",
    "reason_code",
    "non_disclosure",
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one provision reads before it decides (see ``PROVISION_READ_SQL``)."""

    person_code: str
    item_code: str
    on: dt.date
    permit_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Found:
    atena_id: str | None
    #: the person's lifecycle state (persons.state; docs/persons.md), None if unknown
    person_state: str | None
    manual_review: bool
    contents: list[bytes] | None
    seen: bool


class ProvisionBatches:
    """The reads and the writes of this process's provisions, each in batches."""

    def __init__(self, pool: asyncpg.Pool, retention: dt.timedelta) -> None:
        self._pool = pool
        self._retention = retention
        self.reads: Batcher[Lookup, Found] = Batcher(
            self._read, max_batch=MAX_BATCH, name="provision-reads"
        )
        self.writes: Batcher[Decided, bool] = Batcher(
            self._write,
            max_batch=MAX_BATCH,
            name="provision-writes",
            keys=lambda d: (("permit", d.record.permit_id), ("message", d.message_id)),
        )

    async def find(self, lookup: Lookup) -> Found:
        return await self.reads.submit(lookup)

    async def write(self, decided: Decided) -> bool:
        """True once ``decided`` is committed; False if the caller must take the long way."""
        try:
            return await self.writes.submit(decided)
        except Exception as exc:  # the batch failed: each provision takes the long way
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            else:
                log.warning("provision_batch_failed", error=type(exc).__name__)
            return False

    async def _read(self, batch: Sequence[Lookup]) -> list[Found]:
        rows = await self._pool.fetch(
            PROVISION_READ_SQL,
            [lookup.person_code for lookup in batch],
            [lookup.item_code for lookup in batch],
            [lookup.on for lookup in batch],
            [lookup.permit_id for lookup in batch],
            [lookup.message_id for lookup in batch],
        )
        return [
            Found(
                row["atena_id"],
                row["person_state"],
                row["manual_review"],
                row["contents"],
                row["seen"],
            )
            for row in rows
        ]

    async def _write(self, batch: Sequence[Decided]) -> list[bool]:
        answers = [
            [d.message_id for d in batch],
            [d.permit_expires_at for d in batch],
            [d.status for d in batch],
            [d.body for d in batch],
            [d.signature for d in batch],
            [d.request_id for d in batch],
        ]
        records = [[getattr(d.record, name) for d in batch] for name in _RECORD_INPUT]
        rows = await self._pool.fetch(BATCH_SQL, *answers, *records, self._retention)
        written = {row["message_id"]: bool(row["written"]) for row in rows}
        log.info("provision_batch_written", size=len(batch), written=sum(written.values()))
        return [written.get(d.message_id, False) for d in batch]

    async def close(self) -> None:
        await self.reads.close()
        await self.writes.close()


PROVISION_BATCHES: Final = web.AppKey("provision_batches", ProvisionBatches)


async def provision_batch_context(app: web.Application) -> AsyncIterator[None]:
    """The process's batches, once its state (pool) is open; drained before the pool closes."""
    state = app[GATEWAY_STATE]
    batches = ProvisionBatches(state.pool, state.config.timing.answer_retention)
    app[PROVISION_BATCHES] = batches
    yield
    await batches.close()
