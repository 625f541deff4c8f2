"""The 国保連 simulator's configuration and its database's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

KOKUHOREN_DATABASE: Final = "chukan_kokuhoren"
DEFAULT_MAX_FILE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KokuhorenConfig:
    """Everything the simulator needs; secrets are hidden from ``repr``."""

    database_url: str
    key_dir: Path
    key_passphrase: bytes
    admin_token: str
    host: str = "127.0.0.1"
    port: int = 0
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: Mailbox calls must present the 保険者's agency client certificate (mutual TLS).
    require_client_certificate: bool = False

    def __repr__(self) -> str:
        return (
            f"KokuhorenConfig(database={self.database_url.rsplit('/', 1)[-1]!r}, port={self.port})"
        )
