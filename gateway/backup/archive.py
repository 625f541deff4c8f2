"""What a backup holds, inside its encryption: named sections of bytes, then a table of them.

Plaintext layout (within :mod:`chukan.gateway.backup.stream`)::

    section* end
    section = JSON line {"section": KIND, "name": NAME} | block* | u32 0
    block   = u32 length (1..BLOCK_BYTES) | bytes
    end     = JSON line {"section": "end", "contents": [{"section", "name", "size", "sha256"}]}

Sections are written as they are produced (a ``pg_dump`` pipe, key files), so no
size need be known in advance; the closing table lets a reader check each
section's length and digest, and names what the backup holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

from chukan.gateway.backup.errors import BackupTamperedError

BLOCK_BYTES: Final = 1 << 20
MAX_LINE_BYTES: Final = 1 << 20
SECTION_DATABASE: Final = "database"
SECTION_KEY: Final = "key"
SECTION_END: Final = "end"


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Content:
    """One section as the closing table names it."""

    section: str
    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
        }


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode() + b"\n"


class SectionWriter:
    """Writes sections to a sink (the encrypting writer), one at a time."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.contents: list[Content] = []
        self._open: tuple[str, str] | None = None
        self._digest = hashlib.sha256()
        self._size = 0

    def begin(self, section: str, name: str) -> None:
        if self._open is not None:
            raise ValueError("a section is still open")
        self._sink.write(_line({"section": section, "name": name}))
        self._open, self._digest, self._size = (section, name), hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        assert self._open is not None, "no section open"
        for start in range(0, len(data), BLOCK_BYTES):
            block = data[start : start + BLOCK_BYTES]
            self._sink.write(len(block).to_bytes(4, "big") + block)
            self._digest.update(block)
            self._size += len(block)

    def end(self) -> Content:
        assert self._open is not None, "no section open"
        self._sink.write((0).to_bytes(4, "big"))
        content = Content(*self._open, self._size, self._digest.hexdigest())
        self.contents.append(content)
        self._open = None
        return content

    def finish(self) -> list[Content]:
        if self._open is not None:
            raise ValueError("a section is still open")
        self._sink.write(
            _line({"section": SECTION_END, "contents": [c.to_json() for c in self.contents]})
        )
        return self.contents


class _Bytes:
    """A byte reader over the decrypted chunks, holding at most one chunk."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._at = 0

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer, self._at = chunk, 0
                return True
        return False

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at the end of the stream)."""
        parts: list[bytes] = []
        while size > 0:
            if self._at >= len(self._buffer) and not self._fill():
                break
            part = self._buffer[self._at : self._at + size]
            self._at += len(part)
            size -= len(part)
            parts.append(part)
        return b"".join(parts)

    def readline(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            if self._at >= len(self._buffer) and not self._fill():
                return b"".join(parts)
            end = self._buffer.find(b"\n", self._at)
            stop = len(self._buffer) if end < 0 else end + 1
            parts.append(self._buffer[self._at : stop])
            total += stop - self._at
            self._at = stop
            if end >= 0:
                return b"".join(parts)
            if total > MAX_LINE_BYTES:
                raise BackupTamperedError("a section line is impossibly long")

    def at_end(self) -> bool:
        return self._at >= len(self._buffer) and not self._fill()


@dataclass(slots=True)
class Section:
    """A section being read: iterate :meth:`blocks` to the end before the next one."""

    section: str
    name: str
    _reader: _Bytes
    size: int = 0
    sha256: str = ""

    def blocks(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        while True:
            lead = self._reader.read(4)
            if len(lead) != 4:
                raise BackupTamperedError(f"section {self.name} ends early")
            length = int.from_bytes(lead, "big")
            if length == 0:
                break
            if length > BLOCK_BYTES:
                raise BackupTamperedError(f"section {self.name} has an impossible block")
            block = self._reader.read(length)
            if len(block) != length:
                raise BackupTamperedError(f"section {self.name} ends early")
            digest.update(block)
            self.size += length
            yield block
        self.sha256 = digest.hexdigest()


def read_sections(chunks: Iterator[bytes]) -> Iterator[Section]:
    """Each section in order; after the last, checks the closing table against what was read.

    The caller must consume each section's blocks before asking for the next.
    """
    reader = _Bytes(chunks)
    seen: list[Content] = []
    while True:
        raw = reader.readline()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BackupTamperedError("a section header is not JSON") from None
        if not isinstance(document, dict):
            raise BackupTamperedError("a section header is not an object")
        kind, name = document.get("section"), document.get("name")
        if kind == SECTION_END:
            listed = document.get("contents")
            if listed != [c.to_json() for c in seen]:
                raise BackupTamperedError(
                    "the backup's table of contents disagrees with its sections"
                )
            if not reader.at_end():
                raise BackupTamperedError("data follows the backup's table of contents")
            return
        if not isinstance(kind, str) or not isinstance(name, str):
            raise BackupTamperedError("a section header lacks its kind or name")
        section = Section(kind, name, reader)
        yield section
        if not section.sha256:  # the caller skipped it: read it through
            for _ in section.blocks():
                pass
        seen.append(Content(kind, name, section.size, section.sha256))
