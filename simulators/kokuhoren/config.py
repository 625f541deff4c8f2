"""The 国保連 simulator's configuration and its database's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from chukan.gateway.core.tls import TlsSettings

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
    #: Its server certificate (and the CA) when it is started on its own; the client
    #: parts stay empty: the simulator calls no one.  None: the starter gives a context.
    tls: TlsSettings | None = None
    #: The owner's URL, given only to a 国保連 simulator that applies its own migrations at start;
    #: without it, start-up refuses a database with a migration pending (``chukan db
    #: migrate --component kokuhoren``).  The offline network sets it.
    migration_database_url: str | None = None

    def __repr__(self) -> str:
        return (
            f"KokuhorenConfig(database={self.database_url.rsplit('/', 1)[-1]!r}, port={self.port})"
        )
