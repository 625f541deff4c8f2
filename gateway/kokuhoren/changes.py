"""国保連 伝送: recipient changes → 連絡票 files → the 国保連 mailbox, and return files back.

The core system (介護保険システム) posts changes of recipients (受給者: 認定結果,
有効期間, 負担割合, 住所地特例…) as they happen. At month end it asks for the
month's file: every pending change dated up to the end of that month goes into
one 受給者異動連絡票 (531) — or 受給者訂正連絡票 (532) for corrections — under
this agency's 保険者番号, with a new ファイル管理番号. The file is delivered by
a job (:mod:`chukan.gateway.kokuhoren.transmission`) and the intake result is kept on
the transmission and on each change. Return files (給付実績) are fetched and
ingested the same way.

This module holds the flow's SQL and its states (change: pending → included |
refused; transmission: queued → delivered | failed); the HTTP endpoints are in
:mod:`chukan.gateway.kokuhoren.routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
from collections.abc import Coroutine
from typing import Any, Final

import asyncpg
import structlog

from chukan.codecs.kokuhoren import (
    ControlRecord,
    DataRecord,
    DataType,
    Medium,
    RecipientCorrection,
    TransmissionFile,
    YearMonth,
    encode_file,
)
from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.jobs import create_job, get_job, requeue_job
from chukan.gateway.core.state import GatewayState
from chukan.gateway.kokuhoren.errors import (
    ChangeIdConflictError,
    FieldProblem,
    KokuhorenNotConfiguredError,
    NothingToTransmitError,
    NoValidRecordsError,
    RecipientChangesInvalidError,
    RecordInvalidError,
    ReturnIngestUnknownError,
    TransmissionInProgressError,
    TransmissionUnknownError,
)
from chukan.gateway.kokuhoren.json_codec import (
    canonical_json,
    effective_date,
    record_from_json,
    record_to_json,
)
from chukan.gateway.kokuhoren.transmission import (
    JOB_INGEST,
    JOB_TRANSMIT,
    MailboxClient,
    ingest_returns,
    transmit,
)

log = structlog.get_logger("chukan.kokuhoren")

CHANGE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MONTH_PATTERN: Final = re.compile(r"^[0-9]{6}$")
KIND_DATA_TYPES: Final = {"change": DataType.CHANGE, "correction": DataType.CORRECTION}
#: Above this many records, parsing and encoding run off the event loop.
THREAD_RECORDS: Final = 500
TASK_PREFIX: Final = "kokuhoren-job-"
#: A job's lease: an advisory lock per tenant and job, on a connection held while it runs.
JOB_LOCK_SQL: Final = (
    "SELECT pg_try_advisory_lock("
    "hashtextextended('chukan-kokuhoren-job:' || chukan_tenant() || ':' || $1, 0))"
)
#: Seconds between two looks for jobs no process runs (one that ran them died).
RESUME_INTERVAL: Final = 30.0


# -- helpers --------------------------------------------------------------------------------


def insurer_number(state: GatewayState) -> str:
    """This gateway's 保険者番号, or 409 ``kokuhoren_not_configured``."""
    if state.config.insurer_number is None:
        raise KokuhorenNotConfiguredError("this gateway has no 介護保険 保険者番号 configured")
    return state.config.insurer_number


def parse_month(value: Any) -> YearMonth:
    if not isinstance(value, str) or not MONTH_PATTERN.match(value):
        raise ValidationError("month must be YYYYMM")
    try:
        return YearMonth(int(value[:4]), int(value[4:]))
    except ValueError:
        raise ValidationError("month must be a real month YYYYMM") from None


def month_end(month: YearMonth) -> dt.date:
    following = YearMonth(month.year + month.month // 12, month.month % 12 + 1)
    return dt.date(following.year, following.month, 1) - dt.timedelta(days=1)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def hold_job(state: GatewayState, job_id: int) -> asyncpg.Connection | None:
    """The job's lock on a connection of its own, or None when another process holds it.

    A session-level advisory lock is the job's lease: held while the job runs,
    released when it ends, and by PostgreSQL when the process dies (``kill -9``
    included), so another process of this agency can take the job up.
    """
    conn = await asyncpg.connect(state.config.database_url, timeout=db.DEFAULT_CONNECT_TIMEOUT)
    try:
        held = await conn.fetchval(JOB_LOCK_SQL, str(job_id))
    except BaseException:
        conn.terminate()
        raise
    if held:
        return conn
    await conn.close()
    return None


def job_task_name(job_id: int) -> str:
    return f"{TASK_PREFIX}{job_id}"


def spawn_job(state: GatewayState, coro: Coroutine[Any, Any, None], job_id: int) -> None:
    """Run a job in the background under its lock; a crash is logged, the job stays resumable.

    A job another process of this agency is running is left to it.
    """

    async def guarded() -> None:
        try:
            holder = await hold_job(state, job_id)
        except Exception as exc:  # the database is away: the job stays resumable
            coro.close()
            log.warning("kokuhoren_job_not_started", job_id=job_id, error=type(exc).__name__)
            return
        if holder is None:
            coro.close()
            log.info("kokuhoren_job_held_elsewhere", job_id=job_id)
            return
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kokuhoren_job_crashed", job_id=job_id)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(holder.close())

    state.spawn(guarded(), name=job_task_name(job_id))


# -- recipient changes ----------------------------------------------------------------------


def validate_changes(items: list[Any], insurer: str) -> list[tuple[str, DataRecord]]:
    """Each change with its record, or 422 ``recipient_changes_invalid`` naming every problem."""
    records: list[tuple[str, DataRecord]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def refuse(index: int, change_id: Any, problem: FieldProblem) -> None:
        errors.append(
            {"index": index, "change_id": change_id if isinstance(change_id, str) else None}
            | problem.to_json()
        )

    for index, item in enumerate(items):
        if not isinstance(item, dict):
            refuse(index, None, FieldProblem(None, "field_invalid", "a change must be an object"))
            continue
        change_id = item.get("change_id")
        if not isinstance(change_id, str) or not CHANGE_ID_PATTERN.match(change_id):
            refuse(
                index,
                None,
                FieldProblem(
                    "change_id",
                    "field_invalid",
                    "change_id is required: 1-64 letters, digits, '.', '_' or '-'",
                ),
            )
            continue
        if change_id in seen:
            refuse(
                index,
                change_id,
                FieldProblem("change_id", "change_id_repeated", "change_id repeats in the batch"),
            )
            continue
        seen.add(change_id)
        try:
            records.append((change_id, record_from_json(item, default_insurer=insurer)))
        except RecordInvalidError as exc:
            for problem in exc.problems:
                refuse(index, change_id, problem)
    if errors:
        raise RecipientChangesInvalidError(
            f"{len({e['index'] for e in errors})} of {len(items)} changes are invalid; "
            "none was stored",
            errors,
        )
    return records


async def store_changes(
    state: GatewayState, items: list[Any], insurer: str, caller: str
) -> dict[str, Any]:
    """Store changes of recipients for the next file, all of the batch or none.

    The answer of the POST: counts of new and already stored changes, and each
    change's status and month.
    """
    if len(items) > THREAD_RECORDS:
        records = await asyncio.to_thread(validate_changes, items, insurer)
    else:
        records = validate_changes(items, insurer)
    rows: list[tuple[str, str, str, str, dt.date]] = []
    for change_id, record in records:
        kind = "correction" if isinstance(record, RecipientCorrection) else "change"
        text = canonical_json(record_to_json(record))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        rows.append((change_id, kind, text, digest, effective_date(record)))
    stored = unchanged = 0
    conflicts: list[str] = []
    answer: list[dict[str, Any]] = []
    async with state.pool.acquire() as conn, conn.transaction():
        for change_id, kind, text, digest, effective in rows:
            inserted = await conn.fetchval(
                """INSERT INTO kokuhoren_recipient_changes
                       (change_id, kind, record, digest, effective_on, submitted_by)
                   VALUES ($1, $2, $3::jsonb, $4, $5, $6)
                   ON CONFLICT (tenant, change_id) DO NOTHING RETURNING status""",
                change_id,
                kind,
                text,
                digest,
                effective,
                caller,
            )
            status = inserted
            if inserted is None:
                existing = await conn.fetchrow(
                    "SELECT digest, status FROM kokuhoren_recipient_changes WHERE change_id = $1",
                    change_id,
                )
                assert existing is not None
                if existing["digest"] != digest:
                    conflicts.append(change_id)
                    continue
                unchanged += 1
                status = existing["status"]
            else:
                stored += 1
            answer.append(
                {
                    "change_id": change_id,
                    "kind": kind,
                    "status": status,
                    "month": f"{effective.year:04d}{effective.month:02d}",
                }
            )
        if conflicts:
            raise ChangeIdConflictError(
                f"{len(conflicts)} change_id(s) were stored before with other content; "
                "none of the batch was stored",
                conflicts,
            )
    log.info("kokuhoren_changes_stored", stored=stored, unchanged=unchanged, caller=caller)
    return {"stored": stored, "unchanged": unchanged, "changes": answer}


# -- transmissions --------------------------------------------------------------------------


def parse_stored(
    rows: list[asyncpg.Record], insurer: str
) -> tuple[list[tuple[int, DataRecord]], list[tuple[int, str, FieldProblem]]]:
    """Re-check stored changes with the codec: the generation-time guard."""
    good: list[tuple[int, DataRecord]] = []
    refused: list[tuple[int, str, FieldProblem]] = []
    for row in rows:
        try:
            record = record_from_json(json.loads(row["record"]), default_insurer=insurer)
        except RecordInvalidError as exc:
            refused.append((row["id"], row["change_id"], exc.problems[0]))
            continue
        good.append((row["id"], record))
    return good, refused


async def build_transmission(
    state: GatewayState,
    client: MailboxClient,
    insurer: str,
    month: YearMonth,
    kind: str,
    caller: str,
) -> dict[str, Any]:
    """Build the month's file from the pending changes and start its delivery job.

    ``kind`` is a key of :data:`KIND_DATA_TYPES`. The answer of the POST: the
    transmission and the changes refused at generation time.
    """
    data_type = KIND_DATA_TYPES[kind]
    refused_json: list[dict[str, Any]] = []
    transmission_id = job_id = 0
    fmn = ""
    async with state.pool.acquire() as conn, conn.transaction():
        # One build at a time per tenant: numbers and change assignment stay consistent.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('kokuhoren-build:' || chukan_tenant()))"
        )
        rows = await conn.fetch(
            "SELECT id, change_id, record FROM kokuhoren_recipient_changes "
            "WHERE status = 'pending' AND kind = $1 AND effective_on <= $2 "
            "ORDER BY effective_on, id FOR UPDATE",
            kind,
            month_end(month),
        )
        if not rows:
            raise NothingToTransmitError(f"no pending {kind} records up to the end of {month}")
        if len(rows) > THREAD_RECORDS:
            good, refused = await asyncio.to_thread(parse_stored, rows, insurer)
        else:
            good, refused = parse_stored(rows, insurer)
        for change_pk, change_id, problem in refused:
            await conn.execute(
                "UPDATE kokuhoren_recipient_changes SET status = 'refused', error_code = $2 "
                "WHERE id = $1",
                change_pk,
                problem.code,
            )
            refused_json.append({"change_id": change_id} | problem.to_json())
        if good:
            fmn = await next_file_management_number(conn)
            control = ControlRecord(
                volume_number=1,
                record_count=len(good),
                data_type=data_type,
                welfare_office_number=None,
                insurer_number=insurer,
                prefecture_number=insurer[:2],
                medium=Medium.TRANSMISSION,
                processing_month=month,
                file_management_number=fmn,
            )
            file = TransmissionFile.build(control, (record for _, record in good))
            if len(good) > THREAD_RECORDS:
                content = await asyncio.to_thread(encode_file, file)
            else:
                content = encode_file(file)
            job_id = await create_job(conn, JOB_TRANSMIT, subject=file.file_name, created_by=caller)
            transmission_id = await insert_transmission(
                conn,
                job_id=job_id,
                kind=kind,
                data_type=data_type.value,
                month=month,
                file_name=file.file_name,
                fmn=fmn,
                record_count=len(good),
                content=content,
                caller=caller,
            )
            await conn.executemany(
                "UPDATE kokuhoren_recipient_changes SET status = 'included', "
                "transmission_id = $2, record_number = $3 WHERE id = $1",
                [(pk, transmission_id, number) for number, (pk, _) in enumerate(good, start=2)],
            )
    if not good:
        raise NoValidRecordsError(
            "every pending change was refused at generation time", refused_json
        )
    return await start_built_transmission(
        state,
        client,
        transmission_id=transmission_id,
        job_id=job_id,
        fmn=fmn,
        month=month,
        kind=kind,
        records=len(good),
        refused=refused_json,
        caller=caller,
    )


async def next_file_management_number(conn: db.Executor) -> str:
    """The next ファイル管理番号, one sequence per tenant for every kind of file (the
    caller holds the ``kokuhoren-build`` lock)."""
    last = await conn.fetchval("SELECT max(file_management_number) FROM kokuhoren_transmissions")
    return f"{int(last or 0) + 1:010d}"


async def insert_transmission(
    conn: db.Executor,
    *,
    job_id: int,
    kind: str,
    data_type: str,
    month: YearMonth,
    file_name: str,
    fmn: str,
    record_count: int,
    content: bytes,
    caller: str,
) -> int:
    """Keep a built file for its delivery job: one row for every kind of file."""
    transmission_id: int = await conn.fetchval(
        """INSERT INTO kokuhoren_transmissions (job_id, kind, data_type,
               processing_month, file_name, file_management_number, record_count,
               content, digest, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
        job_id,
        kind,
        data_type,
        str(month),
        file_name,
        fmn,
        record_count,
        content,
        hashlib.sha256(content).hexdigest(),
        caller,
    )
    return transmission_id


async def start_built_transmission(
    state: GatewayState,
    client: MailboxClient,
    *,
    transmission_id: int,
    job_id: int,
    fmn: str,
    month: YearMonth,
    kind: str,
    records: int,
    refused: list[dict[str, Any]],
    caller: str,
) -> dict[str, Any]:
    """Once the build has committed: start the delivery job and answer the POST with the
    transmission and what was refused at generation time."""
    spawn_job(state, transmit(state, client, transmission_id), job_id)
    log.info(
        "kokuhoren_file_built",
        transmission_id=transmission_id,
        job_id=job_id,
        fmn=fmn,
        month=str(month),
        kind=kind,
        records=records,
        refused=len(refused),
        caller=caller,
    )
    body = await transmission_json(state, transmission_id)
    body["refused"] = refused
    return body


async def transmission_json(state: GatewayState, transmission_id: int) -> dict[str, Any]:
    """One transmission, its job and intake result (each error with its ``change_id``)."""
    row = await state.pool.fetchrow(
        "SELECT * FROM kokuhoren_transmissions WHERE id = $1", transmission_id
    )
    if row is None:
        raise TransmissionUnknownError("no transmission with this id")
    job = await get_job(state.pool, row["job_id"])
    intake: dict[str, Any] | None = None
    if row["intake_result"] is not None:
        intake = json.loads(row["intake_result"])
        changes = await state.pool.fetch(
            "SELECT record_number, change_id FROM kokuhoren_recipient_changes "
            "WHERE transmission_id = $1",
            transmission_id,
        )
        by_number = {c["record_number"]: c["change_id"] for c in changes}
        flows = await state.pool.fetch(
            "SELECT first_record, last_record, record_id FROM kokuhoren_flow_records "
            "WHERE transmission_id = $1",
            transmission_id,
        )
        for error in intake["errors"]:
            number = error["record_number"]
            if flows:
                error["record_id"] = next(
                    (
                        f["record_id"]
                        for f in flows
                        if number is not None and f["first_record"] <= number <= f["last_record"]
                    ),
                    None,
                )
            else:
                error["change_id"] = by_number.get(number)
    return {
        "transmission_id": row["id"],
        "job_id": row["job_id"],
        "kind": row["kind"],
        "data_type": row["data_type"],
        "month": row["processing_month"],
        "file_name": row["file_name"],
        "file_management_number": row["file_management_number"],
        "record_count": row["record_count"],
        "digest": row["digest"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_at"]),
        "delivered_at": _iso(row["delivered_at"]),
        "job": job.to_json() if job is not None else None,
        "intake": intake,
    }


async def resend_transmission(
    state: GatewayState, client: MailboxClient, transmission_id: int, caller: str
) -> dict[str, Any]:
    """Queue a transmission's file to be delivered again, under the same ファイル管理番号.

    409 ``transmission_in_progress`` while it is still queued; the job runs again with
    a fresh retry budget.
    """
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT job_id, status FROM kokuhoren_transmissions WHERE id = $1 FOR UPDATE",
            transmission_id,
        )
        if row is None:
            raise TransmissionUnknownError("no transmission with this id")
        if row["status"] == "queued":
            raise TransmissionInProgressError("the transmission is still being delivered")
        await conn.execute(
            "UPDATE kokuhoren_transmissions SET status = 'queued' WHERE id = $1", transmission_id
        )
        await requeue_job(conn, row["job_id"])
    spawn_job(state, transmit(state, client, transmission_id), row["job_id"])
    log.info(
        "kokuhoren_transmission_resent",
        transmission_id=transmission_id,
        job_id=row["job_id"],
        previous=row["status"],
        caller=caller,
    )
    return await transmission_json(state, transmission_id)


# -- return files ---------------------------------------------------------------------------


async def start_return_ingest(
    state: GatewayState, client: MailboxClient, month: str, caller: str
) -> int:
    """Start the job that fetches and ingests the return files (給付実績) of ``month``."""
    job_id = await create_job(state.pool, JOB_INGEST, subject=month, created_by=caller)
    spawn_job(state, ingest_returns(state, client, job_id), job_id)
    return job_id


async def returns_json(state: GatewayState, job_id: int) -> dict[str, Any]:
    """An ingest job and the return files (with their records) of its month."""
    job = await get_job(state.pool, job_id)
    if job is None or job.kind != JOB_INGEST or job.subject is None:
        raise ReturnIngestUnknownError("no return-file ingest job with this id")
    files = await state.pool.fetch(
        "SELECT * FROM kokuhoren_return_files WHERE processing_month = $1 "
        "ORDER BY file_management_number",
        job.subject,
    )
    records = await state.pool.fetch(
        "SELECT * FROM kokuhoren_benefit_records WHERE return_file_id = ANY($1::bigint[]) "
        "ORDER BY return_file_id, record_number",
        [f["id"] for f in files],
    )
    return {
        "job_id": job.id,
        "month": job.subject,
        "status": job.status,
        "job": job.to_json(),
        "files": [
            {
                "file_name": f["file_name"],
                "file_management_number": f["file_management_number"],
                "data_type": f["data_type"],
                "record_count": f["record_count"],
                "digest": f["digest"],
                "received_at": _iso(f["received_at"]),
                "records": [
                    {
                        "record_number": r["record_number"],
                        "service_month": r["service_month"],
                        "insured_number": r["insured_number"],
                        "provider_number": r["provider_number"],
                        "service_type": r["service_type"],
                        "units": r["units"],
                        "benefit_amount": r["benefit_amount"],
                        "copayment": r["copayment"],
                    }
                    for r in records
                    if r["return_file_id"] == f["id"]
                ],
            }
            for f in files
        ],
    }


# -- lifecycle ------------------------------------------------------------------------------


async def resume_jobs(state: GatewayState, client: MailboxClient) -> None:
    """Jobs a stopped process left queued or running are picked up again.

    At start-up, then every :data:`RESUME_INTERVAL` seconds: each job is taken
    under its lock (:func:`spawn_job`), so a job another live process of this
    agency runs is left to it, and one whose process died is taken up.
    """
    await _resume_pass(state, client)
    state.spawn(_resume_loop(state, client), name=f"{TASK_PREFIX}resume")


async def _resume_pass(state: GatewayState, client: MailboxClient) -> int:
    rows = await state.pool.fetch(
        "SELECT j.id, j.kind, t.id AS transmission_id FROM jobs j "
        "LEFT JOIN kokuhoren_transmissions t ON t.job_id = j.id "
        "WHERE j.kind = ANY($1::text[]) AND j.status IN ('queued', 'running') ORDER BY j.id",
        [JOB_TRANSMIT, JOB_INGEST],
    )
    running = {task.get_name() for task in state.tasks}
    count = 0
    for row in rows:
        if job_task_name(row["id"]) in running:
            continue  # this process runs it already
        if row["kind"] == JOB_TRANSMIT and row["transmission_id"] is not None:
            spawn_job(state, transmit(state, client, row["transmission_id"]), row["id"])
        elif row["kind"] == JOB_INGEST:
            spawn_job(state, ingest_returns(state, client, row["id"]), row["id"])
        else:
            continue
        count += 1
    if count:
        log.info("kokuhoren_jobs_resumed", count=count)
    return count


async def _resume_loop(state: GatewayState, client: MailboxClient) -> None:
    while True:
        await asyncio.sleep(RESUME_INTERVAL)
        try:
            await _resume_pass(state, client)
        except Exception as exc:  # the loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            else:
                log.exception("kokuhoren_resume_failed")
