"""Which ``pg_dump``/``pg_restore`` to run: one at least as new as the server (and the archive).

A ``pg_dump`` older than the server refuses to dump it, and ``pg_restore`` reads
only archives of its own or older versions; the newest tool is not always right
either (its SQL may not run on an older server), so the oldest one that is new
enough is chosen.  Candidates, in order: the folder ``CHUKAN_PG_BIN`` names, the
binaries of the ``pgserver`` wheel (the embedded server's), every
``/usr/lib/postgresql/<major>/bin`` (Debian's layout) and ``PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from chukan.gateway.backup.errors import BackupToolMissingError

PG_BIN_ENV: Final = "CHUKAN_PG_BIN"
#: How much of a failed tool's stderr its error carries.
STDERR_TAIL: Final = 2000
DEBIAN_ROOT: Final = Path("/usr/lib/postgresql")
VERSION_PATTERN: Final = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class Tool:
    path: Path
    major: int
    version: str


def _folders() -> list[Path]:
    folders: list[Path] = []
    configured = os.environ.get(PG_BIN_ENV)
    if configured:
        folders.append(Path(configured))
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        folders.append(Path(spec.origin).parent / "pginstall" / "bin")
    if DEBIAN_ROOT.is_dir():
        folders.extend(sorted(DEBIAN_ROOT.glob("*/bin")))
    return folders


def _version(path: Path) -> Tool | None:
    try:
        out = subprocess.run(  # noqa: S603 -- a file found among PostgreSQL's folders
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = VERSION_PATTERN.search(out)
    if match is None:
        return None
    return Tool(path, int(match.group(1)), f"{match.group(1)}.{match.group(2) or 0}")


def candidates(name: str) -> list[Tool]:
    """Every distinct ``name`` binary found, with its major version."""
    paths: list[Path] = [folder / name for folder in _folders()]
    found = shutil.which(name)
    if found:
        paths.append(Path(found))
    tools: list[Tool] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.is_file() or not os.access(path, os.X_OK):
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        tool = _version(path)
        if tool is not None:
            tools.append(tool)
    return tools


def choose(name: str, at_least: int) -> Tool:
    """The oldest ``name`` of major version ``at_least`` or newer."""
    tools = candidates(name)
    fitting = sorted((t for t in tools if t.major >= at_least), key=lambda t: t.major)
    if not fitting:
        have = ", ".join(f"{t.version} ({t.path})" for t in tools) or "none"
        raise BackupToolMissingError(
            f"no {name} of PostgreSQL {at_least} or newer (found: {have}); install the "
            f"client of the server's version or name its folder in {PG_BIN_ENV}"
        )
    return fitting[0]


def libpq_arguments(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that passes the password.

    The password never appears on a command line (other local users could read it).
    """
    parts = urlsplit(url)
    env: dict[str, str] = {}
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]  # still percent-encoded, as the URL needs it
    netloc = f"{user}@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), env


async def kill(process: asyncio.subprocess.Process) -> None:
    """Stop a ``pg_dump``/``pg_restore`` run that is being abandoned, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def stderr_tail(err: IO[bytes]) -> str:
    """The end of what a failed run wrote to ``err`` (a temporary file), for its error."""
    err.seek(0)
    return err.read()[-STDERR_TAIL:].decode("utf-8", errors="replace").strip()
