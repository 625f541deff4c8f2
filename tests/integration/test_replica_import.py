"""Bulk import (``chukan replica import``): generated messages of thousands of entries,
streamed, validated off the event loop, COPY-ed and applied whole or not at all."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from replica_support import insert_people

from chukan.gateway.core import jobs
from chukan.gateway.replica.cli import run_import
from chukan.simulators.devnet.replica_synthetic import (
    SyntheticEntry,
    synthetic_entries,
    write_registration,
)

pytestmark = pytest.mark.integration

ENTRIES = 5_000
PEOPLE = 1_000
TODAY = dt.date(2025, 4, 1)


def new_people(count: int) -> list[str]:
    base = int("8" + secrets.token_hex(6), 16) % 10**14
    return [f"8{(base + i) % 10**14:014d}" for i in range(count)]


@pytest.fixture
async def tenant_conn(chiba: Any) -> Any:
    conn = await asyncpg.connect(chiba.gateway.config.database_url)
    await conn.execute("SET TIME ZONE 'UTC'")
    yield conn
    await conn.close()


def generated(
    tmp_path: Path, atena_ids: list[str], count: int, rng: random.Random, **kwargs: Any
) -> tuple[Path, list[SyntheticEntry]]:
    prefix = "B" + secrets.token_hex(4)
    entries = list(synthetic_entries(atena_ids, count, rng=rng, today=TODAY, record_prefix=prefix))
    path = tmp_path / f"{prefix}.xml"
    write_registration(path, f"BULK-{prefix}", entries, **kwargs)
    return path, entries


async def stored(conn: Any, atena_ids: list[str]) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM replica_items WHERE atena_id = ANY($1::text[])", atena_ids
    )
    return count


async def last_job(conn: Any) -> jobs.Job:
    found = await jobs.list_jobs(conn, kind="replica.import", limit=1)
    return found[0]


@pytest.mark.parametrize("workers", [0, 2])
async def test_bulk_import_applies_every_entry(
    chiba: Any, tenant_conn: Any, tmp_path: Path, rng: random.Random, workers: int
) -> None:
    people = new_people(PEOPLE)
    await insert_people(chiba.gateway, people)
    path, entries = generated(tmp_path, people, ENTRIES, rng)
    out, progress = io.StringIO(), io.StringIO()
    code = await run_import([path], tenant_conn, workers=workers, out=out, progress=progress)
    assert code == 0, out.getvalue()
    assert await stored(tenant_conn, people) == ENTRIES
    summary = out.getvalue()
    assert "accepted" in summary and f"{ENTRIES:,} entries" in summary and "items/s" in summary
    assert f"{ENTRIES:,} entries" in progress.getvalue()  # the last progress line
    job = await last_job(tenant_conn)
    assert (job.status, job.subject) == ("done", path.name)
    assert job.counts == {
        "entries": ENTRIES,
        "registered": ENTRIES,
        "deleted": 0,
        "rejected": 0,
        "replayed": 0,
    }
    digests = await tenant_conn.fetch(
        "SELECT record_id, digest, message_id FROM replica_items WHERE record_id = ANY($1)",
        [entries[0].record_id, entries[-1].record_id],
    )
    assert len(digests) == 2 and all(len(r["digest"]) == 64 for r in digests)

    # The same file again: the first result, nothing applied twice.
    out = io.StringIO()
    assert await run_import([path], tenant_conn, workers=workers, out=out) == 0
    assert "already received" in out.getvalue()
    assert await stored(tenant_conn, people) == ENTRIES
    assert (await last_job(tenant_conn)).counts["replayed"] == 1


async def test_bulk_import_is_atomic(
    chiba: Any, tenant_conn: Any, tmp_path: Path, rng: random.Random
) -> None:
    people = new_people(PEOPLE)
    await insert_people(chiba.gateway, people)
    entries = list(synthetic_entries(people, ENTRIES, rng=rng, today=TODAY, record_prefix="X"))
    prefix = "A" + secrets.token_hex(4)
    entries = [dataclasses.replace(e, record_id=prefix + e.record_id) for e in entries]
    bad_person = 1234
    bad_schema = 4321
    entries[bad_person] = dataclasses.replace(entries[bad_person], atena_id="999999999999996")
    item = entries[bad_schema].item
    assert item is not None
    entries[bad_schema] = dataclasses.replace(
        entries[bad_schema], item=item.replace(b'Version="1"', b'Version="2"', 1)
    )
    path = write_registration(tmp_path / "bad.xml", f"BAD-{prefix}", entries)
    out = io.StringIO()
    assert await run_import([path], tenant_conn, workers=2, out=out) == 1
    assert await stored(tenant_conn, people) == 0
    lines = [
        line.split("\t") for line in out.getvalue().splitlines() if line.startswith("rejected\t")
    ]
    assert [(line[1], line[2], line[3]) for line in lines[1:]] == [
        (str(bad_person + 1), entries[bad_person].record_id, "person_unknown"),
        (str(bad_schema + 1), entries[bad_schema].record_id, "schema_invalid"),
    ]
    job = await last_job(tenant_conn)
    assert job.status == "failed" and job.counts["rejected"] == 2
    assert job.error is not None and "2 of 5000 entries rejected" in job.error


async def test_broken_file_is_refused_whole(
    chiba: Any, tenant_conn: Any, tmp_path: Path, rng: random.Random
) -> None:
    people = new_people(50)
    await insert_people(chiba.gateway, people)
    path, _ = generated(tmp_path, people, 200, rng)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated mid-stream
    out = io.StringIO()
    assert await run_import([path], tenant_conn, workers=0, out=out) == 1
    assert "refused (xml_malformed" in out.getvalue()
    assert await stored(tenant_conn, people) == 0
    assert (await last_job(tenant_conn)).status == "failed"


def chukan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- our own CLI with fixed arguments
        [sys.executable, "-m", "chukan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def test_command_line(
    chiba: Any, tmp_path: Path, rng: random.Random, pg_server_url: str, db_prefix: str
) -> None:
    people = new_people(100)
    await insert_people(chiba.gateway, people)
    first, _ = generated(tmp_path, people, 300, rng)
    second, _ = generated(tmp_path, people, 300, rng)
    url = chiba.gateway.config.database_url
    done = await asyncio.to_thread(
        chukan,
        "replica",
        "import",
        str(first),
        "--tenant",
        "121002",
        "--database-url",
        url,
        "--workers",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert "accepted: 300 entries" in done.stdout and "items/s" in done.stdout
    assert "[" in done.stderr and "300 entries" in done.stderr  # the progress bar
    # Owner credentials of the server, switching to the tenant's role.
    done = await asyncio.to_thread(
        chukan,
        "replica",
        "import",
        str(second),
        "--tenant",
        "121002",
        "--database",
        f"{db_prefix}gateway",
        "--workers",
        "1",
        "--no-progress",
        env={"CHUKAN_DATABASE_URL": pg_server_url},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    wrong = await asyncio.to_thread(
        chukan,
        "replica",
        "import",
        str(first),
        "--tenant",
        "122041",
        "--database-url",
        url,
    )
    assert wrong.returncode == 2 and "not 122041" in wrong.stderr
    missing = await asyncio.to_thread(
        chukan,
        "replica",
        "import",
        str(tmp_path / "nope.xml"),
        "--tenant",
        "121002",
        "--database-url",
        url,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr

    export = tmp_path / "export.csv"
    done = await asyncio.to_thread(
        chukan,
        "replica",
        "export",
        "--tenant",
        "121002",
        "--database-url",
        url,
        "--item-code",
        "TM00000000010101",
        "-o",
        str(export),
    )
    assert done.returncode == 0, done.stderr
    rows = export.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "item_code,atena_id,record_key,version,valid_from,valid_to,digest"
    ours = [r for r in rows[1:] if r.split(",")[1] in set(people)]
    assert len(ours) == 100  # two versions of one record per person: the latest is exported
    originals = tmp_path / "originals.csv"
    originals.write_text("\n".join(rows) + "\n", encoding="utf-8")
    same = await asyncio.to_thread(chukan, "replica", "diff", str(export), str(originals))
    assert same.returncode == 0, same.stdout + same.stderr
    originals.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    differs = await asyncio.to_thread(chukan, "replica", "diff", str(export), str(originals))
    assert differs.returncode == 1 and differs.stdout.startswith("extra\t")
    originals.write_text("not,a,replica,file\n", encoding="utf-8")
    bad = await asyncio.to_thread(chukan, "replica", "diff", str(export), str(originals))
    assert bad.returncode == 2 and "bad input" in bad.stderr


def _rejected_lines(out: str) -> list[tuple[str, str, str]]:
    lines = [line.split("\t") for line in out.splitlines() if line.startswith("rejected\t")]
    return [(line[1], line[2], line[3]) for line in lines[1:]]


async def _versions(conn: Any, people: list[str]) -> list[tuple[str, str, str, int, bool]]:
    rows = await conn.fetch(
        "SELECT atena_id, item_code, record_key, version, deleted FROM replica_items "
        "WHERE atena_id = ANY($1::text[]) ORDER BY atena_id, item_code, record_key, version",
        people,
    )
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("workers", [0, 2])
async def test_batches_applied_ahead_are_undone_on_any_problem(
    chiba: Any, tenant_conn: Any, tmp_path: Path, rng: random.Random, workers: int
) -> None:
    """Batches go into the replica as they arrive; a problem found in a later batch or
    only in the whole message (a reused or repeated RecordIdentificationNumber, an
    unknown person, a deletion of a record never registered) undoes them all, and every
    rejected entry is named as when nothing was applied ahead."""
    people = new_people(40)
    await insert_people(chiba.gateway, people)
    prefix = "H" + secrets.token_hex(4)

    def entries(tag: str, count: int) -> list[SyntheticEntry]:
        made = synthetic_entries(people, count, rng=rng, today=TODAY, record_prefix=prefix + tag)
        return list(made)

    first = entries("a", 200)
    path = write_registration(tmp_path / "first.xml", f"{prefix}-1", first)
    out = io.StringIO()
    assert await run_import([path], tenant_conn, workers=workers, batch_size=30, out=out) == 0
    before = await _versions(tenant_conn, people)
    assert len(before) == 200

    # Later versions of the same records, and in one message both new versions and a
    # deletion of a record registered earlier in it: versions continue across batches.
    second = entries("b", 200)
    second.append(dataclasses.replace(second[3], record_id=prefix + "del", item=None))
    path = write_registration(tmp_path / "second.xml", f"{prefix}-2", second)
    assert await run_import([path], tenant_conn, workers=workers, batch_size=30, out=out) == 0
    after = await _versions(tenant_conn, people)
    keys: dict[tuple[str, str, str], list[int]] = {}
    for atena, code, key, version, _ in after:
        keys.setdefault((atena, code, key), []).append(version)
    assert all(v == list(range(1, len(v) + 1)) for v in keys.values())
    assert sum(len(v) for v in keys.values()) == 401
    assert sum(1 for row in after if row[4]) == 1

    def reused(es: list[SyntheticEntry], at: int) -> SyntheticEntry:
        return dataclasses.replace(es[at], record_id=first[7].record_id)

    def repeated(es: list[SyntheticEntry], at: int) -> SyntheticEntry:
        return dataclasses.replace(es[at], record_id=es[5].record_id)

    def stranger(es: list[SyntheticEntry], at: int) -> SyntheticEntry:
        return dataclasses.replace(es[at], atena_id="999999999999997")

    def unknown_deletion(es: list[SyntheticEntry], at: int) -> SyntheticEntry:
        return dataclasses.replace(es[at], record_key="never", item=None)

    cases: dict[str, tuple[int, Callable[[list[SyntheticEntry], int], SyntheticEntry], str]] = {
        "reused": (150, reused, "record_id_reused"),
        "repeated": (170, repeated, "record_id_duplicate"),
        "person": (190, stranger, "person_unknown"),
        "deletion": (199, unknown_deletion, "record_unknown"),
    }
    for name, (at, change, code) in cases.items():
        third = entries("c", 200)
        third[at] = change(third, at)
        path = write_registration(tmp_path / f"{name}.xml", f"{prefix}-{name}", third)
        out = io.StringIO()
        assert await run_import([path], tenant_conn, workers=workers, batch_size=30, out=out) == 1
        assert _rejected_lines(out.getvalue()) == [(str(at + 1), third[at].record_id, code)], name
        assert await _versions(tenant_conn, people) == after, name


async def test_split_falls_back_and_imports_unusual_messages(
    chiba: Any, tenant_conn: Any, tmp_path: Path, rng: random.Random
) -> None:
    """A message the byte-range split cannot vouch for (a comment holding the end tag
    late in the file) is read again by the streaming parser: applied once, whole."""
    people = new_people(30)
    await insert_people(chiba.gateway, people)
    path, entries = generated(tmp_path, people, 300, rng)
    data = path.read_bytes()
    last = data.rindex(b"<Record>")
    path.write_bytes(data[:last] + b"<!-- </Record> -->" + data[last:])
    out = io.StringIO()
    assert await run_import([path], tenant_conn, workers=2, batch_size=40, out=out) == 0, (
        out.getvalue()
    )
    assert await stored(tenant_conn, people) == 300
    ids = await tenant_conn.fetch(
        "SELECT record_id FROM replica_items WHERE atena_id = ANY($1::text[])", people
    )
    assert sorted(r["record_id"] for r in ids) == sorted(e.record_id for e in entries)
