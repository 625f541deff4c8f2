"""Verifying a tenant's record chain and its checkpoints, from one database snapshot.

The walk itself is pure (:class:`~chukan.gateway.records.chain.ChainWalk`);
this module reads the rows it is fed, streaming: the records come out of
PostgreSQL by ``COPY … TO STDOUT`` (text format) one range of ``seq`` at a time,
each range's checkpoints first, so memory stays the same whatever the length of
the chain, and the server produces the next rows while this process hashes.

Every record's canonical form is rebuilt here from the values as stored (never
taken from the database's ``chukan_record_canonical``), and its hash recomputed.
A row in the common shape (ASCII, no escaped character, UTC timestamps of years
1000-9999, NULL only where a column allows it) is turned into its canonical bytes
straight from the COPY text (:func:`copy_canonical`); any other row is decoded
into typed values and goes through :func:`~chukan.gateway.records.chain.canonical_record`
itself (:func:`decode_copy_row`).  Both give the same bytes; the tests hold them
to each other and to the SQL function.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.settings import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_WITNESS_MARGIN
from chukan.gateway.core.state import utcnow
from chukan.gateway.records.chain import (
    CANONICAL_VERSION,
    CONTENT_COLUMNS,
    ChainRow,
    ChainWalk,
    Issue,
    VerifyReport,
    canonical_record,
    checkpoint_message,
    genesis_hash,
)
from chukan.gateway.records.retention import RETENTION_YEARS
from chukan.gateway.records.witness_format import Receipt
from chukan.gateway.records.witnessed import WitnessCheck
from chukan.keys import PublicSigningKey, public_signing_key

log = structlog.get_logger("chukan.records")

#: Records per ``COPY``: the checkpoints of one range of ``seq`` are held while it is read.
RANGE: Final = 100_000
#: How often (in records) the walk reports its progress, when asked to.
PROGRESS_EVERY: Final = 100_000

#: The columns of a record as ``COPY`` prints them: hashes in hex (no escaping), the rest
#: with their own output functions (the session's TimeZone is UTC, DateStyle ISO).
COPY_COLUMNS: Final = (
    "id, tenant, seq, "
    + ", ".join(CONTENT_COLUMNS)
    + ", recorded_at, pg_catalog.encode(prev_hash, 'hex'), pg_catalog.encode(hash, 'hex')"
)
_NAMES: Final = ("id", "tenant", "seq", *CONTENT_COLUMNS, "recorded_at", "prev_hash", "hash")
_NULL: Final = "\\N"
_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE: Final = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
_TIMESTAMP: Final = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\+00", re.ASCII
)
_INTEGERS: Final = frozenset({"id", "seq", "legal_basis"})
_TIMESTAMPS: Final = frozenset({"requested_at", "provided_at", "recorded_at"})

#: Told the records walked so far and the chain head's ``seq`` (None: no head).
Progress = Callable[[int, int | None], None]


def _unescape_match(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "x" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _ESCAPES.get(code, code)


def _copy_value(text: str) -> str | None:
    """One field of a ``COPY`` text row: NULL, or the text with its escapes undone."""
    if text == _NULL:
        return None
    return _ESCAPE.sub(_unescape_match, text) if "\\" in text else text


def _copy_timestamp(text: str) -> dt.datetime:
    """A timestamptz as printed with TimeZone UTC and DateStyle ISO (ValueError otherwise:
    BC, infinity, or beyond what a datetime holds)."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"unexpected timestamp {text!r}")
    year, month, day, hour, minute, second, fraction = match.groups()
    return dt.datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        int((fraction or "").ljust(6, "0")),
        tzinfo=dt.UTC,
    )


def decode_copy_row(fields: list[str]) -> ChainRow:
    """A record from the fields of its ``COPY`` text row (:data:`COPY_COLUMNS`), decoded into
    typed values whose canonical form is :func:`canonical_record`'s; a row whose content
    cannot be decoded has no canonical form (it cannot match its hash)."""
    if len(fields) != len(_NAMES):
        raise ValueError(f"a record row has {len(fields)} fields, not {len(_NAMES)}")
    row: dict[str, Any] = dict(zip(_NAMES, map(_copy_value, fields), strict=True))
    for name in _INTEGERS:
        if row[name] is not None:
            row[name] = int(row[name])
    canonical: bytes | None
    try:
        for name in _TIMESTAMPS:
            if row[name] is not None:
                row[name] = _copy_timestamp(row[name])
        if row["non_disclosure"] is not None:
            row["non_disclosure"] = row["non_disclosure"] == "t"
        canonical = canonical_record(row)
    except (ValueError, TypeError):
        canonical = None
    return ChainRow(
        row["seq"],
        row["id"],
        bytes.fromhex(row["prev_hash"]),
        bytes.fromhex(row["hash"]),
        canonical,
    )


def _field(name: str, value: str) -> str:
    """``name:length:value;`` of an ASCII value, NULL (``\\N``) as ``name:-;``."""
    return f"{name}:-;" if value == _NULL else f"{name}:{len(value)}:{value};"


#: Canonical fragments of the low-cardinality runs of fields (parties and codes; outcome,
#: reason and flag), by their COPY text; cleared when full, so memory stays bounded.
_FRAGMENTS: dict[tuple[str, ...], str] = {}
_FRAGMENTS_MAX: Final = 4096


def _parties(key: tuple[str, ...]) -> str:
    requester, provider, business, procedure, item = key
    fragment = (
        _field("requester", requester)
        + _field("provider", provider)
        + _field("business_code", business)
        + _field("procedure_code", procedure)
        + _field("item_code", item)
    )
    if len(_FRAGMENTS) >= _FRAGMENTS_MAX:
        _FRAGMENTS.clear()
    _FRAGMENTS[key] = fragment
    return fragment


def _result(key: tuple[str, ...]) -> str:
    outcome, reason, hidden = key
    fragment = (
        _field("outcome", outcome)
        + _field("reason_code", reason)
        + ("non_disclosure:4:true;" if hidden == "t" else "non_disclosure:5:false;")
    )
    if len(_FRAGMENTS) >= _FRAGMENTS_MAX:
        _FRAGMENTS.clear()
    _FRAGMENTS[key] = fragment
    return fragment


#: What completes a timestamp as COPY prints it (``YYYY-MM-DD HH:MM:SS[.f…]+00``, without
#: trailing zeros) once its ``+00`` is cut, by its length: 27 characters in canonical form.
_COMPLETION: Final = {
    22: ".000000Z",
    24: "00000Z",
    25: "0000Z",
    26: "000Z",
    27: "00Z",
    28: "0Z",
    29: "Z",
}


def copy_canonical(line: str, fields: list[str]) -> bytes | None:
    """The canonical bytes of a record straight from its ``COPY`` text row, when the row
    has the common shape; None when it must be decoded (:func:`decode_copy_row`).

    The common shape: ASCII (so lengths in characters are lengths in bytes), no escaped
    character and NULL only in the columns that allow it (every backslash is the NULL
    marker of such a column), the three timestamps in UTC as PostgreSQL's ISO style prints
    them (``YYYY-MM-DD HH:MM:SS[.ffffff]+00``, a year from 1000).  A timestamp of another
    shape that ends in ``+00`` and has one of these lengths (a year beyond 9999) gives text
    with a space in it, which no record's canonical form has, so its row cannot match a
    hash."""
    (_, tenant, seq, role, query, permit, requester, provider, business, procedure, item,
     basis, atena, requested, provided, outcome, reason, hidden, recorded, _, _) = fields  # fmt: skip  # noqa: E501
    complete = _COMPLETION.get
    nulls = 0
    if permit == _NULL:
        nulls, permit_text = 1, "permit_id:-;"
    else:
        permit_text = f"permit_id:{len(permit)}:{permit};"
    if basis == _NULL:
        nulls, basis_text = nulls + 1, "legal_basis:-;"
    else:
        basis_text = f"legal_basis:{len(basis)}:{basis};"
    if atena == _NULL:
        nulls, atena_text = nulls + 1, "atena_id:-;"
    else:
        atena_text = f"atena_id:{len(atena)}:{atena};"
    if provided == _NULL:
        nulls, provided_text = nulls + 1, "provided_at:-;"
    else:
        end = complete(len(provided))
        if end is None or provided[-3:] != "+00" or provided[0] == "0":
            return None
        provided_text = f"provided_at:27:{provided[:10]}T{provided[11:-3]}{end};"
    if reason == _NULL:
        nulls += 1
    requested_end = complete(len(requested))
    recorded_end = complete(len(recorded))
    if (
        line.count("\\") != nulls
        or not line.isascii()
        or requested_end is None
        or recorded_end is None
        or requested[-3:] != "+00"
        or recorded[-3:] != "+00"
        or requested[0] == "0"
        or recorded[0] == "0"
        or (hidden != "f" and hidden != "t")
    ):
        return None
    key: tuple[str, ...] = (requester, provider, business, procedure, item)
    parties = _FRAGMENTS.get(key) or _parties(key)
    key = (outcome, reason, hidden)
    result = _FRAGMENTS.get(key) or _result(key)
    return (
        f"{CANONICAL_VERSION};tenant:{len(tenant)}:{tenant};seq:{len(seq)}:{seq};"
        f"role:{len(role)}:{role};query_id:{len(query)}:{query};{permit_text}{parties}"
        f"{basis_text}{atena_text}"
        f"requested_at:27:{requested[:10]}T{requested[11:-3]}{requested_end};{provided_text}"
        f"{result}recorded_at:27:{recorded[:10]}T{recorded[11:-3]}{recorded_end};"
    ).encode()


class CopyReader:
    """Feeds the walk the records of one ``COPY``, chunk by chunk, a ``seq`` at a time: a
    record alone at its ``seq`` (the rule) through :meth:`ChainWalk.single`, several
    through :meth:`ChainWalk.group`."""

    def __init__(self, walk: ChainWalk, tick: Callable[[], None]) -> None:
        self.walk = walk
        self.tick = tick
        self.rest = b""
        #: The last row read (line, fields, seq), not fed yet: the next may share its seq.
        self.line = ""
        self.fields: list[str] = []
        self.seq = 0
        #: The rows of a seq read more than once, not fed yet.
        self.rows: list[ChainRow] = []

    async def __call__(self, chunk: bytes) -> None:
        data = self.rest + chunk if self.rest else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self.rest = data
            return
        self.rest = data[end + 1 :]
        single, last_line, last, last_seq, rows = (
            self._single,
            self.line,
            self.fields,
            self.seq,
            self.rows,
        )
        for line in data[:end].decode().split("\n"):
            fields = line.split("\t")
            seq = int(fields[2])
            if seq == last_seq and last:
                if not rows:
                    rows.append(decode_copy_row(last))
                rows.append(decode_copy_row(fields))
            elif rows:
                self.walk.group(last_seq, rows)
                rows = []
            elif last:
                single(last_line, last, last_seq)
            last_line, last, last_seq = line, fields, seq
        self.line, self.fields, self.seq, self.rows = last_line, last, last_seq, rows
        self.tick()

    def _single(self, line: str, fields: list[str], seq: int) -> None:
        canonical = copy_canonical(line, fields)
        if canonical is None:
            self.walk.group(seq, [decode_copy_row(fields)])
        else:
            self.walk.single(seq, int(fields[0]), fields[19], fields[20], canonical)

    def finish(self) -> None:
        if self.rest:
            raise ValueError("a record row was cut short")
        if self.rows:
            self.walk.group(self.seq, self.rows)
        elif self.fields:
            self._single(self.line, self.fields, self.seq)
        self.line, self.fields, self.seq, self.rows = "", [], 0, []


async def verify_chain(
    conn: db.Conn,
    tenant: str,
    trusted_keys: Mapping[str, PublicSigningKey] | None,
    *,
    progress: Progress | None = None,
    receipts: AsyncIterator[Receipt] | None = None,
    hub_keys: Mapping[str, PublicSigningKey] | None = None,
    window: dt.timedelta = DEFAULT_CHECKPOINT_INTERVAL + DEFAULT_WITNESS_MARGIN,
) -> VerifyReport:
    """Walk a tenant's chain and its checkpoints in one snapshot, naming every altered,
    deleted or inserted record by ``seq`` and ``id``, and every checkpoint the chain no
    longer matches (a chain rewritten wholesale by a database superuser).

    ``trusted_keys`` are the agency's public signing keys from outside the
    database (key files, the hub registry); ``None`` falls back on the keys
    stored beside the checkpoints, and the report says the keys are untrusted.
    ``progress`` is told how far the walk is every :data:`PROGRESS_EVERY` records
    and at the end.

    ``receipts`` (in ``seq`` order: from the witness, or an exported file) are checked
    under ``hub_keys`` as the walk goes (:class:`~chukan.gateway.records.witnessed.WitnessCheck`);
    records older than ``window`` covered by no receipt are ``unwitnessed_records``.
    """
    report = VerifyReport(tenant, keys_trusted=trusted_keys is not None)
    check: WitnessCheck | None = None
    if receipts is not None:
        report.witnessed = True
        check = WitnessCheck(tenant, report, hub_keys or {})
    peeked: list[Receipt] = []
    exhausted = False

    async def pull(high: int | None) -> None:
        """Hand the check every receipt whose segment starts at or before ``high``."""
        nonlocal exhausted
        assert check is not None
        assert receipts is not None
        while not exhausted:
            if not peeked:
                try:
                    peeked.append(await anext(receipts))
                except StopAsyncIteration:
                    exhausted = True
                    break
            if high is not None and peeked[0].after_seq >= high:
                break
            check.add(peeked.pop())

    next_progress = PROGRESS_EVERY

    def tick() -> None:
        nonlocal next_progress
        if progress is not None and report.records >= next_progress:
            next_progress = report.records + PROGRESS_EVERY
            progress(report.records, report.head_seq)

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # How COPY prints the timestamps copy_canonical reads (this transaction only).
        await conn.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
        head = await conn.fetchrow(
            "SELECT seq, hash FROM record_chain_heads WHERE tenant = $1", tenant
        )
        report.head_seq = head["seq"] if head else None
        walk = ChainWalk(tenant, report, report.head_seq, genesis_hash(tenant))
        base = await _chain_base(conn, tenant, trusted_keys, report)
        if base is not None:  # records past retention were disposed of: walk from the base
            walk.prev_hash, walk.prev_hex = base["hash"], base["hash"].hex()
            walk.expected, walk.last_seq = base["seq"] + 1, base["seq"]
            walk.previous_checkpoint = base["seq"]
            if check is not None:
                check.base_seq = base["seq"]
        start = None if base is None else base["seq"]
        if check is not None:
            walk.observer = check.row
        reader = CopyReader(walk, tick)
        # Ranges of seq: the first (from the base, if any) and the last open-ended, so rows
        # numbered below 1 or beyond the head are read too.
        bounds = [
            b for b in range(RANGE, report.head_seq or 0, RANGE) if start is None or b > start
        ]
        for low, high in zip([start, *bounds], [*bounds, None], strict=True):
            checkpoints = await conn.fetch(
                "SELECT * FROM record_checkpoints WHERE tenant = $1 "
                "AND ($2::bigint IS NULL OR seq > $2) AND ($3::bigint IS NULL OR seq <= $3) "
                "ORDER BY seq",
                tenant,
                low,
                high,
            )
            watched = {cp["seq"] for cp in checkpoints}
            if check is not None:
                await pull(high)
                watched.update(check.watched(low, high))
            walk.watch(sorted(watched))
            await conn.copy_from_query(
                f"SELECT {COPY_COLUMNS} FROM provision_records "  # noqa: S608 -- fixed columns
                "WHERE tenant = $1 AND ($2::bigint IS NULL OR seq > $2) "
                "AND ($3::bigint IS NULL OR seq <= $3) ORDER BY seq, id",
                tenant,
                low,
                high,
                output=reader,
            )
            reader.finish()
            for cp in checkpoints:
                walk.checkpoint(cp, trusted_keys)
            if check is not None:
                check.close_through(high)
                check.check_heads(
                    high, walk.watching, {cp["seq"]: cp["hash"] for cp in checkpoints}
                )
        if check is not None:
            report.witness = await _unwitnessed_tail(conn, tenant, check, window)
    walk.close(head)
    if progress is not None:
        progress(report.records, report.head_seq)
    log.info(
        "record_chain_verified",
        tenant=tenant,
        records=report.records,
        issues=len(report.issues),
    )
    return report


async def _chain_base(
    conn: db.Conn,
    tenant: str,
    trusted_keys: Mapping[str, PublicSigningKey] | None,
    report: VerifyReport,
) -> asyncpg.Record | None:
    """The tenant's chain base, left by the disposal of records past retention
    (:mod:`~chukan.gateway.records.retention`), with its own findings: a base no signed
    checkpoint vouches for (``base_unvouched``), or one for records younger than the
    retention (``base_premature``: a month dropped early).  None: walk from genesis."""
    base = await conn.fetchrow(
        "SELECT b.seq, b.hash, b.disposed_through, now() - make_interval(years => $2) "
        "AS cutoff FROM record_chain_bases b WHERE b.tenant = $1 ORDER BY b.seq DESC LIMIT 1",
        tenant,
        RETENTION_YEARS,
    )
    if base is None:
        return None
    report.base_seq = base["seq"]
    report.records_before_base = await conn.fetchval(
        "SELECT count(*) FROM provision_records WHERE tenant = $1 AND seq <= $2",
        tenant,
        base["seq"],
    )
    checkpoint = await conn.fetchrow(
        "SELECT * FROM record_checkpoints WHERE tenant = $1 AND seq = $2", tenant, base["seq"]
    )
    keys = trusted_keys
    if keys is None and checkpoint is not None:
        keys = {
            checkpoint["key_id"]: public_signing_key(checkpoint["key_id"], checkpoint["public_key"])
        }
    key = None if checkpoint is None or keys is None else keys.get(checkpoint["key_id"])
    vouched = False
    if checkpoint is not None and key is not None and checkpoint["hash"] == base["hash"]:
        message = checkpoint_message(
            tenant, checkpoint["seq"], checkpoint["hash"], checkpoint["signed_at"]
        )
        try:
            key.verify(message, checkpoint["signature"])
            vouched = True
        except Exception:  # any failure of the signature is the finding
            vouched = False
    if not vouched:
        report.issues.append(
            Issue("base_unvouched", base["seq"], None, "no signed checkpoint has the base's hash")
        )
    if base["disposed_through"] > base["cutoff"]:
        report.issues.append(
            Issue(
                "base_premature",
                base["seq"],
                None,
                f"records up to {base['disposed_through'].isoformat()} were disposed of "
                f"before their {RETENTION_YEARS} years",
            )
        )
    return base


async def _unwitnessed_tail(
    conn: db.Conn, tenant: str, check: WitnessCheck, window: dt.timedelta
) -> dict[str, Any]:
    """The records after the last witnessed checkpoint; the first of them older than
    ``window`` is ``unwitnessed_records`` (a superuser had time to rewrite it unseen)."""
    tail = await conn.fetchrow(
        "SELECT count(*) AS n, min(recorded_at) AS oldest, now() AS now FROM provision_records "
        "WHERE tenant = $1 AND seq > $2",
        tenant,
        check.last_seq,
    )
    assert tail is not None
    now = max(utcnow(), tail["now"])
    stale = await conn.fetchrow(
        "SELECT seq, id, recorded_at FROM provision_records "
        "WHERE tenant = $1 AND seq > $2 AND recorded_at < $3 ORDER BY seq, id LIMIT 1",
        tenant,
        check.last_seq,
        now - window,
    )
    if stale is not None:
        check.report.issues.append(
            Issue(
                "unwitnessed_records",
                stale["seq"],
                stale["id"],
                f"recorded at {stale['recorded_at'].isoformat()}, more than "
                f"{window.total_seconds():.0f} s ago, and covered by no witnessed checkpoint",
            )
        )
    oldest = tail["oldest"]
    return {
        "receipts": check.receipts,
        "witnessed_seq": check.last_seq,
        "unwitnessed_tail": {
            "records": tail["n"],
            "oldest_recorded_at": oldest.isoformat() if oldest else None,
            "seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        },
    }
