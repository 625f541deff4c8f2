"""The alarm state of the hub's records: ``/ready``, ``/metrics`` and the refusal of queries.

The checkpointer (:mod:`chukan.simulators.hub.checkpoints`) writes what it finds into
``hub_record_alarms`` (hub migration 0042), so every hub process sharing the database
reports and acts on the same state: the chain's unsigned segment does not verify
(``hub_record_chain_broken``), or a witness file no longer matches the database's
checkpoints (``hub_witness_mismatch``) or cannot be written (``hub_witness_unwritable``).

While any of them holds, the hub routes no new query (503 ``records_unavailable``), as
X-Road stops exchanging when it cannot log: the hub is the network's record of who asked
whom for what, and a query it cannot record verifiably must not happen.  Conclusions of
queries already routed, answers, 符号 issuance and the witness service go on.  The first
pass that finds the fault gone clears it and routing resumes (see docs/hub-records.md).
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from chukan.gateway.core import db
from chukan.gateway.core.metrics import Counter, Gauge
from chukan.simulators.errors import HubRecordsUnavailableError
from chukan.simulators.hub.state import HubState

log = structlog.get_logger("chukan.hub")

CHAIN: Final = "chain"
CHAIN_BROKEN: Final = "hub_record_chain_broken"
WITNESS_MISMATCH: Final = "hub_witness_mismatch"
WITNESS_UNWRITABLE: Final = "hub_witness_unwritable"
#: A witness file's failing row not written for this long belongs to a process that is
#: gone (a live one writes it on every pass, each ``checkpoint_poll``): no longer counted.
STALE: Final = dt.timedelta(minutes=2)
#: How long a process trusts its last look at the state before refusing or routing.
_FRESH: Final = 1.0


def witness_source(path: Path) -> str:
    """The alarm row of one witness file: host and absolute path (files are per host)."""
    return f"witness:{socket.gethostname()}:{path.absolute()}"


# -- written by the checkpointer ---------------------------------------------------------------


async def note_failing(
    conn: db.Executor, source: str, code: str, seq: int | None, detail: str
) -> None:
    """``source`` fails now (``failing_since`` kept from the first failure)."""
    await conn.execute(
        """INSERT INTO hub_record_alarms (source, failing_since, code, seq, detail, failures)
           VALUES ($1, now(), $2, $3, $4, 1)
           ON CONFLICT (source) DO UPDATE SET
               failing_since = coalesce(hub_record_alarms.failing_since, now()),
               code = $2, seq = $3, detail = $4, failures = hub_record_alarms.failures + 1,
               checked_at = now()""",
        source,
        code,
        seq,
        detail[:500],
    )
    forget()


async def note_ok(conn: db.Executor, source: str, witnessed_seq: int | None = None) -> None:
    """``source`` is sound: clear its alarm.  Written only when something changes (a
    cleared alarm, a new witnessed ``seq``), so a healthy pass costs no write."""
    written = await conn.fetchval(
        """INSERT INTO hub_record_alarms (source, witnessed_seq, last_ok_at)
           VALUES ($1, $2, now())
           ON CONFLICT (source) DO UPDATE SET
               failing_since = NULL, code = NULL, seq = NULL, detail = NULL,
               witnessed_seq = coalesce($2, hub_record_alarms.witnessed_seq),
               last_ok_at = now(), checked_at = now()
           WHERE hub_record_alarms.failing_since IS NOT NULL
              OR ($2::bigint IS NOT NULL
                  AND hub_record_alarms.witnessed_seq IS DISTINCT FROM $2)
           RETURNING 1""",
        source,
        witnessed_seq,
    )
    if written is not None:
        forget()


# -- read by /ready, /metrics and routing ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alarm:
    source: str
    failing_since: dt.datetime | None
    code: str | None
    seq: int | None
    detail: str | None
    failures: int
    witnessed_seq: int | None
    checked_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HubRecordsHealth:
    """What the database says of the hub's records at ``now``."""

    now: dt.datetime
    head_seq: int
    checkpoint_seq: int
    alarms: tuple[Alarm, ...]

    @property
    def failing(self) -> list[Alarm]:
        """The alarms in force (a stale witness file's row left aside)."""
        return [
            a
            for a in self.alarms
            if a.failing_since is not None
            and (a.source == CHAIN or self.now - a.checked_at < STALE)
        ]

    @property
    def chain_broken(self) -> bool:
        return any(a.source == CHAIN for a in self.failing)

    @property
    def witness_failing(self) -> int:
        return sum(1 for a in self.failing if a.source != CHAIN)

    @property
    def witnessed_seq(self) -> int:
        return max((a.witnessed_seq or 0 for a in self.alarms if a.source != CHAIN), default=0)

    @property
    def unwitnessed_events(self) -> int:
        return max(self.head_seq - self.witnessed_seq, 0)

    def refusal(self) -> str | None:
        """Why new queries are refused now (None: they are not)."""
        failing = self.failing
        if not failing:
            return None
        return "; ".join(
            f"{a.code} (seq {a.seq})" if a.seq is not None else str(a.code) for a in failing
        )

    def check(self) -> dict[str, Any]:
        """The ``records`` check of ``/ready``."""
        check: dict[str, Any] = {
            "ok": True,
            "head_seq": self.head_seq,
            "checkpoint_seq": self.checkpoint_seq,
            "witnessed_seq": self.witnessed_seq,
            "unwitnessed_events": self.unwitnessed_events,
            "routing": True,
        }
        failing = self.failing
        if failing:
            check.update(
                ok=False,
                routing=False,
                reason=self.refusal(),
                alarms=[
                    {
                        "code": a.code,
                        "seq": a.seq,
                        "detail": a.detail,
                        "since": a.failing_since.isoformat() if a.failing_since else None,
                    }
                    for a in failing
                ],
            )
        return check


_HEALTH_SQL: Final = """
    SELECT now() AS now,
           coalesce((SELECT seq FROM hub_record_chain_head), 0) AS head_seq,
           coalesce((SELECT max(seq) FROM hub_record_checkpoints), 0) AS checkpoint_seq,
           a.source, a.failing_since, a.code, a.seq, a.detail, a.failures, a.witnessed_seq,
           a.checked_at
    FROM (SELECT 1) AS one LEFT JOIN hub_record_alarms a ON true"""


async def records_health(conn: db.Executor) -> HubRecordsHealth:
    rows = await conn.fetch(_HEALTH_SQL)
    first = rows[0]
    return HubRecordsHealth(
        now=first["now"],
        head_seq=first["head_seq"],
        checkpoint_seq=first["checkpoint_seq"],
        alarms=tuple(
            Alarm(
                r["source"],
                r["failing_since"],
                r["code"],
                r["seq"],
                r["detail"],
                r["failures"],
                r["witnessed_seq"],
                r["checked_at"],
            )
            for r in rows
            if r["source"] is not None
        ),
    )


#: Each process's last look at the database, by pool: (monotonic time, health).  Only a
#: cache of the shared state, at most ``_FRESH`` seconds old, so that routing a query
#: costs no extra round trip; a change written by this process empties it.
_SEEN: dict[int, tuple[float, HubRecordsHealth]] = {}


def forget() -> None:
    _SEEN.clear()


async def require_recording(state: HubState) -> None:
    """Refuse a new query (503 ``records_unavailable``) while the hub's records cannot be
    kept verifiably: its chain is broken or a witness file fails."""
    key = id(state.pool)
    seen = _SEEN.get(key)
    if seen is not None and time.monotonic() - seen[0] < _FRESH:
        health = seen[1]
    else:
        health = await records_health(state.pool)
        _SEEN[key] = (time.monotonic(), health)
    refusal = health.refusal()
    if refusal is not None:
        log.warning("hub_query_refused_records", reason=refusal)
        raise HubRecordsUnavailableError(
            f"the hub routes no new query while its records fail: {refusal}"
        )


_GAUGES: Final = {
    "chain_broken": Gauge(
        "chukan_hub_records_chain_broken",
        "1 while the checkpointer finds the hub's record chain broken.",
    ),
    "witness_failing": Gauge(
        "chukan_hub_records_witness_failing",
        "Witness files that do not match the database or cannot be written.",
    ),
    "routing": Gauge(
        "chukan_hub_records_routing",
        "1 while new queries are routed; 0 while refused with records_unavailable.",
    ),
    "head_seq": Gauge("chukan_hub_records_head_seq", "The last seq of the hub's record chain."),
    "unwitnessed": Gauge(
        "chukan_hub_records_unwitnessed_events",
        "Events of the hub's chain not yet in a witnessed checkpoint.",
    ),
}


def metrics_lines(health: HubRecordsHealth) -> list[str]:
    """The records' families of the hub's ``/metrics`` (every hub process alike)."""
    failures = Counter(
        "chukan_hub_records_alarm_failures_total",
        "Checkpointer passes that found a fault, by kind (chain or witness).",
        ("kind",),
        values={("chain",): 0.0, ("witness",): 0.0},
    )
    for alarm in health.alarms:
        failures.inc("chain" if alarm.source == CHAIN else "witness", amount=alarm.failures)
    lines: list[str] = []
    for name, value in (
        ("chain_broken", float(health.chain_broken)),
        ("witness_failing", float(health.witness_failing)),
        ("routing", float(health.refusal() is None)),
        ("head_seq", float(health.head_seq)),
        ("unwitnessed", float(health.unwitnessed_events)),
    ):
        lines.extend(_GAUGES[name].render({(): value}))
    lines.extend(failures.render())
    return lines
