"""Settings of records, staff accounts and system management, with defaults as constants.

Kept apart from :mod:`chukan.gateway.core.config` (which holds them as fields of
``GatewayConfig``) so that these modules import no gateway state.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

# -- provision records ----------------------------------------------------------------------

#: Sign a checkpoint once this many records are unsigned ...
DEFAULT_CHECKPOINT_EVERY: Final = 200
#: ... or once the oldest unsigned record is this old: with the witness (the hub
#: countersigning each checkpoint), the window a superuser has to rewrite records unseen.
DEFAULT_CHECKPOINT_INTERVAL: Final = dt.timedelta(seconds=5)
#: How often the checkpointer looks (one cheap query per tenant) and submits checkpoints.
DEFAULT_CHECKPOINT_POLL: Final = 1.0
#: Records may wait this long for the witness (unreachable, failing) while the gateway
#: keeps exchanging; beyond it, new exchanges are refused (503 ``records_unwitnessed``).
DEFAULT_WITNESS_GRACE: Final = dt.timedelta(minutes=15)
#: ``records verify``: records older than the checkpoint interval plus this margin must be
#: covered by a witnessed checkpoint.
DEFAULT_WITNESS_MARGIN: Final = dt.timedelta(seconds=60)
#: Monthly partitions kept ready ahead of the current month.
DEFAULT_PARTITIONS_AHEAD: Final = 3
DEFAULT_PARTITION_CHECK: Final = dt.timedelta(days=1)

# -- staff ----------------------------------------------------------------------------------

DEFAULT_IDLE_TIMEOUT: Final = dt.timedelta(minutes=15)
DEFAULT_SESSION_LIFETIME: Final = dt.timedelta(hours=10)
DEFAULT_MAX_FAILED_LOGINS: Final = 5
DEFAULT_LOCKOUT: Final = dt.timedelta(minutes=15)
DEFAULT_MIN_PASSWORD_LENGTH: Final = 12
DEFAULT_UNUSED_DAYS: Final = 90
#: scrypt cost (RFC 7914): n=2**15, r=8, p=1 is about 32 MiB and 50-100 ms per hash.
DEFAULT_SCRYPT_N: Final = 2**15
DEFAULT_SCRYPT_R: Final = 8
DEFAULT_SCRYPT_P: Final = 1
#: The console's 長時間ログオン report lists sessions logged on longer than this (hours)
#: unless the page is asked for another span.
DEFAULT_LONG_SESSION_HOURS: Final = 8.0
#: Longest span the report accepts (a leap year), in hours.
MAX_LONG_SESSION_HOURS: Final = 24 * 366

# -- system management ----------------------------------------------------------------------

#: Results collected this long ago are deleted (expired ones always are).
DEFAULT_RESULT_RETENTION: Final = dt.timedelta(days=1)
DEFAULT_PURGE_INTERVAL: Final = dt.timedelta(hours=1)
DEFAULT_READY_TIMEOUT: Final = 2.0
#: Business days of a Japanese municipality, for statistics.
DEFAULT_STATISTICS_TIME_ZONE: Final = "Asia/Tokyo"
#: Request bodies above this size are "large": a process holds only a few at once ...
DEFAULT_LARGE_BODY_BYTES: Final = 1024 * 1024
#: ... at most this many (e.g. registration messages of tens of MB each) ...
DEFAULT_MAX_LARGE_BODIES: Final = 2
#: ... and a request waits this long for its turn before it is answered 503 ``busy``.
DEFAULT_LARGE_BODY_WAIT: Final = 30.0
#: Refusals of one peer (remote address) a minute before its further refusals are answered
#: 429 ``rate_limited`` (:mod:`chukan.gateway.core.refusals`).
DEFAULT_REFUSALS_PER_MINUTE: Final = 60


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """``[records]``: checkpoint windows (seconds, records) and the witness's grace."""

    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    checkpoint_interval: dt.timedelta = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_poll: float = DEFAULT_CHECKPOINT_POLL
    witness_grace: dt.timedelta = DEFAULT_WITNESS_GRACE
    partitions_ahead: int = DEFAULT_PARTITIONS_AHEAD
    partition_check: dt.timedelta = DEFAULT_PARTITION_CHECK


@dataclass(frozen=True, slots=True)
class InitialAdmin:
    """An administrator created at start-up when the tenant has none (bootstrap).

    ``password_hash`` is a scrypt string from ``chukan staff hash-password``:
    configuration never holds a password in clear.
    """

    username: str
    password_hash: str

    def __repr__(self) -> str:
        return f"InitialAdmin({self.username!r})"


@dataclass(frozen=True, slots=True)
class StaffConfig:
    idle_timeout: dt.timedelta = DEFAULT_IDLE_TIMEOUT
    session_lifetime: dt.timedelta = DEFAULT_SESSION_LIFETIME
    max_failed_logins: int = DEFAULT_MAX_FAILED_LOGINS
    lockout: dt.timedelta = DEFAULT_LOCKOUT
    min_password_length: int = DEFAULT_MIN_PASSWORD_LENGTH
    unused_days: int = DEFAULT_UNUSED_DAYS
    scrypt_n: int = DEFAULT_SCRYPT_N
    scrypt_r: int = DEFAULT_SCRYPT_R
    scrypt_p: int = DEFAULT_SCRYPT_P
    initial_admin: InitialAdmin | None = None
    long_session_hours: float = DEFAULT_LONG_SESSION_HOURS

    def __post_init__(self) -> None:
        if not 0 < self.long_session_hours <= MAX_LONG_SESSION_HOURS:
            raise ValueError(
                f"long_session_hours must be above 0 and at most {MAX_LONG_SESSION_HOURS}"
            )


@dataclass(frozen=True, slots=True)
class OpsConfig:
    result_retention: dt.timedelta = DEFAULT_RESULT_RETENTION
    purge_interval: dt.timedelta = DEFAULT_PURGE_INTERVAL
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    statistics_time_zone: str = DEFAULT_STATISTICS_TIME_ZONE
    #: Bodies larger than ``large_body_bytes`` are read and kept by at most
    #: ``max_large_bodies`` requests at once (per server process); the others wait up
    #: to ``large_body_wait`` seconds, then get 503 ``busy`` with ``Retry-After``.
    large_body_bytes: int = DEFAULT_LARGE_BODY_BYTES
    max_large_bodies: int = DEFAULT_MAX_LARGE_BODIES
    large_body_wait: float = DEFAULT_LARGE_BODY_WAIT
    refusals_per_minute: int = DEFAULT_REFUSALS_PER_MINUTE

    def __post_init__(self) -> None:
        if self.max_large_bodies < 1 or self.large_body_bytes < 1 or self.large_body_wait < 0:
            raise ValueError(
                "max_large_bodies and large_body_bytes must be positive, "
                "large_body_wait not negative"
            )
        if self.refusals_per_minute < 1:
            raise ValueError("refusals_per_minute must be at least 1")
