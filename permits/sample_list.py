"""千葉市's sample authorization list, generated from its rules and the table of 項.

Two data files are the source; ``data/authorization_list.csv`` is their output,
checked in so that operators and the hub read a plain list (a unit test keeps the
three in step; regenerate with ``python -m chukan.permits.sample_list``):

* ``data/authorization_table.csv`` — one line per 項 of 命令第2条の表 the list uses:
  the wording of 情報照会者, 事務, 情報提供者 and 特定個人情報, the predecessor item
  of 番号法 別表第二 it was taken from, its citation, ``confirmed`` (whether the
  命令's own text was checked) and what was found.  See docs/authorization-list.md.
* ``data/authorization_rules.csv`` — the rows, where a party may be
  :data:`EVERY_CITY`: one row for every city of 千葉県 (codecs.catalog) other than
  the other party, instead of 36 near-identical rows written by hand.

Each generated row's ``note`` names the requester and the 事務, prefixed with
:data:`UNCONFIRMED_MARK` unless the 項 is confirmed: the mark travels with the
row in the signed list, so a gateway operator sees it too.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Final

from chukan.codecs.catalog import AGENCY_NAMES, CHIBA_PREFECTURE_CITIES

from .authorization import MAX_NOTE_CHARS, AuthorizationList, AuthorizationRow, list_to_csv
from .errors import AuthorizationListError

#: A party in the rules standing for every city of 千葉県 but the other party.
EVERY_CITY: Final = "chiba-cities"
UNCONFIRMED_MARK: Final = "[未確認]"
TABLE_COLUMNS: Final = (
    "legal_basis",
    "requester_role",
    "business",
    "provider_role",
    "information",
    "predecessor",
    "confirmed",
    "source",
    "finding",
)
RULE_COLUMNS: Final = (
    "legal_basis",
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "valid_from",
)
_BUSINESS_TAIL: Final = "であって主務省令で定めるもの"


@dataclass(frozen=True, slots=True)
class TableEntry:
    """What is known of one 項: its wording, where it comes from, whether it is confirmed."""

    legal_basis: int
    requester_role: str
    business: str
    provider_role: str
    information: str
    predecessor: str
    confirmed: bool
    source: str
    finding: str


def _read(name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    text = resources.files("chukan.permits").joinpath("data").joinpath(name).read_text("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    if tuple(reader.fieldnames or ()) != columns:
        raise AuthorizationListError(f"{name}: the header row must be " + ",".join(columns))
    return list(reader)


def load_table() -> dict[int, TableEntry]:
    """The table of 項 (``data/authorization_table.csv``), keyed by 項 number."""
    table: dict[int, TableEntry] = {}
    for number, line in enumerate(_read("authorization_table.csv", TABLE_COLUMNS), start=1):
        if line["confirmed"] not in ("true", "false"):
            raise AuthorizationListError("confirmed must be true or false", row=number)
        entry = TableEntry(
            **{k: v for k, v in line.items() if k not in ("legal_basis", "confirmed")},
            legal_basis=int(line["legal_basis"]),
            confirmed=line["confirmed"] == "true",
        )
        if entry.legal_basis in table:
            raise AuthorizationListError(f"項 {entry.legal_basis} appears twice", row=number)
        if entry.confirmed and not entry.source:
            raise AuthorizationListError("a confirmed 項 needs its source", row=number)
        table[entry.legal_basis] = entry
    return table


def _parties(party: str, other: str) -> Iterator[str]:
    if party == EVERY_CITY:
        yield from (city.code for city in CHIBA_PREFECTURE_CITIES if city.code != other)
    else:
        yield party


def note_for(entry: TableEntry, requester: str) -> str:
    """The row's note: mark, requester's name and the 事務, cut to the note's limit."""
    mark = "" if entry.confirmed else UNCONFIRMED_MARK
    business = entry.business.removesuffix(_BUSINESS_TAIL)
    note = f"{mark}{AGENCY_NAMES.get(requester, requester)}：{business}"
    return note if len(note) <= MAX_NOTE_CHARS else note[: MAX_NOTE_CHARS - 1] + "…"


def expand_rules(
    rules: Iterable[dict[str, str]], table: dict[int, TableEntry]
) -> list[AuthorizationRow]:
    """One row per rule and party; every rule's 項 must be in the table."""
    rows: list[AuthorizationRow] = []
    for number, rule in enumerate(rules, start=1):
        basis = int(rule["legal_basis"])
        entry = table.get(basis)
        if entry is None:
            raise AuthorizationListError(f"項 {basis} is not in the table", row=number)
        if EVERY_CITY in (rule["requester"], rule["provider"]) and (
            rule["requester"] == rule["provider"]
        ):
            raise AuthorizationListError("only one party can be every city", row=number)
        for requester in _parties(rule["requester"], rule["provider"]):
            for provider in _parties(rule["provider"], requester):
                rows.append(
                    AuthorizationRow(
                        requester=requester,
                        provider=provider,
                        business_code=rule["business_code"],
                        procedure_code=rule["procedure_code"],
                        item_code=rule["item_code"],
                        legal_basis=basis,
                        valid_from=date.fromisoformat(rule["valid_from"]),
                        valid_to=None,
                        note=note_for(entry, requester),
                    )
                )
    return rows


def generate_rows() -> list[AuthorizationRow]:
    """The sample list's rows, from the rules and the table."""
    return expand_rules(_read("authorization_rules.csv", RULE_COLUMNS), load_table())


def main() -> None:
    """Print the generated list as the operator's CSV (``data/authorization_list.csv``)."""
    now = datetime.now(UTC)
    lst = AuthorizationList(
        rows=tuple(generate_rows()), version=1, issued_at=now, expires_at=now + timedelta(days=1)
    )
    sys.stdout.buffer.write(list_to_csv(lst))


if __name__ == "__main__":
    main()
