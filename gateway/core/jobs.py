"""Jobs (システム管理): imports, transmissions and deletions report their status here.

A job moves queued → running → done | failed; counts are a JSON object of
named integers (e.g. ``{"accepted": 10, "rejected": 1}``).  Every change is
one statement so a crash never leaves a job half-updated.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from chukan.gateway.core import db

log = structlog.get_logger("chukan.jobs")

JOB_STATUSES: Final = ("queued", "running", "done", "failed")
MAX_ERROR_TEXT: Final = 2000


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    status: str
    subject: str | None
    counts: dict[str, int]
    attempts: int
    error: str | None
    created_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Job:
        counts = row["counts"]
        return cls(
            id=row["id"],
            kind=row["kind"],
            status=row["status"],
            subject=row["subject"],
            counts=json.loads(counts) if isinstance(counts, str) else dict(counts),
            attempts=row["attempts"],
            error=row["error"],
            created_by=row["created_by"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    def to_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        duration = (
            (self.finished_at - self.started_at).total_seconds()
            if self.finished_at and self.started_at
            else None
        )
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "subject": self.subject,
            "counts": self.counts,
            "attempts": self.attempts,
            "error": self.error,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_seconds": duration,
        }


async def create_job(
    conn: db.Executor, kind: str, *, subject: str | None = None, created_by: str | None = None
) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO jobs (kind, subject, created_by) VALUES ($1, $2, $3) RETURNING id",
        kind,
        subject,
        created_by,
    )
    log.info("job_created", job_id=job_id, kind=kind)
    return job_id


async def start_job(conn: db.Executor, job_id: int) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
        "started_at = COALESCE(started_at, now()), error = NULL WHERE id = $1",
        job_id,
    )


async def finish_job(conn: db.Executor, job_id: int, counts: dict[str, int]) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'done', counts = $2::jsonb, finished_at = now(), "
        "next_attempt_at = NULL WHERE id = $1",
        job_id,
        json.dumps(counts),
    )
    log.info("job_done", job_id=job_id, counts=counts)


async def fail_job(
    conn: db.Executor,
    job_id: int,
    error: str,
    *,
    counts: dict[str, int] | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    """Record a failure; with ``retry_at`` the job goes back to queued for another attempt."""
    await conn.execute(
        """UPDATE jobs
           SET status = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'queued' END,
               error = $2, next_attempt_at = $3,
               finished_at = CASE WHEN $3::timestamptz IS NULL THEN now() END,
               counts = COALESCE($4::jsonb, counts)
           WHERE id = $1""",
        job_id,
        error[:MAX_ERROR_TEXT],
        retry_at,
        json.dumps(counts) if counts is not None else None,
    )
    log.warning("job_failed", job_id=job_id, retrying=retry_at is not None)


async def requeue_job(conn: db.Executor, job_id: int) -> None:
    """An operator's re-run of a finished job: queued again, with a fresh retry budget."""
    await conn.execute(
        "UPDATE jobs SET status = 'queued', attempts = 0, error = NULL, next_attempt_at = NULL, "
        "started_at = NULL, finished_at = NULL WHERE id = $1",
        job_id,
    )
    log.info("job_requeued", job_id=job_id)


async def get_job(conn: db.Executor, job_id: int) -> Job | None:
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    return Job.from_row(row) if row is not None else None


async def list_jobs(
    conn: db.Executor, *, kind: str | None = None, status: str | None = None, limit: int = 100
) -> list[Job]:
    rows = await conn.fetch(
        "SELECT * FROM jobs WHERE ($1::text IS NULL OR kind = $1) "
        "AND ($2::text IS NULL OR status = $2) ORDER BY id DESC LIMIT $3",
        kind,
        status,
        limit,
    )
    return [Job.from_row(r) for r in rows]
