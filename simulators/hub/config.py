"""The hub's configuration: every tunable with its default, and its database's name."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from chukan.gateway.core.tls import TlsSettings
from chukan.permits import AuthorizationList

DEFAULT_PERMIT_LIFETIME: Final = dt.timedelta(minutes=5)
DEFAULT_ACQUISITION_LIFETIME: Final = dt.timedelta(minutes=5)
DEFAULT_MESSAGE_SKEW: Final = dt.timedelta(minutes=5)
DEFAULT_LIST_LIFETIME: Final = dt.timedelta(days=1)
DEFAULT_DELIVERY_BACKOFF: Final = 0.5
DEFAULT_DELIVERY_MAX_BACKOFF: Final = 30.0
#: After a permit expires, its provision request is still retried this long, so that a
#: provider that answered just before (and was then cut off) is heard; the providers'
#: answer retention (``Timing.answer_retention``) must be longer.
DEFAULT_DELIVERY_GRACE: Final = dt.timedelta(hours=1)
#: How long a conclusion is offered to its requester (pushed, and kept to be asked for).
DEFAULT_ANSWER_RETENTION: Final = dt.timedelta(days=7)
DEFAULT_DELIVERY_TIMEOUT: Final = 10.0
#: The hub signs its record chain's head every N events or T seconds (the window a
#: database superuser could rewrite before a signed, witnessed checkpoint covers it).
DEFAULT_CHECKPOINT_EVERY: Final = 1000
DEFAULT_CHECKPOINT_INTERVAL: Final = dt.timedelta(seconds=5)
DEFAULT_CHECKPOINT_POLL: Final = 1.0
#: The witness file's name in the hub's key folder, unless ``witness_file`` says otherwise.
DEFAULT_WITNESS_FILE: Final = "records-witness.jsonl"
HUB_OWNER: Final = "hub"
HUB_DATABASE: Final = "chukan_hub"


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything the hub needs; defaults are the constants above."""

    database_url: str
    key_dir: Path
    key_passphrase: bytes
    admin_token: str
    host: str = "127.0.0.1"
    port: int = 0
    permit_lifetime: dt.timedelta = DEFAULT_PERMIT_LIFETIME
    acquisition_lifetime: dt.timedelta = DEFAULT_ACQUISITION_LIFETIME
    message_skew: dt.timedelta = DEFAULT_MESSAGE_SKEW
    list_lifetime: dt.timedelta = DEFAULT_LIST_LIFETIME
    delivery_backoff: float = DEFAULT_DELIVERY_BACKOFF
    delivery_max_backoff: float = DEFAULT_DELIVERY_MAX_BACKOFF
    delivery_grace: dt.timedelta = DEFAULT_DELIVERY_GRACE
    answer_retention: dt.timedelta = DEFAULT_ANSWER_RETENTION
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    authorization_list: AuthorizationList | None = None
    #: Mutual TLS (server certificate, the hub's client certificate, CA); None = plain HTTP.
    tls: TlsSettings | None = None
    #: The owner's URL, given only to a hub that applies its own migrations at start;
    #: without it, start-up refuses a database with a migration pending (``chukan db
    #: migrate --component hub``).  The offline network sets it.
    migration_database_url: str | None = None
    #: ``[records]``: checkpoints of the hub's record chain, and the witness file (JSON
    #: lines outside the database) every checkpoint is appended to; None: in ``key_dir``.
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    checkpoint_interval: dt.timedelta = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_poll: float = DEFAULT_CHECKPOINT_POLL
    witness_file: Path | None = None

    @property
    def witness_path(self) -> Path:
        return self.witness_file or self.key_dir / DEFAULT_WITNESS_FILE

    def __repr__(self) -> str:  # never print the passphrase or the admin token
        return f"HubConfig(database={self.database_url.rsplit('/', 1)[-1]!r}, port={self.port})"
