"""Private files (key rings, secrets, private keys): 0600, complete before they appear.

Two ways to write one, shared by every writer of secrets on disk:

* :func:`replace_private_file` — a new version replaces the old atomically
  (temporary file, fsync, rename): a reader sees the old file or the new one;
* :func:`create_private_file` — only if none is there yet: the complete file is
  linked into place and ``os.link`` refuses an existing name, so of several
  processes creating it at once exactly one wins and the others read its file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _write_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path``, flushed to disk; the caller places it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def replace_private_file(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) atomically, replacing what is there."""
    temporary = _write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_private_file(path: Path, data: bytes) -> bool:
    """Write ``path`` (0600) only if it does not exist; returns whether ours was written."""
    temporary = _write_temporary(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True
