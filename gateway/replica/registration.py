"""Registration messages (IF_DBM_20113_R01) applied to the replica, whole or not at all.

One pipeline serves the internal API (``POST /internal/v1/replica/registrations``)
and the bulk import CLI (``chukan replica import``):

1. **decode** off the event loop: one worker thread streams the message
   (``iter_registration``: hardened, constant memory) and cuts it into batches; with
   a process pool the thread only splits (``iter_registration_records``) and the
   entries are validated in the pool's processes (``decode_record``), which is what
   scales: threads do not, the item mapping holds the GIL (see
   ``bench/replica_import.py``);
2. **stage**: every batch is ``COPY``-ed into a temporary table as it arrives;
3. **check** set-based in SQL what the codec cannot know: the person is registered
   (``person_unknown``), the RecordIdentificationNumber was never accepted before
   (``record_id_reused``) nor appears earlier in the message
   (``record_id_duplicate``), a deletion names a record that exists
   (``record_unknown``);
4. **apply** in the same transaction with one ``INSERT … SELECT``, numbering versions
   per record key — only when no entry at all was rejected. Otherwise nothing is
   stored and the answer lists every rejected entry (record id, code, message).

Idempotency: the MSGID and the first result are stored (``replica_messages``); a
message re-sent with the same MSGID gets that result again and changes nothing (a
different body under a used MSGID is refused with ``message_id_reused``). A message
whose XML or envelope is broken is refused as a whole (4xx) and leaves no trace, so
it can be sent again corrected under the same MSGID. A message in test mode
(``MSGMode`` 1) is checked and answered but never stored.

The validation a worker process runs is in :mod:`~chukan.gateway.replica.decoding`,
the HTTP endpoints in :mod:`~chukan.gateway.replica.routes`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeAlias, cast

import asyncpg
import structlog

from chukan.codecs.registration import (
    DEFAULT_STREAM_LIMITS,
    EncodedEntry,
    EntryRejection,
    MessageHeader,
    MessageMode,
    RawRecord,
    RawStreamItem,
    StreamLimits,
    iter_registration_encoded,
    iter_registration_records,
    record_batch,
)
from chukan.codecs.registration_split import (
    RecordSlice,
    SliceRefusedError,
    SplitUnsureError,
    split_registration,
)
from chukan.gateway.core import db
from chukan.gateway.replica.decoding import (
    STAGING_COLUMNS,
    DecodedBatch,
    collect,
    decode_batch,
    decode_slice,
)
from chukan.gateway.replica.errors import (
    FeedClosedError,
    MessageIdReusedError,
    MessageUnknownError,
    RegistrationRacedError,
)
from chukan.gateway.replica.items import REPLICA_LOCK

log = structlog.get_logger("chukan.gateway")

DEFAULT_BATCH: Final = 1000


# -- decoding ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    future: concurrent.futures.Future[DecodedBatch]
    consumed: int


class _End:
    pass


class _Restart:
    """Everything decoded so far is void: the streaming parser starts again (fall back)."""


_FeedItem: TypeAlias = MessageHeader | DecodedBatch | _Pending | _Failure | _End | _Restart
_RESTART: Final = DecodedBatch([], [], restart=True)


class _Feed:
    """Items made by one worker thread, taken on the event loop, at most ``depth`` ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[_FeedItem] = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._closed = threading.Event()

    def put(self, item: _FeedItem) -> None:  # worker thread
        while not self._slots.acquire(timeout=0.05):
            if self._closed.is_set():
                raise FeedClosedError("the registration feed is closed")
        if self._closed.is_set():
            raise FeedClosedError("the registration feed is closed")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> _FeedItem:  # event loop
        item = await self._queue.get()
        self._slots.release()
        return item

    def close(self) -> list[_FeedItem]:
        self._closed.set()
        left: list[_FeedItem] = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        return left


class _CountingReader:
    """Counts the bytes the parser has read, for progress reports."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.count += len(chunk)
        return chunk


class RegistrationSource:
    """A message decoded by one worker thread, optionally validating in a process pool.

    Use as ``async with RegistrationSource(stream) as source``: ``await
    source.header()`` first, then ``async for batch in source.batches()``. Errors of
    the stream (hostile or broken XML, limits) are raised from those calls.

    With ``split`` (and a seekable stream) the thread cuts the message by byte ranges
    (:mod:`chukan.codecs.registration_split`) and does no XML work on the entries, which
    are parsed and validated only where they are checked (the pool's processes). When
    the split cannot vouch for the message, the stream is read again from its start by
    the streaming parser, and ``batches()`` first yields a batch with ``restart`` set:
    the consumer drops what it staged before.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        pool: concurrent.futures.Executor | None = None,
        batch_size: int = DEFAULT_BATCH,
        limits: StreamLimits = DEFAULT_STREAM_LIMITS,
        depth: int = 4,
        split: bool = False,
    ) -> None:
        self._reader = _CountingReader(stream)
        self._split_bytes = split and stream.seekable()
        self._start = stream.tell() if self._split_bytes else 0
        self._pool = pool
        self._batch_size = batch_size
        self._limits = limits
        #: Batches decoded (or being decoded) ahead of the consumer: bounds memory.
        self._depth = depth
        self._feed: _Feed | None = None
        self._task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> RegistrationSource:
        self._start_producer()
        return self

    def _start_producer(self) -> None:
        self._feed = _Feed(asyncio.get_running_loop(), self._depth)
        self._task = asyncio.ensure_future(asyncio.to_thread(self._produce, self._feed))

    async def _fall_back(self) -> None:
        """Stop the byte-range split and decode the message again with the streaming parser."""
        await self.aclose()
        self._split_bytes = False
        self._rewind()
        self._start_producer()

    def _rewind(self) -> None:
        self._reader.raw.seek(self._start)
        self._reader.count = 0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._feed is not None:
            for item in self._feed.close():
                if isinstance(item, _Pending):
                    item.future.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # worker thread ------------------------------------------------------------------

    def _produce(self, feed: _Feed) -> None:
        try:
            self._run(feed)
        except FeedClosedError:
            return
        except BaseException as exc:
            try:
                feed.put(_Failure(exc))
            except FeedClosedError:
                return

    def _run(self, feed: _Feed) -> None:
        stream = cast(BinaryIO, self._reader)
        if self._split_bytes:
            try:
                self._slices(feed, stream)
                return
            except (SplitUnsureError, SliceRefusedError):
                self._rewind()
                feed.put(_Restart())
        if self._pool is not None:
            self._split(feed, iter_registration_records(stream, self._limits), self._pool)
            return
        items = iter_registration_encoded(stream, self._limits)
        feed.put(cast(MessageHeader, next(items)))
        results: list[EncodedEntry | EntryRejection] = []
        first = 1  # one result per entry, in document order
        for item in items:
            if isinstance(item, MessageHeader):  # the codec yields one header, first
                continue
            results.append(item)
            if len(results) >= self._batch_size:
                feed.put(dataclasses.replace(collect(results, first), consumed=self._reader.count))
                first += len(results)
                results = []
        if results:
            feed.put(dataclasses.replace(collect(results, first), consumed=self._reader.count))
        feed.put(_End())

    def _split(
        self,
        feed: _Feed,
        items: Iterator[RawStreamItem],
        pool: concurrent.futures.Executor,
    ) -> None:
        feed.put(cast(MessageHeader, next(items)))
        pending: list[bytes] = []
        first = 1
        for item in items:
            assert isinstance(item, RawRecord)
            pending.append(item.data)
            if len(pending) >= self._batch_size:
                future = pool.submit(decode_batch, record_batch(pending), first, self._limits)
                feed.put(_Pending(future, self._reader.count))
                first += len(pending)
                pending = []
        if pending:
            future = pool.submit(decode_batch, record_batch(pending), first, self._limits)
            feed.put(_Pending(future, self._reader.count))
        feed.put(_End())

    def _slices(self, feed: _Feed, stream: BinaryIO) -> None:
        items = split_registration(stream, self._limits, batch_size=self._batch_size)
        feed.put(cast(MessageHeader, next(items)))
        for item in items:
            assert isinstance(item, RecordSlice)
            args = (item.data, item.first_position, item.count, self._limits)
            if self._pool is not None:
                feed.put(_Pending(self._pool.submit(decode_slice, *args), item.consumed))
            else:
                feed.put(dataclasses.replace(decode_slice(*args), consumed=item.consumed))
        feed.put(_End())

    # event loop ---------------------------------------------------------------------

    async def _next(self) -> _FeedItem:
        assert self._feed is not None, "use RegistrationSource as an async context manager"
        item = await self._feed.get()
        if isinstance(item, _Failure):
            raise item.error
        return item

    async def header(self) -> MessageHeader:
        while True:
            item = await self._next()
            if isinstance(item, MessageHeader):
                return item
            assert isinstance(item, _Restart), item  # the split fell back before the header

    async def batches(self) -> AsyncIterator[DecodedBatch]:
        while True:
            item = await self._next()
            if isinstance(item, _End):
                return
            if isinstance(item, _Restart):
                yield _RESTART
            elif isinstance(item, _Pending):
                try:
                    batch = await asyncio.wrap_future(item.future)
                except SliceRefusedError:
                    await self._fall_back()
                    yield _RESTART
                    continue
                yield dataclasses.replace(batch, consumed=item.consumed)
            elif isinstance(item, DecodedBatch):
                yield item
            # a MessageHeader here is the one a fall back decodes again: already answered


# -- applying ----------------------------------------------------------------------------

_STAGING_DDL: Final = """
    CREATE TEMP TABLE replica_staging (
        position   integer NOT NULL,
        record_id  text NOT NULL,
        deleted    boolean NOT NULL,
        atena_id   text NOT NULL,
        item_code  text NOT NULL,
        record_key text NOT NULL,
        valid_from date NOT NULL,
        valid_to   date,
        content    bytea,
        digest     text,
        manual_review boolean
    ) ON COMMIT DROP"""

#: The record keys the message's people already have, with their last version: read once,
#: before anything is inserted, in one index scan (the 宛名番号 as an array: the tenant
#: policy's function is evaluated once, not once per staged entry).  Versions were looked up
#: before by a subquery per inserted row, which the planner turned into a sequential scan
#: of replica_items once the table's statistics said it was (nearly) empty — a scan per row
#: of every row the same INSERT had added so far: quadratic (238 items/s at 100,000 entries).
_KNOWN: Final = """
    CREATE TEMP TABLE replica_known ON COMMIT DROP AS
    SELECT r.atena_id, r.item_code, r.record_key, max(r.version) AS version
    FROM replica_items r
    WHERE r.atena_id = ANY (ARRAY(SELECT DISTINCT atena_id FROM replica_staging))
    GROUP BY r.atena_id, r.item_code, r.record_key"""

#: What the codec cannot check, for every staged entry at once; one reason per entry.
_CHECKS: Final = """
    SELECT DISTINCT ON (position) position, record_id, code, message, place
    FROM (
        SELECT s.position, s.record_id, 1 AS priority, 'person_unknown' AS code,
               'IntegratedAddressNumber is not a registered person' AS message,
               '/Record/IntegratedAddressNumber' AS place
        FROM replica_staging s
        WHERE NOT EXISTS (SELECT 1 FROM persons p WHERE p.atena_id = s.atena_id)
        UNION ALL
        SELECT s.position, s.record_id, 2, 'record_id_reused',
               'RecordIdentificationNumber was accepted before',
               '/Record/RecordIdentificationNumber'
        FROM replica_staging s
        WHERE EXISTS (SELECT 1 FROM replica_items r WHERE r.record_id = s.record_id)
        UNION ALL
        SELECT d.position, d.record_id, 3, 'record_id_duplicate',
               'RecordIdentificationNumber appears earlier in this message',
               '/Record/RecordIdentificationNumber'
        FROM (SELECT position, record_id,
                     row_number() OVER (PARTITION BY record_id ORDER BY position) AS n
              FROM replica_staging) d
        WHERE d.n > 1
        UNION ALL
        SELECT s.position, s.record_id, 4, 'record_unknown',
               'the deletion names a record that was never registered',
               '/Record/DataSetRecordKey'
        FROM replica_staging s
        WHERE s.deleted
          AND NOT EXISTS (SELECT 1 FROM replica_known k
                          WHERE k.atena_id = s.atena_id AND k.item_code = s.item_code
                            AND k.record_key = s.record_key)
          AND NOT EXISTS (SELECT 1 FROM replica_staging e
                          WHERE e.atena_id = s.atena_id AND e.item_code = s.item_code
                            AND e.record_key = s.record_key AND NOT e.deleted
                            AND e.position < s.position)
    ) found
    ORDER BY position, priority"""


#: Versions continue per record key after its last stored version (``{last}``), in message
#: order.  The digests of the canonical bytes were computed where the items were encoded.
#: The tenant is computed once (an InitPlan), not as a column default per row.
_INSERT_VERSIONS: Final = """WITH inserted AS (
        INSERT INTO replica_items (tenant, atena_id, item_code, record_key, version,
                                   valid_from, valid_to, deleted, content, digest, record_id,
                                   message_id, stored_by)
        SELECT (SELECT chukan_tenant()), s.atena_id, s.item_code, s.record_key,
               COALESCE({last}, 0)
                 + row_number() OVER (PARTITION BY s.atena_id, s.item_code, s.record_key
                                      ORDER BY s.position),
               s.valid_from, s.valid_to, s.deleted, s.content, s.digest,
               s.record_id, $1, $2
        FROM {source}
        RETURNING deleted)
    SELECT count(*) FILTER (WHERE NOT deleted) AS registered,
           count(*) FILTER (WHERE deleted) AS deleted
    FROM inserted"""


def _insert_versions(source: str, last: str) -> str:
    """The rows of ``source`` (aliased ``s``) stored as the versions after each record key's
    last one (``last``) and their counts: shared by :data:`_APPLY` and :data:`_APPLY_BATCH`,
    which differ in where the rows and the last versions come from."""
    return _INSERT_VERSIONS.replace("{source}", source).replace("{last}", last)


_APPLY: Final = _insert_versions(
    """replica_staging s
        LEFT JOIN replica_known k
               ON k.atena_id = s.atena_id AND k.item_code = s.item_code
              AND k.record_key = s.record_key""",
    "k.version",
)


#: Each batch as it arrives, while the next ones are decoded: its rows, then the same rows
#: appended to the staging table (which the checks of a message that is not applied read).
_BATCH_DDL: Final = "CREATE TEMP TABLE replica_batch (LIKE replica_staging) ON COMMIT DROP"
_BATCH_TO_STAGING: Final = "INSERT INTO replica_staging SELECT * FROM replica_batch"

#: One batch applied ahead of the checks (see _apply): the last version of each entry's record
#: key, earlier batches of the same message included, is one descent of the version index
#: (the statement does not see its own rows; they are numbered in message order).  Reading
#: every version of the batch's people instead, then sorting, grouping and joining them, cost
#: about 15 µs an entry, a quarter of PostgreSQL's part of the import.
_APPLY_BATCH: Final = _insert_versions(
    "replica_batch s",
    """(SELECT r.version FROM replica_items r
                   WHERE r.atena_id = s.atena_id AND r.item_code = s.item_code
                     AND r.record_key = s.record_key
                   ORDER BY r.version DESC LIMIT 1)""",
)

#: The 自動応答不可フラグ of the message's entries (AutomaticResponseDisabledFlag), applied with
#: them: per person and item the last entry that carries one decides.  Run once every entry
#: is applied (the person is known: the checks, or the foreign key of the rows applied ahead).
_APPLY_FLAGS: Final = """
    WITH flagged AS (
        INSERT INTO replica_review_flags (atena_id, item_code, manual_review, set_by)
        SELECT DISTINCT ON (atena_id, item_code) atena_id, item_code, manual_review, $1
        FROM replica_staging WHERE manual_review IS NOT NULL
        ORDER BY atena_id, item_code, position DESC
        ON CONFLICT (tenant, atena_id, item_code) DO UPDATE
        SET manual_review = EXCLUDED.manual_review, set_by = EXCLUDED.set_by, set_at = now()
        RETURNING 1)
    SELECT count(*) FROM flagged"""

#: The one check the constraints of replica_items do not make for the batches applied ahead:
#: a deletion naming a record key that had no version before this message (its own rows
#: carry its MSGID) nor a registration earlier in it.
_UNKNOWN_DELETION: Final = """
    SELECT EXISTS (
        SELECT 1 FROM replica_staging s
        WHERE s.deleted
          AND NOT EXISTS (SELECT 1 FROM replica_items r
                          WHERE r.atena_id = s.atena_id AND r.item_code = s.item_code
                            AND r.record_key = s.record_key
                            AND r.message_id IS DISTINCT FROM $1)
          AND NOT EXISTS (SELECT 1 FROM replica_staging e
                          WHERE e.atena_id = s.atena_id AND e.item_code = s.item_code
                            AND e.record_key = s.record_key AND NOT e.deleted
                            AND e.position < s.position))"""


class _Ahead:
    """Batches applied to replica_items as they arrive, before the message is checked whole.

    The per-tenant lock keeps every other writer out, and the constraints of replica_items
    make the checks of person (foreign key) and RecordIdentificationNumber (unique); when a
    batch breaks one, has rejected entries, or the whole message turns out to have any
    problem, the rows applied ahead are deleted and the message goes the checked way
    (staging, set-based checks, one INSERT … SELECT), which names every rejected entry.
    """

    def __init__(self, conn: db.Conn, message_id: str, stored_by: str, active: bool) -> None:
        self.conn = conn
        self.message_id = message_id
        self.stored_by = stored_by
        self.active = active
        self.created = False
        self.applied = False
        self.registered = 0
        self.deleted = 0

    async def start(self) -> None:
        if self.active:
            if not self.created:
                await self.conn.execute(_BATCH_DDL)
                self.created = True
            # known reads replica_items by 宛名番号; statistics of a table analyzed empty must
            # not turn that into a scan per batch of everything inserted so far.
            await self.conn.execute("SET LOCAL enable_seqscan = off")

    async def stage(self, batch: DecodedBatch) -> None:
        if batch.rejections:
            await self.abandon()
        if not batch.rows:
            return
        if not self.active:
            await self.conn.copy_records_to_table(
                "replica_staging", records=batch.rows, columns=STAGING_COLUMNS
            )
            return
        await self.conn.execute("TRUNCATE replica_batch")
        await self.conn.copy_records_to_table(
            "replica_batch", records=batch.rows, columns=STAGING_COLUMNS
        )
        await self.conn.execute(_BATCH_TO_STAGING)
        await self.conn.execute("SAVEPOINT replica_batch")
        try:
            counts = await self.conn.fetchrow(_APPLY_BATCH, self.message_id, self.stored_by)
        except asyncpg.IntegrityConstraintViolationError:
            await self.conn.execute("ROLLBACK TO SAVEPOINT replica_batch")
            await self.conn.execute("RELEASE SAVEPOINT replica_batch")
            await self.abandon()
            return
        await self.conn.execute("RELEASE SAVEPOINT replica_batch")
        assert counts is not None
        self.applied = True
        self.registered += counts["registered"]
        self.deleted += counts["deleted"]

    async def restart(self, active: bool) -> None:
        await self.abandon()
        self.active = active
        await self.start()

    async def abandon(self) -> None:
        """Undo what was applied ahead; the message goes the checked way."""
        if self.applied:
            await self.conn.execute(
                "DELETE FROM replica_items WHERE message_id = $1", self.message_id
            )
        if self.active:
            await self.conn.execute("SET LOCAL enable_seqscan = on")
        self.active = self.applied = False
        self.registered = self.deleted = 0

    async def finish(self) -> dict[str, int] | None:
        """The counts when every batch was applied and nothing is wrong with the message."""
        if not self.active:
            return None
        await self.conn.execute("SET LOCAL enable_seqscan = on")
        if self.deleted and await self.conn.fetchval(_UNKNOWN_DELETION, self.message_id):
            await self.abandon()
            return None
        return {"registered": self.registered, "deleted": self.deleted}


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrationOutcome:
    """The answer to a message: HTTP status and JSON body, as stored for replays."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    #: Seconds spent in each phase of applying (stage, check, apply, commit); not stored.
    timings: dict[str, float] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def outcome(self) -> str:
        return str(self.body["outcome"])

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return list(self.body.get("rejected", []))


def rejection_json(rejection: EntryRejection) -> dict[str, Any]:
    return {
        "position": rejection.position,
        "record_id": rejection.record_id,
        "code": rejection.code,
        "message": rejection.message,
        "where": rejection.where,
    }


async def stored_outcome(
    conn: db.Executor, message_id: str, body_sha256: str
) -> RegistrationOutcome | None:
    row = await conn.fetchrow(
        "SELECT body_sha256, http_status, result FROM replica_messages WHERE message_id = $1",
        message_id,
    )
    if row is None:
        return None
    if row["body_sha256"] != body_sha256:
        raise MessageIdReusedError("this MSGID was used before for another message")
    return RegistrationOutcome(row["http_status"], json.loads(row["result"]), replayed=True)


async def apply_registration(
    conn: db.Conn,
    source: RegistrationSource,
    *,
    body_sha256: str,
    stored_by: str,
    job_id: int | None = None,
    on_batch: Callable[[DecodedBatch, int], None] | None = None,
    apply_ahead: bool = False,
) -> RegistrationOutcome:
    """Apply one message whole or not at all (see the module docstring).

    ``conn`` must be a tenant session; ``on_batch(batch, entries_so_far)`` is called
    as batches are staged (progress). ``apply_ahead``: insert each batch into the replica
    as it arrives (PostgreSQL works while the next batches are decoded) and check the
    message whole at the end, undoing them on any problem (see :class:`_Ahead`).
    """
    header = await source.header()
    replay = await stored_outcome(conn, header.message_id, body_sha256)
    if replay is not None:
        return replay
    try:
        return await _apply(
            conn, header, source, body_sha256, stored_by, job_id, on_batch, apply_ahead
        )
    except RegistrationRacedError:
        replay = await stored_outcome(conn, header.message_id, body_sha256)
        assert replay is not None
        return replay


async def _apply(
    conn: db.Conn,
    header: MessageHeader,
    source: RegistrationSource,
    body_sha256: str,
    stored_by: str,
    job_id: int | None,
    on_batch: Callable[[DecodedBatch, int], None] | None,
    apply_ahead: bool,
) -> RegistrationOutcome:
    test_mode = header.mode is MessageMode.TEST
    timings: dict[str, float] = {}
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(chukan_tenant()))", REPLICA_LOCK
        )
        # No JIT compilation: on a PostgreSQL built with LLVM, each batch's statement (costed
        # over the threshold by enable_seqscan = off, see _Ahead) was compiled anew, 0.5 s a
        # batch, for statements that run in milliseconds (1,100 instead of 11,000 items/s).
        await conn.execute("SET LOCAL jit = off")
        reception: int | None = None
        if not test_mode:
            reception = await conn.fetchval(
                """INSERT INTO replica_messages (message_id, body_sha256, source_system, outcome,
                       http_status, result, entries, received_by, job_id)
                   VALUES ($1, $2, $3, 'rejected', 0, '{}'::jsonb, 0, $4, $5)
                   ON CONFLICT DO NOTHING RETURNING id""",
                header.message_id,
                body_sha256,
                header.source_system_id,
                stored_by,
                job_id,
            )
            if reception is None:
                raise RegistrationRacedError("another transaction stored this MSGID first")
        await conn.execute(_STAGING_DDL)
        ahead = _Ahead(conn, header.message_id, stored_by, active=apply_ahead and not test_mode)
        await ahead.start()
        entries = 0
        rejections: list[EntryRejection] = []
        async for batch in source.batches():
            if batch.restart:  # decoded again from the start: what was staged is void
                await conn.execute("TRUNCATE replica_staging")
                await ahead.restart(apply_ahead and not test_mode)
                entries = 0
                rejections.clear()
            entries += batch.entries
            rejections.extend(batch.rejections)
            await ahead.stage(batch)
            if on_batch is not None:
                on_batch(batch, entries)
        timings["stage_ms"] = time.perf_counter() - started
        applied = await ahead.finish()
        # Statistics of the columns the checks and the apply join and sort on (those of
        # the item bytes would cost as much again and are never used).
        if applied is None:
            await conn.execute(
                "ANALYZE replica_staging (position, record_id, deleted, atena_id, item_code,"
                " record_key)"
            )
            await conn.execute(_KNOWN)
            await conn.execute("ANALYZE replica_known")
            # Sorting staged rows (with their content) for version numbering stays in memory.
            await conn.execute("SET LOCAL work_mem = '64MB'")
            for row in await conn.fetch(_CHECKS):
                rejections.append(
                    EntryRejection(
                        row["record_id"],
                        row["code"],
                        row["message"],
                        row["position"],
                        row["place"],
                    )
                )
        timings["check_ms"] = time.perf_counter() - started - timings["stage_ms"]
        body: dict[str, Any] = {
            "message_id": header.message_id,
            "reception_number": f"R{reception:012d}" if reception is not None else None,
            "mode": header.mode.value,
            "entries": entries,
        }
        if rejections:
            rejections.sort(key=lambda r: r.position)
            status = 422
            body = {
                "error": {
                    "code": "registration_rejected",
                    "message": f"{len(rejections)} of {entries} entries were rejected; "
                    "nothing was stored",
                },
                **body,
                "outcome": "rejected",
                "msg_result": "1",
                "rejected": [rejection_json(r) for r in rejections],
            }
        else:
            counts: asyncpg.Record | dict[str, int] | None
            if test_mode:
                counts = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE NOT deleted) AS registered, "
                    "count(*) FILTER (WHERE deleted) AS deleted FROM replica_staging"
                )
                status, outcome = 200, "validated"
            elif applied is not None:
                counts = applied
                status, outcome = 201, "accepted"
            else:
                counts = await conn.fetchrow(_APPLY, header.message_id, stored_by)
                status, outcome = 201, "accepted"
            assert counts is not None
            body |= {
                "outcome": outcome,
                "msg_result": "0",
                "registered": counts["registered"],
                "deleted": counts["deleted"],
            }
            if not test_mode:
                flags = await conn.fetchval(_APPLY_FLAGS, stored_by)
                if flags:
                    body["review_flags"] = flags
        if not test_mode:
            await conn.execute(
                """UPDATE replica_messages SET outcome = $2, http_status = $3,
                       result = $4::jsonb, entries = $5
                   WHERE message_id = $1""",
                header.message_id,
                "accepted" if status == 201 else "rejected",
                status,
                json.dumps(body, ensure_ascii=False),
                entries,
            )
        timings["apply_ms"] = (
            time.perf_counter() - started - timings["stage_ms"] - timings["check_ms"]
        )
    timings["commit_ms"] = (
        time.perf_counter()
        - started
        - timings["stage_ms"]
        - timings["check_ms"]
        - timings["apply_ms"]
    )
    log.info(
        "registration_applied" if status == 201 else "registration_not_applied",
        message_id=header.message_id,
        outcome=body["outcome"],
        entries=entries,
        rejected=len(rejections),
        caller=stored_by,
        **{name: round(seconds * 1000, 1) for name, seconds in timings.items()},
    )
    return RegistrationOutcome(status, body, timings=timings)


async def received_message(conn: db.Executor, message_id: str) -> dict[str, Any]:
    """The stored answer to a received (not test-mode) message, as the GET returns it."""
    row = await conn.fetchrow(
        "SELECT http_status, result, received_at, received_by FROM replica_messages "
        "WHERE message_id = $1",
        message_id,
    )
    if row is None:
        raise MessageUnknownError("no message with this MSGID was received")
    return {
        "message_id": message_id,
        "http_status": row["http_status"],
        "received_at": row["received_at"].isoformat(),
        "received_by": row["received_by"],
        "result": json.loads(row["result"]),
    }
