"""Reconciliation of the replica (副本) against a core system's originals (原本).

Both files are CSV in the export format of the replica (``GET
/internal/v1/replica/export`` and ``chukan replica export``):

* UTF-8 (a byte-order mark is accepted), CRLF or LF line ends, a header row with
  exactly these columns in this order::

      item_code,atena_id,record_key,version,valid_from,valid_to,digest

* one row per record — (item_code, atena_id, record_key) — of the current state;
  a key may appear only once (history exports are not reconcilable);
* ``item_code`` ``TM`` + 14 digits; ``atena_id`` 1–15 digits; ``record_key`` the
  DataSetRecordKey (1–64 of ``0-9A-Za-z_-``); ``valid_from`` / ``valid_to``
  ``YYYY-MM-DD`` (``valid_to`` empty: open ended); ``digest`` the lower-case hex
  SHA-256 of the item's canonical XML (``encode_item``: what the gateway stores);
* ``version`` is the gateway's version number. The originals file may leave it
  empty (a core system does not know the gateway's numbering): it is compared only
  where the originals give one.

:func:`diff` lists records **missing** from the replica (in the originals only),
**extra** in the replica (in the export only) and **differing** (in both, with the
fields that differ). ``chukan replica diff EXPORT ORIGINALS`` prints them and exits
0 when identical, 1 when there are differences, 2 on bad input.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from chukan.codecs.catalog import ITEM_CODE_PATTERN
from chukan.gateway.replica.errors import ReconcileInputError

COLUMNS: Final = (
    "item_code",
    "atena_id",
    "record_key",
    "version",
    "valid_from",
    "valid_to",
    "digest",
)
COMPARED: Final = ("version", "valid_from", "valid_to", "digest")

#: A DataSetRecordKey, as registration messages and the single-item PUT take it.
RECORD_KEY_PATTERN: Final = re.compile(r"^[0-9A-Za-z_\-]{1,64}$")
_ATENA = re.compile(r"^[0-9]{1,15}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")

Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    item_code: str
    atena_id: str
    record_key: str
    version: int | None
    valid_from: dt.date
    valid_to: dt.date | None
    digest: str

    @property
    def key(self) -> Key:
        return (self.item_code, self.atena_id, self.record_key)


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str  # "missing" | "extra" | "differs"
    key: Key
    fields: tuple[str, ...] = ()

    def line(self) -> str:
        """``kind<TAB>item_code<TAB>atena_id<TAB>record_key[<TAB>field,field]``."""
        parts = [self.kind, *self.key]
        if self.fields:
            parts.append(",".join(self.fields))
        return "\t".join(parts)


def _date(text: str, name: str, where: str) -> dt.date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReconcileInputError(f"{where}: {name} must be YYYY-MM-DD") from None


def _row(values: list[str], where: str, *, version_required: bool) -> ReplicaRow:
    if len(values) != len(COLUMNS):
        raise ReconcileInputError(f"{where}: expected {len(COLUMNS)} columns, not {len(values)}")
    item_code, atena_id, record_key, version, valid_from, valid_to, digest = values
    if not ITEM_CODE_PATTERN.match(item_code):
        raise ReconcileInputError(f"{where}: item_code must be TM followed by 14 digits")
    if not _ATENA.match(atena_id):
        raise ReconcileInputError(f"{where}: atena_id must be 1 to 15 digits")
    if not RECORD_KEY_PATTERN.match(record_key):
        raise ReconcileInputError(f"{where}: record_key is not a DataSetRecordKey")
    if version == "" and version_required:
        raise ReconcileInputError(f"{where}: version is required in an export")
    if version != "" and not _VERSION.match(version):
        raise ReconcileInputError(f"{where}: version must be a positive integer")
    start = _date(valid_from, "valid_from", where)
    end = _date(valid_to, "valid_to", where) if valid_to != "" else None
    if end is not None and end < start:
        raise ReconcileInputError(f"{where}: valid_to is before valid_from")
    if not _DIGEST.match(digest):
        raise ReconcileInputError(f"{where}: digest must be 64 lower-case hex digits")
    return ReplicaRow(
        item_code, atena_id, record_key, int(version) if version else None, start, end, digest
    )


def read_rows(
    stream: TextIO, name: str = "<input>", *, version_required: bool = False
) -> dict[Key, ReplicaRow]:
    """Rows by key; raises :class:`ReconcileInputError` naming the file and line."""
    reader = csv.reader(stream, strict=True)
    rows: dict[Key, ReplicaRow] = {}
    try:
        header = next(reader, None)
        if header is None:
            raise ReconcileInputError(f"{name}: the file is empty (a header row is required)")
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if tuple(header) != COLUMNS:
            raise ReconcileInputError(f"{name}:1: the header must be {','.join(COLUMNS)}")
        for values in reader:
            where = f"{name}:{reader.line_num}"
            if not values:
                continue
            row = _row(values, where, version_required=version_required)
            if row.key in rows:
                raise ReconcileInputError(f"{where}: record {'/'.join(row.key)} appears twice")
            rows[row.key] = row
    except csv.Error as exc:
        raise ReconcileInputError(f"{name}:{reader.line_num}: {exc}") from None
    except UnicodeDecodeError:
        raise ReconcileInputError(f"{name}: the file is not UTF-8") from None
    return rows


def read_file(path: Path, *, version_required: bool = False) -> dict[Key, ReplicaRow]:
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            return read_rows(stream, str(path), version_required=version_required)
    except OSError as exc:
        raise ReconcileInputError(f"{path}: {exc.strerror or exc}") from None


def _differing(replica: ReplicaRow, original: ReplicaRow) -> tuple[str, ...]:
    fields: list[str] = []
    for name in COMPARED:
        wanted = getattr(original, name)
        if name == "version" and wanted is None:
            continue
        if getattr(replica, name) != wanted:
            fields.append(name)
    return tuple(fields)


def diff(export: dict[Key, ReplicaRow], originals: dict[Key, ReplicaRow]) -> list[Difference]:
    """Missing, extra and differing records, in key order."""
    found: list[Difference] = []
    for key in sorted(export.keys() | originals.keys()):
        replica, original = export.get(key), originals.get(key)
        if replica is None:
            found.append(Difference("missing", key))
        elif original is None:
            found.append(Difference("extra", key))
        else:
            fields = _differing(replica, original)
            if fields:
                found.append(Difference("differs", key, fields))
    return found
