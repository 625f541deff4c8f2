"""Gateway configuration as immutable values, with defaults as named constants."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from chukan.codecs.kokuhoren_fields import is_valid_insurer_number
from chukan.gateway.core.settings import OpsConfig, RecordsConfig, StaffConfig
from chukan.gateway.core.tls import TlsSettings
from chukan.keys import PublicEncryptionKey, PublicSigningKey

#: Operations a core system can be granted on the internal API.
OP_REGISTER_PERSON: Final = "persons.register"
#: The 団体内統合宛名システム reports people's events: 転出, 死亡, merge, unregistration.
OP_PERSON_LIFECYCLE: Final = "persons.lifecycle"
#: Erasure of data no longer needed (副本 versions, unregistered persons): an operator's.
OP_PURGE_PERSONS: Final = "persons.purge"
OP_WRITE_REPLICA: Final = "replica.write"
OP_SUBMIT_QUERY: Final = "queries.submit"
OP_READ_QUERY: Final = "queries.read"
OP_READ_RECORDS: Final = "records.read"
#: 国保連 伝送: post recipient changes, build and send files, ingest return files.
OP_KOKUHOREN_TRANSMIT: Final = "kokuhoren.transmit"
OP_READ_REPLICA: Final = "replica.read"  # item history, export for reconciliation
OP_READ_REVIEW: Final = "review.read"  # the queue of provisions held for manual review
OP_DECIDE_REVIEW: Final = "review.decide"  # approve or refuse a held provision
#: Operator operations: status, authorization-list refresh, key-ring reload.
OP_READ_STATUS: Final = "status.read"
OP_MANAGE_LIST: Final = "authorization_list.manage"
OP_MANAGE_KEYS: Final = "keys.manage"
ADMIN_OPERATIONS: Final = frozenset(
    {OP_READ_STATUS, OP_MANAGE_LIST, OP_MANAGE_KEYS, OP_PURGE_PERSONS}
)
ALL_OPERATIONS: Final = frozenset(
    {
        OP_REGISTER_PERSON,
        OP_PERSON_LIFECYCLE,
        OP_WRITE_REPLICA,
        OP_SUBMIT_QUERY,
        OP_READ_QUERY,
        OP_READ_RECORDS,
        OP_KOKUHOREN_TRANSMIT,
        OP_READ_REPLICA,
        OP_READ_REVIEW,
        OP_DECIDE_REVIEW,
    }
    | ADMIN_OPERATIONS
)

DEFAULT_MESSAGE_SKEW: Final = dt.timedelta(minutes=5)
DEFAULT_PERMIT_SKEW: Final = dt.timedelta(seconds=30)
DEFAULT_RESULT_TTL: Final = dt.timedelta(days=7)
DEFAULT_SEND_BACKOFF: Final = 0.5
DEFAULT_MAX_BACKOFF: Final = 30.0
DEFAULT_SWEEP_INTERVAL: Final = 1.0
#: How long a provider keeps its answer to a provision request after the permit
#: expires, to repeat it to a hub that retries; longer than the hub's delivery grace.
DEFAULT_ANSWER_RETENTION: Final = dt.timedelta(days=1)
DEFAULT_HTTP_TIMEOUT: Final = 10.0
DEFAULT_LIST_REFRESH: Final = 60.0
#: Seconds between two checks of the key ring file (the fallback of the reload notice).
DEFAULT_RING_CHECK: Final = 30.0
DEFAULT_MAX_WAIT: Final = 30.0
DEFAULT_TRANSMIT_ATTEMPTS: Final = 12
DEFAULT_TRANSMIT_BACKOFF: Final = 0.5
DEFAULT_TRANSMIT_MAX_BACKOFF: Final = 300.0


def token_digest(token: str) -> str:
    """Tokens are configured and compared as SHA-256 digests, never kept in clear."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class SystemCredential:
    """A core system (e.g. 介護保険システム) allowed to call some internal operations.

    It authenticates with a client certificate (kind ``system``, subject
    ``<agency>.<system_id>``; it may call an operation granted both here and in
    the certificate's roles) or with a bearer token whose SHA-256 is
    ``token_sha256`` (an empty ``token_sha256`` means certificate only).
    """

    system_id: str
    token_sha256: str
    operations: frozenset[str]

    def __post_init__(self) -> None:
        unknown = self.operations - ALL_OPERATIONS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")

    def __repr__(self) -> str:
        return f"SystemCredential({self.system_id!r}, operations={sorted(self.operations)})"


@dataclass(frozen=True, slots=True)
class Timing:
    """Clock and retry settings, grouped like httpx's ``Timeout``."""

    message_skew: dt.timedelta = DEFAULT_MESSAGE_SKEW
    permit_skew: dt.timedelta = DEFAULT_PERMIT_SKEW
    result_ttl: dt.timedelta = DEFAULT_RESULT_TTL
    #: First step and cap of the backoff between attempts to send a query or an answer;
    #: nothing gives up after a number of attempts (DESIGN §9): the sweep keeps trying.
    send_backoff: float = DEFAULT_SEND_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    #: Seconds between two passes of the durable sweep of open queries and answers.
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    answer_retention: dt.timedelta = DEFAULT_ANSWER_RETENTION
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    list_refresh: float = DEFAULT_LIST_REFRESH
    #: How often each process compares the ring file with the ring it uses: a reload
    #: (``POST /internal/v1/keys/reload``) another process announced but this one missed
    #: (its notice connection was down) is taken up within this many seconds.
    ring_check: float = DEFAULT_RING_CHECK
    max_wait: float = DEFAULT_MAX_WAIT
    #: 国保連 伝送: attempts per file, first delay and cap of the exponential backoff.
    transmit_attempts: int = DEFAULT_TRANSMIT_ATTEMPTS
    transmit_backoff: float = DEFAULT_TRANSMIT_BACKOFF
    transmit_max_backoff: float = DEFAULT_TRANSMIT_MAX_BACKOFF


@dataclass(frozen=True, slots=True)
class KokuhorenLink:
    """The 国保連 伝送 mailbox this gateway delivers to (伝送通信ソフト settings).

    ``token`` is this 保険者's bearer credential (the mailbox keeps only its
    SHA-256); files are sealed for ``encryption_key`` and the mailbox's answers
    must verify under ``signing_key``.
    """

    url: str
    token: str
    encryption_key: PublicEncryptionKey
    signing_key: PublicSigningKey

    def __repr__(self) -> str:  # the token is a secret
        return f"KokuhorenLink(url={self.url!r}, key={self.encryption_key.key_id!r})"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One agency's gateway: who it is, where its hub and database are, who may call it."""

    agency_code: str
    agency_name: str
    database_url: str
    hub_url: str
    hub_key: PublicSigningKey
    enrolment_token: str
    key_dir: Path
    key_passphrase: bytes
    systems: tuple[SystemCredential, ...] = ()
    #: Owner credentials used only to apply migrations at start-up (optional).
    migration_database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    #: The URL the hub uses to reach this agency, when it is not this process's socket
    #: (behind a balancer, or several processes of one agency); None: the socket's URL.
    public_endpoint: str | None = None
    #: Bind with ``SO_REUSEPORT``, so that several processes of this agency (on one
    #: database, one key folder, one ``public_endpoint``) share ``port``; the kernel
    #: spreads the connections over them.
    reuse_port: bool = False
    timing: Timing = field(default_factory=Timing)
    #: Mutual TLS (server certificate, client certificate to the hub, CA); None = plain HTTP.
    tls: TlsSettings | None = None
    #: 介護保険 保険者番号 of this agency (6 digits, check digit), for 国保連 files.
    insurer_number: str | None = None
    #: Where 国保連 files go; ``None`` when this gateway does not transmit.
    kokuhoren: KokuhorenLink | None = None
    records: RecordsConfig = field(default_factory=RecordsConfig)
    staff: StaffConfig = field(default_factory=StaffConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)

    def __post_init__(self) -> None:
        if self.insurer_number is not None and not is_valid_insurer_number(self.insurer_number):
            raise ValueError("insurer_number must be 6 digits with a valid check digit")

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"GatewayConfig(agency={self.agency_code!r}, hub={self.hub_url!r})"

    def system_for_token(self, token: str) -> SystemCredential | None:
        digest = token_digest(token)
        for system in self.systems:
            if hmac.compare_digest(system.token_sha256, digest):
                return system
        return None
