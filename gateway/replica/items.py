"""副本 (replica) store: versioned history per person, item and DataSetRecordKey.

Model (migration ``0010_replica.sql``):

* every stored version is a row of ``replica_items``; rows are never changed or
  removed. ``version`` counts 1, 2, … per (宛名番号, 特定個人情報名, record key);
* ``valid_from`` / ``valid_to`` are the version's PublicationDate / PublishedEndDate,
  dates in Japan, both inclusive (``valid_to`` NULL: open ended);
* a deletion entry is a version without content (``deleted``): it ends the record's
  validity from its ``valid_from`` on, and the history stays;
* **selection** — the version of one record key in force on a date *d* is the one
  with the greatest (``valid_from``, ``version``) among those with ``valid_from`` ≤ *d*;
  it is provided when it is not a deletion and ``valid_to`` is open or ≥ *d*. So a
  later registration takes over from its PublicationDate, a correction registered
  with the same PublicationDate replaces the earlier version for the same period,
  and older versions keep answering for dates before;
* a query's ``reference_date`` is *d*; without one, *d* is today in Japan;
* **several record keys** — all record keys of the person and item that are in force
  on *d* are combined into **one** item document: the header values (被保険者番号,
  保険者番号) must agree and the repeating groups are concatenated in record-key
  order. Records whose header values differ cannot be combined: the provision is
  refused with ``replica_inconsistent`` (the core system's data needs fixing, see
  reconciliation). Items without an XSD in this gateway (other businesses' items
  stored through PUT) are never combined: one record key only;
* the manual-review flag (自動応答不可) belongs to a person and item
  (``replica_review_flags``), not to a version.

The single-item ``PUT`` of the internal API maps onto the same store: record key
``1`` unless ``record_key`` is given, valid from today (Japan) unless ``valid_from``
is given. Items of the 介護保険 codes (``ITEM_CODES``) are validated against their XSD and stored
in canonical form (``encode_item``), like items of registration messages, so the
content digest is the same whichever way an item came in. Items of other businesses
are accepted only when they have an XSD (``chukan.codecs.schema_items``), validated
and stored as parsed; any other code is refused (422 ``item_code_unsupported``), so
no XML that no schema checked is stored or provided.

This module holds the store's SQL and rules; its HTTP endpoints (and those of
registration messages) are in :mod:`~chukan.gateway.replica.routes`.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import hashlib
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import structlog

from chukan.codecs.errors import ItemCodeUnsupportedError
from chukan.codecs.item_model import Item
from chukan.codecs.items import ITEM_CODES, decode_item, encode_item
from chukan.codecs.schema_items import canonical_item_bytes, is_accepted_item_code
from chukan.codecs.xmlsafe import parse_xml
from chukan.gateway.core import db
from chukan.gateway.core.errors import PersonUnknownError, ValidationError
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.reconcile import COLUMNS, RECORD_KEY_PATTERN

log = structlog.get_logger("chukan.gateway")

#: Japan Standard Time (no daylight saving): validity dates are dates in Japan.
JST: Final = dt.timezone(dt.timedelta(hours=9), "JST")
DEFAULT_RECORD_KEY: Final = "1"
#: Advisory lock class of replica writes (with the tenant as the object): messages
#: take it exclusively, single PUTs shared, so versions are numbered without races.
REPLICA_LOCK: Final = 0x7265706C  # "repl"
#: Items larger than this are decoded off the event loop.
INLINE_DECODE_BYTES: Final = 64 * 1024
#: The export is the reconciliation file format (``reconcile.COLUMNS``).
EXPORT_COLUMNS: Final = COLUMNS
EXPORT_BATCH: Final = 2000


def today_jst() -> dt.date:
    return dt.datetime.now(JST).date()


# -- selection ---------------------------------------------------------------------------


def in_force_sql(atena: str, item: str, on: str) -> str:
    """Versions in force on a date, one per record key (see the module docstring).

    The arguments are SQL expressions (parameters such as ``$1``), never values.
    """
    return f"""
        SELECT v.id, v.record_key, v.version, v.content, v.digest, v.valid_from, v.valid_to
        FROM (SELECT DISTINCT ON (record_key)
                     id, record_key, version, content, digest, deleted, valid_from, valid_to
              FROM replica_items
              WHERE atena_id = {atena} AND item_code = {item} AND valid_from <= {on}
              ORDER BY record_key, valid_from DESC, version DESC) v
        WHERE NOT v.deleted AND (v.valid_to IS NULL OR v.valid_to >= {on})"""  # noqa: S608


#: What provisions read before they decide (no lock, no write), for many at once: per
#: request, the 宛名番号 of the 符号 (a merged 宛名番号's survivor: docs/persons.md) and
#: its lifecycle state, the manual-review flag and the versions in force on the reference
#: date, and whether its permit or its message was seen before (then the one-transaction
#: path of :data:`PROVISION_SQL` takes over).  Parameters (arrays, one element per
#: request): $1 符号, $2 item, $3 date, $4 permit id, $5 message id.
PROVISION_READ_SQL: Final = f"""
    SELECT i.position, p.atena_id, p.state AS person_state,
           COALESCE((SELECT f.manual_review FROM replica_review_flags f
                     WHERE f.atena_id = p.atena_id AND f.item_code = i.item_code), false)
             AS manual_review,
           r.contents,
           EXISTS (SELECT 1 FROM used_permits u WHERE u.permit_id = i.permit_id)
             OR EXISTS (SELECT 1 FROM provision_answers a WHERE a.message_id = i.message_id)
             AS seen
    FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::text[])
         WITH ORDINALITY AS i(person_code, item_code, on_date, permit_id, message_id, position)
    LEFT JOIN persons m ON m.person_code = i.person_code
    LEFT JOIN persons p ON p.atena_id = COALESCE(m.merged_into, m.atena_id)
    LEFT JOIN LATERAL (
        SELECT array_agg(s.content ORDER BY s.record_key) AS contents
        FROM ({in_force_sql("p.atena_id", "i.item_code", "i.on_date")}) s) r ON true
    ORDER BY i.position"""  # noqa: S608


#: The provider's one statement per provision (DESIGN §8): consume the permit, map
#: 符号 → 宛名番号, read the manual-review flag and the versions in force on the
#: reference date, decide the outcome, queue a held provision, and append the
#: provision record — all in one autocommitted statement, so the record chain's
#: per-tenant lock is held only inside the server, never across a client round trip.
#: ``outcome`` is NULL (and nothing is recorded) only when several record keys are in
#: force: combining them is the caller's work, which then records the outcome itself.
#: Parameters: $1 permit id, $2 query id, $3 permit expiry, $4 符号, $5 item, $6 date,
#: $7 requester, $8 provider (this agency), $9 事務, $10 事務手続き, $11 項,
#: $12 requested at, $13 requester key id, $14 requester key, $15 不開示.
PROVISION_SQL: Final = f"""
    WITH used AS (
        INSERT INTO used_permits (permit_id, query_id, expires_at)
        VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1),
    found AS (
        SELECT (SELECT count(*) FROM used) > 0 AS fresh, p.atena_id, p.state AS person_state,
               COALESCE((SELECT f.manual_review FROM replica_review_flags f
                         WHERE f.atena_id = p.atena_id AND f.item_code = $5), false)
                 AS manual_review,
               r.ids, r.contents
        FROM (SELECT 1) AS one
        LEFT JOIN persons m ON m.person_code = $4
        LEFT JOIN persons p ON p.atena_id = COALESCE(m.merged_into, m.atena_id)
        LEFT JOIN LATERAL (
            SELECT array_agg(s.id ORDER BY s.record_key) AS ids,
                   array_agg(s.content ORDER BY s.record_key) AS contents
            FROM ({in_force_sql("p.atena_id", "$5", "$6::date")}) s) r ON true),
    decided AS (
        SELECT found.*,
               CASE WHEN NOT fresh OR atena_id IS NULL THEN 'refused'
                    WHEN person_state = 'unregistered' THEN 'refused'
                    WHEN manual_review THEN 'held'
                    WHEN contents IS NULL THEN 'refused'
                    WHEN cardinality(contents) = 1 THEN 'provided' END AS outcome,
               CASE WHEN NOT fresh THEN 'permit_replayed'
                    WHEN atena_id IS NULL THEN 'person_unknown'
                    WHEN person_state = 'unregistered' THEN 'person_unregistered'
                    WHEN manual_review THEN 'manual_review'
                    WHEN contents IS NULL THEN 'item_not_found' END AS reason
        FROM found),
    held AS (
        INSERT INTO review_queue (query_id, permit_id, permit_expires_at, requester,
            requester_key_id, requester_key, business_code, procedure_code, item_code,
            legal_basis, atena_id, reference_date, replica_ids, requested_at, non_disclosure)
        SELECT $2, $1, $3, $7, $13, $14, $9, $10, $5, $11, d.atena_id, $6::date,
               COALESCE(d.ids, '{{}}'::bigint[]), $12, $15
        FROM decided d WHERE d.outcome = 'held'
        ON CONFLICT DO NOTHING RETURNING 1),
    recorded AS (
        INSERT INTO provision_records (role, query_id, permit_id, requester, provider,
            business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
            provided_at, outcome, reason_code, non_disclosure)
        SELECT 'provider', $2, $1, $7, $8, $9, $10, $5, $11, d.atena_id, $12,
               CASE WHEN d.outcome = 'provided' THEN now() END, d.outcome, d.reason, $15
        FROM decided d WHERE d.outcome IS NOT NULL
        RETURNING 1)
    SELECT d.fresh, d.atena_id, d.ids, d.contents, d.outcome, d.reason,
           (SELECT count(*) FROM held) AS held, (SELECT count(*) FROM recorded) AS recorded
    FROM decided d"""  # noqa: S608


def provision_document(item_code: str, contents: Sequence[bytes]) -> bytes:
    """The one item document a provision answers with, from the records in force.

    One record: its stored bytes as they are. Several: header values must agree and
    repeating groups are concatenated in record-key order (the order of ``contents``).
    """
    if len(contents) == 1:
        return contents[0]
    if not contents:
        raise ValueError("no records to combine")
    if item_code not in ITEM_CODES:
        raise ReplicaInconsistentError("records of an item without a schema cannot be combined")
    items = [decode_item(item_code, content) for content in contents]
    base = items[0]
    groups: dict[str, list[Any]] = {}
    for field in dataclasses.fields(base):
        value = getattr(base, field.name)
        if isinstance(value, tuple):
            groups[field.name] = list(value)
    for other in items[1:]:
        for field in dataclasses.fields(other):
            value = getattr(other, field.name)
            if field.name in groups:
                groups[field.name].extend(value)
            elif value != getattr(base, field.name):
                raise ReplicaInconsistentError(
                    f"records disagree on {field.name} and cannot be combined"
                )
    changes: dict[str, Any] = {name: tuple(v) for name, v in groups.items()}
    combined: Item = dataclasses.replace(base, **changes)
    return encode_item(combined)


# -- single items (PUT) ------------------------------------------------------------------


def require_accepted_code(item_code: str) -> None:
    """422 ``item_code_unsupported`` unless items of ``item_code`` have a schema here."""
    if not is_accepted_item_code(item_code):
        raise ItemCodeUnsupportedError(
            "no schema for this 特定個人情報名 code in this gateway: its items are not accepted"
        )


def accept_item(item_code: str, content: bytes) -> None:
    """Refuse, before anything is looked up or stored, what can never be accepted.

    422 ``item_code_unsupported`` for a code without a schema (no XML is stored that
    no schema checked); 400/413 for hostile or broken XML (DTDs, processing
    instructions, XInclude, oversize, too deep).
    """
    require_accepted_code(item_code)
    parse_xml(content)


def canonical_item(item_code: str, content: bytes) -> bytes:
    """Validated canonical bytes: typed items re-encoded, schema-only items as parsed."""
    require_accepted_code(item_code)
    return canonical_item_bytes(item_code, content)


async def store_single_item(
    state: Any,
    caller: str,
    atena_id: str,
    item_code: str,
    content: bytes,
    *,
    record_key: str = DEFAULT_RECORD_KEY,
    valid_from: dt.date | None = None,
    valid_to: dt.date | None = None,
    manual_review: bool | None = None,
) -> dict[str, Any]:
    """Store one new version of one record; returns the JSON answer of the PUT."""
    if not RECORD_KEY_PATTERN.match(record_key):
        raise ValidationError("record_key must be 1 to 64 letters, digits, '_' or '-'")
    valid_from = valid_from or today_jst()
    if valid_to is not None and valid_to < valid_from:
        raise ValidationError("valid_to is before valid_from")
    accept_item(item_code, content)  # unsupported codes and hostile XML are refused first
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared($1, hashtext(chukan_tenant()))", REPLICA_LOCK
        )
        person = await conn.fetchval(
            "SELECT atena_id FROM persons WHERE atena_id = $1 FOR UPDATE", atena_id
        )
        if person is None:
            raise PersonUnknownError("no person with this 宛名番号 is registered")
        if len(content) > INLINE_DECODE_BYTES:
            stored = await asyncio.to_thread(canonical_item, item_code, content)
        else:
            stored = canonical_item(item_code, content)
        digest = hashlib.sha256(stored).hexdigest()
        version = await conn.fetchval(
            """INSERT INTO replica_items (atena_id, item_code, record_key, version, valid_from,
                   valid_to, content, digest, stored_by)
               SELECT $1, $2, $3, COALESCE(max(version), 0) + 1, $4, $5, $6, $7, $8
               FROM replica_items WHERE atena_id = $1 AND item_code = $2 AND record_key = $3
               RETURNING version""",
            atena_id,
            item_code,
            record_key,
            valid_from,
            valid_to,
            stored,
            digest,
            caller,
        )
        if manual_review is not None:
            await set_flag(conn, atena_id, item_code, manual_review, caller)
    log.info("replica_item_stored", item_code=item_code, version=version, caller=caller)
    return {
        "atena_id": atena_id,
        "item_code": item_code,
        "record_key": record_key,
        "version": version,
        "valid_from": valid_from.isoformat(),
        "valid_to": valid_to.isoformat() if valid_to else None,
        "digest": digest,
    }


# -- manual-review flag ------------------------------------------------------------------


async def set_flag(
    conn: db.Executor, atena_id: str, item_code: str, manual_review: bool, caller: str
) -> None:
    try:
        await conn.execute(
            """INSERT INTO replica_review_flags (atena_id, item_code, manual_review, set_by)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant, atena_id, item_code) DO UPDATE
               SET manual_review = EXCLUDED.manual_review, set_by = EXCLUDED.set_by,
                   set_at = now()""",
            atena_id,
            item_code,
            manual_review,
            caller,
        )
    except asyncpg.ForeignKeyViolationError:
        raise PersonUnknownError("no person with this 宛名番号 is registered") from None


# -- reading -----------------------------------------------------------------------------


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


async def item_history(
    conn: db.Executor, atena_id: str, item_code: str, on: dt.date
) -> dict[str, Any]:
    """Every version of a person's item and the flag, as the JSON answer of the GET.

    ``in_force`` lists the versions a provision with reference date ``on`` would
    combine and answer with.
    """
    person = await conn.fetchval("SELECT 1 FROM persons WHERE atena_id = $1", atena_id)
    if person is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    versions = await conn.fetch(
        """SELECT record_key, version, valid_from, valid_to, deleted, digest, record_id,
                  message_id, stored_at, stored_by
           FROM replica_items WHERE atena_id = $1 AND item_code = $2
           ORDER BY record_key, version""",
        atena_id,
        item_code,
    )
    in_force = await conn.fetch(
        f"SELECT record_key, version FROM ({in_force_sql('$1', '$2', '$3::date')}) s "  # noqa: S608 -- fixed fragments
        "ORDER BY record_key",
        atena_id,
        item_code,
        on,
    )
    flag = await conn.fetchval(
        "SELECT manual_review FROM replica_review_flags WHERE atena_id = $1 AND item_code = $2",
        atena_id,
        item_code,
    )
    return {
        "atena_id": atena_id,
        "item_code": item_code,
        "manual_review": bool(flag),
        "versions": [
            {
                "record_key": v["record_key"],
                "version": v["version"],
                "valid_from": _iso(v["valid_from"]),
                "valid_to": _iso(v["valid_to"]),
                "deleted": v["deleted"],
                "digest": v["digest"],
                "record_id": v["record_id"],
                "message_id": v["message_id"],
                "stored_at": v["stored_at"].isoformat(),
                "stored_by": v["stored_by"],
            }
            for v in versions
        ],
        "in_force": {
            "on": on.isoformat(),
            "records": [{"record_key": r["record_key"], "version": r["version"]} for r in in_force],
        },
    }


# -- export (reconciliation) -------------------------------------------------------------

#: Current state: per (宛名番号, record key) its latest version, unless that is a deletion.
_EXPORT_CURRENT: Final = """
    SELECT item_code, atena_id, record_key, version, valid_from, valid_to, digest
    FROM (SELECT DISTINCT ON (atena_id, record_key)
                 item_code, atena_id, record_key, version, valid_from, valid_to, digest, deleted
          FROM replica_items WHERE item_code = $1
          ORDER BY atena_id, record_key, version DESC) latest
    WHERE NOT deleted
    ORDER BY atena_id, record_key"""
#: History: every version; a deletion has an empty digest.
_EXPORT_HISTORY: Final = """
    SELECT item_code, atena_id, record_key, version, valid_from, valid_to, digest
    FROM replica_items WHERE item_code = $1
    ORDER BY atena_id, record_key, version"""


def export_row(record: asyncpg.Record) -> list[str]:
    return [
        record["item_code"],
        record["atena_id"],
        record["record_key"],
        str(record["version"]),
        record["valid_from"].isoformat(),
        _iso(record["valid_to"]) or "",
        record["digest"] or "",
    ]


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


async def export_batches(
    conn: db.Conn, item_code: str, *, history: bool = False
) -> AsyncIterator[list[list[str]]]:
    """Rows of the export in batches, read through a server-side cursor.

    Must run inside a transaction (cursors need one).
    """
    query = _EXPORT_HISTORY if history else _EXPORT_CURRENT
    batch: list[list[str]] = []
    async for record in conn.cursor(query, item_code, prefetch=EXPORT_BATCH):
        batch.append(export_row(record))
        if len(batch) >= EXPORT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
