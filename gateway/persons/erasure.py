"""Erasure (特定個人情報の消去, by the agency's own operation): an audited physical purge.

What goes, in one transaction (all or nothing), serialized per tenant:

* 副本 versions no longer needed: a version another version of the same record took
  over from at a date before the cutoff (``now - superseded_age``), that later version
  itself stored before the cutoff — no query's reference date after the cutoff can
  select it again;
* the data of an unregistered person (every 副本 version, the manual-review flags, the
  hub notices) and the mapping itself: ``person_code`` becomes NULL, the row stays as a
  tombstone in state ``purged`` — only once the hub acknowledged the unregistration;
* the same for a 宛名番号 merged into another before the cutoff (its retired items kept
  their history until then).

What stays: provision records (情報提供等記録, seven years, disposed of by the records
retention job) and every other row naming the 宛名番号; versions a held provision
(自動応答不可, pending) will answer with; people with a query still open or a provision
still held, or a hub notice not yet acknowledged (named as deferred, erased by a later
run).  A second run erases nothing more.  Each run is a ``persons.purge`` job row with
its counts, and a ``purged`` event per person.  A run may be limited to named 宛名番号
(the same rules, for those people only).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from chukan.gateway.core import db
from chukan.gateway.core.jobs import create_job, fail_job, finish_job, start_job
from chukan.gateway.core.web import current_request_id
from chukan.gateway.replica.items import REPLICA_LOCK

log = structlog.get_logger("chukan.gateway")

PURGE_JOB: Final = "persons.purge"
#: Superseded 副本 versions are kept this long after another took over (5 years: the
#: longest period a 介護保険 query looks back to, 賦課 corrections included).
DEFAULT_SUPERSEDED_AGE: Final = dt.timedelta(days=5 * 366)

#: Versions taken over before the cutoff ($1 date) by a version stored before it ($2),
#: unless a pending held provision will answer with them ($3: only these 宛名番号, or NULL).
_SUPERSEDED_SQL: Final = """
    DELETE FROM replica_items v
    WHERE EXISTS (
            SELECT 1 FROM replica_items w
            WHERE w.atena_id = v.atena_id AND w.item_code = v.item_code
              AND w.record_key = v.record_key
              AND (w.valid_from, w.version) > (v.valid_from, v.version)
              AND w.valid_from <= $1 AND w.stored_at <= $2)
      AND NOT EXISTS (SELECT 1 FROM review_queue r
                      WHERE r.status = 'pending' AND v.id = ANY (r.replica_ids))
      AND ($3::text[] IS NULL OR v.atena_id = ANY ($3::text[]))
    RETURNING v.item_code"""

#: People whose data and mapping go ($1: merged before this instant; $2: only these
#: 宛名番号, or NULL for all), with why a candidate waits instead.
_CANDIDATES_SQL: Final = """
    SELECT p.atena_id, p.state,
           EXISTS (SELECT 1 FROM person_notices n
                   WHERE n.atena_id = p.atena_id AND n.acknowledged_at IS NULL)
             AS notice_open,
           EXISTS (SELECT 1 FROM queries q
                   WHERE q.atena_id = p.atena_id AND q.status IN ('queued', 'sent'))
             AS query_open,
           EXISTS (SELECT 1 FROM review_queue r
                   WHERE r.atena_id = p.atena_id AND r.status = 'pending')
             AS review_pending
    FROM persons p
    WHERE (p.state = 'unregistered' OR (p.state = 'merged' AND p.state_changed_at <= $1))
      AND ($2::text[] IS NULL OR p.atena_id = ANY ($2::text[]))
    ORDER BY p.atena_id
    FOR UPDATE OF p"""


@dataclass(slots=True)
class PurgeReport:
    """What one purge erased (and what it left for a later run), as reported and recorded."""

    job_id: int
    cutoff: dt.datetime
    scope: list[str] | None = None  # only these 宛名番号 (None: the whole tenant)
    superseded_versions: dict[str, int] = field(default_factory=dict)
    persons: list[str] = field(default_factory=list)
    person_versions: int = 0
    review_flags: int = 0
    notices: int = 0
    deferred: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "superseded_versions": sum(self.superseded_versions.values()),
            "persons": len(self.persons),
            "person_versions": self.person_versions,
            "review_flags": self.review_flags,
            "notices": self.notices,
            "deferred": len(self.deferred),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "cutoff": self.cutoff.isoformat(),
            "scope": self.scope,
            "counts": self.counts(),
            "superseded_versions_by_item": dict(sorted(self.superseded_versions.items())),
            "persons": self.persons,
            "deferred": self.deferred,
        }


async def purge_persons(
    conn: db.Conn,
    *,
    actor: str,
    superseded_age: dt.timedelta = DEFAULT_SUPERSEDED_AGE,
    now: dt.datetime | None = None,
    atena_ids: Sequence[str] | None = None,
) -> PurgeReport:
    """Run one purge as a ``persons.purge`` job; raises (and records the job failed) if the
    purge cannot commit, in which case nothing was erased.

    ``atena_ids`` limits it to those people (their superseded versions, their data if
    they are unregistered or merged): an operator erasing one person's data on request
    need not wait for, nor run, the tenant-wide erasure.
    """
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - superseded_age
    scope = None if atena_ids is None else sorted(set(atena_ids))
    subject = None if scope is None else ",".join(scope)[:200]
    job_id = await create_job(conn, PURGE_JOB, subject=subject, created_by=actor)
    await start_job(conn, job_id)
    report = PurgeReport(job_id, cutoff, scope)
    try:
        async with conn.transaction():
            await _purge(conn, report, actor, now)
            await finish_job(conn, job_id, report.counts())
    except BaseException as exc:
        await fail_job(conn, job_id, f"purge rolled back: {type(exc).__name__}")
        raise
    log.info("persons_purged", job_id=job_id, scoped=scope is not None, **report.counts())
    return report


async def _purge(conn: db.Conn, report: PurgeReport, actor: str, now: dt.datetime) -> None:
    # One purge at a time per tenant; registration messages (which take the replica lock
    # exclusively) and single PUTs (shared) wait, so no version is numbered meanwhile.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('chukan-person-purge:' "
        "|| chukan_tenant(), 0)), pg_advisory_xact_lock($1, hashtext(chukan_tenant()))",
        REPLICA_LOCK,
    )
    cutoff = report.cutoff
    for row in await conn.fetch(_SUPERSEDED_SQL, _jst_date(cutoff), cutoff, report.scope):
        code = row["item_code"]
        report.superseded_versions[code] = report.superseded_versions.get(code, 0) + 1
    targets: list[str] = []
    for row in await conn.fetch(_CANDIDATES_SQL, cutoff, report.scope):
        reason = (
            "hub_notice_open"
            if row["notice_open"]
            else "query_open"
            if row["query_open"]
            else "review_pending"
            if row["review_pending"]
            else None
        )
        if reason is None:
            targets.append(row["atena_id"])
        else:
            report.deferred[row["atena_id"]] = reason
    if not targets:
        return
    per_person = {
        r["atena_id"]: r["n"]
        for r in await conn.fetch(
            "WITH gone AS (DELETE FROM replica_items WHERE atena_id = ANY($1::text[]) "
            "RETURNING atena_id) SELECT atena_id, count(*) AS n FROM gone GROUP BY atena_id",
            targets,
        )
    }
    report.person_versions = sum(per_person.values())
    report.review_flags = _count(
        await conn.execute(
            "DELETE FROM replica_review_flags WHERE atena_id = ANY($1::text[])", targets
        )
    )
    report.notices = _count(
        await conn.execute("DELETE FROM person_notices WHERE atena_id = ANY($1::text[])", targets)
    )
    await conn.execute(
        "UPDATE persons SET person_code = NULL, state = 'purged', state_changed_at = $2 "
        "WHERE atena_id = ANY($1::text[])",
        targets,
        now,
    )
    await conn.executemany(
        """INSERT INTO person_events (atena_id, kind, detail, actor, request_id)
           VALUES ($1, 'purged', $2::jsonb, $3, $4)""",
        [
            (
                atena_id,
                json.dumps({"job_id": report.job_id, "versions": per_person.get(atena_id, 0)}),
                actor,
                current_request_id(),
            )
            for atena_id in targets
        ],
    )
    report.persons = targets


def _count(status: str) -> int:
    """Rows a DELETE took, from its command tag (``DELETE n``)."""
    return int(status.rsplit(" ", 1)[-1])


def _jst_date(instant: dt.datetime) -> dt.date:
    """The date in Japan of ``instant`` (validity dates are dates in Japan)."""
    return instant.astimezone(dt.timezone(dt.timedelta(hours=9))).date()
