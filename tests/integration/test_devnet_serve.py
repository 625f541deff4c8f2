"""``chukan serve`` (``scripts/demo serve``): each server its own process, from a folder that stays.

The command runs as a reader runs it (a subprocess, against the session's
PostgreSQL through ``CHUKAN_DATABASE_URL``); the printed ``curl`` for 千葉市 is
run exactly as printed; SIGTERM stops every server process and the command
exits 0; a second run reuses the folder (same CA, same ports) and the person
registered in the first run is still bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from chukan.codecs.catalog import CHIBA_CITY
from chukan.keys.tls import client_context
from chukan.simulators.devnet.synthetic import synthetic_person

pytestmark = pytest.mark.integration

START_PATIENCE: Final = 240.0  # four server processes importing on a loaded 2-core machine
STOP_PATIENCE: Final = 30.0
CURL: Final = re.compile(
    r"^  (curl --cacert (\S+) --cert (\S+) --key (\S+) (https://127\.0\.0\.1:\d+)/\S+)$"
)


@dataclass
class Run:
    process: asyncio.subprocess.Process
    lines: list[str]

    def block(self, code: str) -> tuple[str, Path, Path, Path, str]:
        """The curl printed under agency ``code``: (command, CA, cert, key, gateway URL)."""
        index = next(i for i, line in enumerate(self.lines) if f" {code} " in line)
        match = CURL.match(self.lines[index + 1])
        assert match is not None, self.lines
        command, ca, cert, key, url = match.groups()
        return command, Path(ca), Path(cert), Path(key), url

    def pids(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := re.search(r" pid (\d+)$", line))]

    def ca_fingerprint(self) -> str:
        line = next(line for line in self.lines if line.startswith("CA "))
        return line.rsplit(" ", 1)[1]


@contextlib.asynccontextmanager
async def serving(data_dir: Path, database_url: str) -> AsyncIterator[Run]:
    """``python -m chukan --data-dir DIR serve`` until it prints that it serves."""
    env = {**os.environ, "CHUKAN_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chukan", "--data-dir", str(data_dir), "serve",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    run = Run(process, [])
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_PATIENCE):
            while not run.lines or not run.lines[-1].startswith("serving;"):
                line = await process.stdout.readline()
                if not line:
                    assert process.stderr is not None
                    err = (await process.stderr.read()).decode(errors="replace")
                    raise AssertionError(f"chukan serve ended: {run.lines}\n{err}")
                run.lines.append(line.decode().rstrip("\n"))
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(run: Run) -> int:
    """SIGTERM, as a service manager sends it; the exit status."""
    run.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(run.process.wait(), STOP_PATIENCE)


async def shell(command: str) -> str:
    process = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode(errors="replace")
    return out.decode()


def files_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    return client_context(ca.read_bytes(), cert.read_bytes(), key.read_bytes())


async def register(url: str, ca: Path, cert: Path, key: Path, atena_id: str, number: str) -> int:
    """Register a person as the 介護保険システム, with exactly the printed files."""
    context = files_context(ca, cert, key)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.post(
            url + "/internal/v1/persons",
            json={"atena_id": atena_id, "individual_number": number},
        ) as response,
    ):
        assert response.status in (200, 201), await response.text()
        return response.status


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_serve_prints_a_working_curl_stops_cleanly_and_restarts_from_its_folder(
    tmp_path: Path, pg_server_url: str
) -> None:
    person = synthetic_person(random.Random("devnet-serve"), "5")
    async with serving(tmp_path, pg_server_url) as first:
        command, ca, cert, key, url = first.block(CHIBA_CITY)
        assert any("(created)" in line for line in first.lines)
        # Exactly as printed: a JSON answer of the records, not an error document.
        body = json.loads(await shell(command))
        assert "records" in body, body
        assert (await shell(f"{command} -s -o /dev/null -w '%{{http_code}}'")) == "200"
        assert await register(url, ca, cert, key, person.atena_id, person.individual_number) == 201
        pids = first.pids()
        assert len(pids) == 4 and first.process.pid not in pids
        assert all(alive(pid) for pid in pids)
        fingerprint = first.ca_fingerprint()
        code = await stop(first)
    assert code == 0, first.lines
    assert not [pid for pid in pids if alive(pid)]
    # Every secret file is the owner's only, in a folder only the owner may enter.
    folder = tmp_path / "devnet"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    secrets = [*(folder / "secrets").iterdir(), *(folder / "pki").glob("*key*")]
    assert secrets and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets)
    for path in (folder / "secrets").iterdir():  # never a secret inside a TOML file
        value = path.read_text().strip()
        assert all(value not in toml.read_text() for toml in folder.glob("*.toml")), path
    before = {p: p.read_bytes() for p in [*folder.glob("secrets/*"), *folder.glob("pki/*")]}

    async with serving(tmp_path, pg_server_url) as second:
        assert any("(reused)" in line for line in second.lines)
        assert second.ca_fingerprint() == fingerprint
        again, ca, cert, key, url2 = second.block(CHIBA_CITY)
        assert again == command and url2 == url  # the same files and port: the same curl
        # The binding of the first run is still there: registering it again repeats it.
        assert await register(url, ca, cert, key, person.atena_id, person.individual_number) == 200
        assert json.loads(await shell(command))["records"] is not None
        code = await stop(second)
    assert code == 0, second.lines
    after = {p: p.read_bytes() for p in [*folder.glob("secrets/*"), *folder.glob("pki/*")]}
    assert after == before  # nothing regenerated

    # A secret file others may read is refused before any server starts.
    (folder / "secrets" / "hub-key-passphrase").chmod(0o644)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chukan", "--data-dir", str(tmp_path), "serve",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "CHUKAN_DATABASE_URL": pg_server_url},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), START_PATIENCE)
    assert process.returncode == 1, (out, err)
    assert b"chmod 600" in err and b"hub-key-passphrase" in err, err
    assert b"pid" not in out  # nothing was started
