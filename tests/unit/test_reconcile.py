"""Reconciliation of a replica export against a core system's originals (原本)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from chukan.gateway.replica.cli import run_diff
from chukan.gateway.replica.errors import ReconcileInputError
from chukan.gateway.replica.reconcile import (
    COLUMNS,
    Difference,
    diff,
    read_file,
)

HEADER = ",".join(COLUMNS)
CODE = "TM00000000010201"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


EXPORT = [
    f"{CODE},100000000000001,1,1,2024-04-01,,{digest('a')}",
    f"{CODE},100000000000001,2,3,2024-04-01,2025-03-31,{digest('b')}",
    f"{CODE},100000000000002,1,2,2025-04-01,,{digest('c')}",
    f"{CODE},100000000000003,1,1,2025-04-01,,{digest('d')}",
]


def write(path: Path, rows: list[str], *, header: str = HEADER, newline: str = "\r\n") -> Path:
    path.write_text(newline.join([header, *rows]) + newline, encoding="utf-8")
    return path


def run(tmp_path: Path, export: list[str], originals: list[str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_diff(
        write(tmp_path / "export.csv", export), write(tmp_path / "originals.csv", originals), out
    )
    return code, out.getvalue().splitlines()


def test_identical_files(tmp_path: Path) -> None:
    assert run(tmp_path, EXPORT, list(reversed(EXPORT))) == (0, [])


def test_versions_left_empty_in_the_originals_are_not_compared(tmp_path: Path) -> None:
    originals = [",".join([*row.split(",")[:3], "", *row.split(",")[4:]]) for row in EXPORT]
    assert run(tmp_path, EXPORT, originals) == (0, [])


def test_missing_extra_and_differing_records(tmp_path: Path) -> None:
    originals = [
        EXPORT[0],
        EXPORT[1].replace("2025-03-31", "2025-09-30"),  # validity differs
        EXPORT[2].replace(",2,", ",1,", 1).replace(digest("c"), digest("C")),  # version, digest
        # EXPORT[3] is not in the originals: the replica has an extra record
        f"{CODE},100000000000004,1,,2025-04-01,,{digest('e')}",  # the replica lacks it
    ]
    code, lines = run(tmp_path, EXPORT, originals)
    assert code == 1
    assert lines == [
        f"differs\t{CODE}\t100000000000001\t2\tvalid_to",
        f"differs\t{CODE}\t100000000000002\t1\tversion,digest",
        f"extra\t{CODE}\t100000000000003\t1",
        f"missing\t{CODE}\t100000000000004\t1",
    ]


def test_diff_function_and_line_format(tmp_path: Path) -> None:
    export = read_file(write(tmp_path / "e.csv", EXPORT, newline="\n"), version_required=True)
    assert diff(export, {}) == [Difference("extra", row) for row in sorted(export)]
    assert Difference("missing", ("a", "b", "c")).line() == "missing\ta\tb\tc"


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *EXPORT]).encode())
    assert len(read_file(path)) == 4


BAD_INPUTS = {
    "empty": ([], ""),
    "wrong_header": (EXPORT, "atena_id,item_code,record_key,version,valid_from,valid_to,digest"),
    "short_row": ([f"{CODE},100000000000001,1,1,2024-04-01,"], HEADER),
    "bad_item_code": ([EXPORT[0].replace(CODE, "TM123")], HEADER),
    "bad_atena": ([EXPORT[0].replace("100000000000001", "10000000000000X")], HEADER),
    "bad_key": ([EXPORT[0].replace(",1,1,", ",a b,1,", 1)], HEADER),
    "bad_version": ([EXPORT[0].replace(",1,1,", ",1,0,", 1)], HEADER),
    "bad_date": ([EXPORT[0].replace("2024-04-01", "2024-4-1")], HEADER),
    "bad_period": ([EXPORT[1].replace("2025-03-31", "2023-03-31")], HEADER),
    "bad_digest": ([EXPORT[0].replace(digest("a"), digest("a").upper())], HEADER),
    "duplicate": ([EXPORT[0], EXPORT[0]], HEADER),
    "quote": ([EXPORT[0] + ',"'], HEADER),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exits_2(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows, header = BAD_INPUTS[name]
    bad = tmp_path / "bad.csv"
    if header:
        write(bad, rows, header=header)
    else:
        bad.write_bytes(b"")
    good = write(tmp_path / "good.csv", EXPORT)
    assert run_diff(good, bad, io.StringIO()) == 2
    assert "bad input" in capsys.readouterr().err
    with pytest.raises(ReconcileInputError):
        read_file(bad)


def test_unreadable_files_exit_2(tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", EXPORT)
    assert run_diff(good, tmp_path / "absent.csv", io.StringIO()) == 2
    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + b"\r\n\xff\xfe\r\n")
    assert run_diff(good, latin, io.StringIO()) == 2
    # An export must carry versions; originals need not.
    no_version = write(tmp_path / "nv.csv", [f"{CODE},1,1,,2024-04-01,,{digest('a')}"])
    assert run_diff(no_version, good, io.StringIO()) == 2
