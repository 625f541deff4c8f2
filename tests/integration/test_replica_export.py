"""The replica export (CSV over the internal API) and reconciliation against originals."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import random
from pathlib import Path
from typing import Any

import pytest
from replica_support import new_record_id, registered, send_entries

from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import burden_ratio
from chukan.gateway.replica.cli import run_diff
from chukan.gateway.replica.reconcile import COLUMNS
from chukan.simulators.devnet.replica_synthetic import SyntheticEntry

pytestmark = pytest.mark.integration

CODE = "TM00000000010202"


async def export(api: Any, query: str) -> tuple[int, str, list[list[str]]]:
    async with api.session.get(
        api.gateway.url + "/internal/v1/replica/export" + query, headers=api.gateway.auth
    ) as response:
        text = await response.text()
        if response.status != 200:
            return response.status, text, []
        assert response.content_type == "text/csv"
        return response.status, text, list(csv.reader(io.StringIO(text)))


async def test_export_and_reconcile(chiba: Any, rng: random.Random, tmp_path: Path) -> None:
    people = [await registered(chiba, rng, "4") for _ in range(2)]
    items = [encode_item(burden_ratio(rng, dt.date(2025, 8, 1))) for _ in range(4)]
    entries = [
        SyntheticEntry(new_record_id(), people[0], CODE, items[0], valid_from=dt.date(2024, 8, 1)),
        SyntheticEntry(new_record_id(), people[0], CODE, items[1], valid_from=dt.date(2025, 8, 1)),
        SyntheticEntry(
            new_record_id(),
            people[0],
            CODE,
            items[2],
            record_key="B",
            valid_to=dt.date(2025, 7, 31),
        ),
        SyntheticEntry(new_record_id(), people[1], CODE, items[3]),
        SyntheticEntry(new_record_id(), people[1], CODE, None, valid_from=dt.date(2025, 1, 1)),
    ]
    assert (await send_entries(chiba, entries))[0] == 201

    status, text, rows = await export(chiba, f"?item_code={CODE}")
    assert status == 200, text
    assert text.startswith(",".join(COLUMNS) + "\r\n")
    ours = [row for row in rows[1:] if row[1] in people]
    sha = [hashlib.sha256(item).hexdigest() for item in items]
    # Current state: latest version per record; the deleted record is left out.
    assert ours == [
        [CODE, people[0], "1", "2", "2025-08-01", "", sha[1]],
        [CODE, people[0], "B", "1", "2024-04-01", "2025-07-31", sha[2]],
    ]
    status, _, history = await export(chiba, f"?item_code={CODE}&history=true")
    assert status == 200
    versions = {
        person: [[*row[2:4], row[6] != ""] for row in history[1:] if row[1] == person]
        for person in people
    }
    assert versions == {
        people[0]: [["1", "1", True], ["1", "2", True], ["B", "1", True]],
        people[1]: [["1", "1", True], ["1", "2", False]],  # the deletion has no digest
    }
    assert (await export(chiba, "?item_code=TM1"))[0] == 422

    # The core system's originals: one record changed, one the replica lacks.
    export_file = tmp_path / "export.csv"
    export_file.write_text(
        "\r\n".join(",".join(r) for r in [rows[0], *ours]) + "\r\n", encoding="utf-8"
    )
    originals = [
        ",".join([CODE, people[0], "1", "", "2025-08-01", "", sha[1]]),
        ",".join([CODE, people[0], "B", "", "2024-04-01", "2025-08-31", sha[2]]),
        ",".join([CODE, people[1], "1", "", "2024-04-01", "", sha[3]]),
    ]
    originals_file = tmp_path / "originals.csv"
    originals_file.write_text("\n".join([",".join(COLUMNS), *originals]) + "\n", encoding="utf-8")
    out = io.StringIO()
    assert run_diff(export_file, originals_file, out) == 1
    assert sorted(out.getvalue().splitlines()) == [
        f"differs\t{CODE}\t{people[0]}\tB\tvalid_to",
        f"missing\t{CODE}\t{people[1]}\t1",
    ]
