"""The backup stream format: round trips at chunk boundaries, and every kind of damage refused."""

from __future__ import annotations

import io

import pytest

from chukan.gateway.backup.archive import SectionWriter, read_sections
from chukan.gateway.backup.errors import (
    BackupPassphraseWrongError,
    BackupTamperedError,
    BackupTruncatedError,
)
from chukan.gateway.backup.stream import MAGIC, EncryptingWriter, decrypted_chunks

PASSPHRASE = b"unit-test-passphrase-0123456789"
CHUNK = 64


def sealed(plaintext: bytes, chunk: int = CHUNK) -> bytes:
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, PASSPHRASE, {"kind": "daily"}, chunk_bytes=chunk)
    for start in range(0, len(plaintext), 7):  # written in pieces that straddle chunks
        writer.write(plaintext[start : start + 7])
    writer.close()
    return sink.getvalue()


def opened(data: bytes, passphrase: bytes = PASSPHRASE) -> bytes:
    return b"".join(decrypted_chunks(io.BytesIO(data), passphrase))


def frames(data: bytes) -> tuple[bytes, list[bytes]]:
    """The lead (magic, header) and each frame of a sealed stream."""
    offset = len(MAGIC)
    offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
    lead, parts = data[:offset], []
    while offset < len(data):
        end = offset + 5 + int.from_bytes(data[offset + 1 : offset + 5], "big")
        parts.append(data[offset:end])
        offset = end
    return lead, parts


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_any_size_round_trips(size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256 + 1)
    assert opened(sealed(plaintext[:size])) == plaintext[:size]


def test_reordered_repeated_or_dropped_chunks_are_refused() -> None:
    lead, parts = frames(sealed(b"a" * (4 * CHUNK)))
    assert len(parts) == 4  # the last full chunk is the final one
    with pytest.raises(BackupTamperedError):
        opened(lead + parts[1] + parts[0] + b"".join(parts[2:]))
    with pytest.raises(BackupTamperedError):
        opened(lead + parts[0] + b"".join(parts))
    with pytest.raises(BackupTamperedError):
        opened(lead + parts[0] + b"".join(parts[2:]))
    with pytest.raises(BackupTruncatedError):
        opened(lead + b"".join(parts[:-1]))  # cut exactly before the final chunk
    with pytest.raises(BackupTamperedError):
        opened(lead + b"".join(parts) + b"\x00")  # bytes after the final chunk


def test_a_chunk_of_another_backup_is_refused() -> None:
    lead, parts = frames(sealed(b"b" * (2 * CHUNK)))
    _, others = frames(sealed(b"b" * (2 * CHUNK)))
    with pytest.raises(BackupTamperedError):
        opened(lead + others[0] + b"".join(parts[1:]))


def test_a_wrong_passphrase_is_told_apart_from_damage() -> None:
    with pytest.raises(BackupPassphraseWrongError):
        opened(sealed(b"secret"), b"another-passphrase-0123456789")


def test_sections_round_trip_and_their_table_is_checked() -> None:
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, PASSPHRASE, {}, chunk_bytes=CHUNK)
    sections = SectionWriter(writer)
    sections.begin("database", "db.dump")
    sections.write(b"x" * 1000)
    sections.end()
    sections.begin("key", "a.ring.json")
    sections.write(b"{}")
    sections.end()
    sections.finish()
    writer.close()
    read = [
        (s.section, s.name, b"".join(s.blocks()))
        for s in read_sections(decrypted_chunks(io.BytesIO(sink.getvalue()), PASSPHRASE))
    ]
    assert read == [("database", "db.dump", b"x" * 1000), ("key", "a.ring.json", b"{}")]
