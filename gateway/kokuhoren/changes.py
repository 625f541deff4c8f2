"""国保連 伝送 on the internal API: recipient changes → 連絡票 files → the 国保連 mailbox.

The core system (介護保険システム) posts changes of recipients (受給者: 認定結果,
有効期間, 負担割合, 住所地特例…) as they happen. At month end it asks for the
month's file: every pending change dated up to the end of that month goes into
one 受給者異動連絡票 (531) — or 受給者訂正連絡票 (532) for corrections — under
this agency's 保険者番号, with a new ファイル管理番号. The file is delivered by
a job (:mod:`chukan.gateway.kokuhoren.transmission`) and the intake result is kept on
the transmission and on each change. Return files (給付実績) are fetched and
ingested the same way.

Endpoints (grant ``kokuhoren.transmit``):

* ``POST /internal/v1/kokuhoren/recipient-changes`` ``{"changes": [...]}``
* ``POST /internal/v1/kokuhoren/transmissions`` ``{"month": "YYYYMM", "kind": ...}``
* ``GET  /internal/v1/kokuhoren/transmissions/{id}[?wait=s]``
* ``POST /internal/v1/kokuhoren/transmissions/{id}/resend`` (the same file, same number)
* ``POST /internal/v1/kokuhoren/returns`` ``{"month": "YYYYMM"}``
* ``GET  /internal/v1/kokuhoren/returns/{job_id}[?wait=s]``
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

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
from chukan.gateway.core.config import OP_KOKUHOREN_TRANSMIT
from chukan.gateway.core.errors import ConflictError, NotFoundError, ValidationError
from chukan.gateway.core.jobs import create_job, get_job, requeue_job
from chukan.gateway.core.state import GATEWAY_STATE, GatewayState, authorize
from chukan.gateway.core.tls import client_session
from chukan.gateway.core.web import read_json
from chukan.gateway.kokuhoren.json_codec import (
    FieldProblem,
    RecordInvalidError,
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

MAX_CHANGES_PER_REQUEST: Final = 1000
MAX_CHANGES_BODY: Final = 4 * 1024 * 1024
CHANGE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MONTH_PATTERN: Final = re.compile(r"^[0-9]{6}$")
KIND_DATA_TYPES: Final = {"change": DataType.CHANGE, "correction": DataType.CORRECTION}
#: Above this many records, parsing and encoding run off the event loop.
THREAD_RECORDS: Final = 500
POLL_INTERVAL: Final = 0.1
TASK_PREFIX: Final = "kokuhoren-job-"

KOKUHOREN_CLIENT: Final = web.AppKey("kokuhoren_client", MailboxClient)


class KokuhorenNotConfiguredError(ConflictError):
    """This gateway has no 保険者番号 or no 国保連 mailbox configured."""

    code = "kokuhoren_not_configured"


class RecipientChangesInvalidError(ValidationError):
    """Some posted changes are malformed; ``details.errors`` names each (none is stored)."""

    code = "recipient_changes_invalid"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = {"errors": errors}


class ChangeIdConflictError(ConflictError):
    """A ``change_id`` already stored with other content (none of the batch is stored)."""

    code = "change_id_conflict"

    def __init__(self, message: str, change_ids: list[str]) -> None:
        super().__init__(message)
        self.details = {"change_ids": change_ids}


class NothingToTransmitError(ConflictError):
    code = "nothing_to_transmit"


class NoValidRecordsError(ValidationError):
    """Every pending change of the month was refused at generation time."""

    code = "no_valid_records"

    def __init__(self, message: str, refused: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = {"refused": refused}


class TransmissionUnknownError(NotFoundError):
    code = "transmission_unknown"


class TransmissionInProgressError(ConflictError):
    """The transmission is still being delivered: there is nothing to send again yet."""

    code = "transmission_in_progress"


class ReturnIngestUnknownError(NotFoundError):
    code = "return_ingest_unknown"


# -- helpers --------------------------------------------------------------------------------


def _insurer(state: GatewayState) -> str:
    if state.config.insurer_number is None:
        raise KokuhorenNotConfiguredError("this gateway has no 介護保険 保険者番号 configured")
    return state.config.insurer_number


def _client(request: web.Request) -> MailboxClient:
    client = request.config_dict.get(KOKUHOREN_CLIENT)
    if client is None:
        raise KokuhorenNotConfiguredError("this gateway has no 国保連 mailbox configured")
    return client


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


def _wait_seconds(request: web.Request, state: GatewayState) -> float:
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise ValidationError("wait must be a number of seconds") from None
    return max(0.0, min(wait, state.config.timing.max_wait))


def _id(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ValidationError(f"{name} must be a positive integer")
    return int(value)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def spawn_job(state: GatewayState, coro: Coroutine[Any, Any, None], job_id: int) -> None:
    """Run a job in the background; a crash is logged, the job stays resumable."""

    async def guarded() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("kokuhoren_job_crashed", job_id=job_id)

    state.spawn(guarded(), name=f"{TASK_PREFIX}{job_id}")


# -- recipient changes ----------------------------------------------------------------------


def _validate_changes(items: list[Any], insurer: str) -> list[tuple[str, DataRecord]]:
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


async def post_recipient_changes(request: web.Request) -> web.Response:
    """Store changes of recipients for the next file; all of the batch or none."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer = _insurer(state)
    data = await read_json(request, limit=MAX_CHANGES_BODY)
    items = data.get("changes")
    if not isinstance(items, list) or not items:
        raise ValidationError("changes must be a non-empty list")
    if len(items) > MAX_CHANGES_PER_REQUEST:
        raise ValidationError(f"at most {MAX_CHANGES_PER_REQUEST} changes per request")
    if len(items) > THREAD_RECORDS:
        records = await asyncio.to_thread(_validate_changes, items, insurer)
    else:
        records = _validate_changes(items, insurer)
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
                system.system_id,
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
    log.info(
        "kokuhoren_changes_stored", stored=stored, unchanged=unchanged, caller=system.system_id
    )
    return web.json_response(
        {"stored": stored, "unchanged": unchanged, "changes": answer},
        status=201 if stored else 200,
    )


# -- transmissions --------------------------------------------------------------------------


def _parse_stored(
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


async def post_transmission(request: web.Request) -> web.Response:
    """Build the month's file from the pending changes and start its delivery job."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    insurer = _insurer(state)
    client = _client(request)
    data = await read_json(request)
    month = parse_month(data.get("month"))
    kind = data.get("kind", "change")
    if kind not in KIND_DATA_TYPES:
        raise ValidationError("kind must be 'change' or 'correction'")
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
            good, refused = await asyncio.to_thread(_parse_stored, rows, insurer)
        else:
            good, refused = _parse_stored(rows, insurer)
        for change_pk, change_id, problem in refused:
            await conn.execute(
                "UPDATE kokuhoren_recipient_changes SET status = 'refused', error_code = $2 "
                "WHERE id = $1",
                change_pk,
                problem.code,
            )
            refused_json.append({"change_id": change_id} | problem.to_json())
        if good:
            last = await conn.fetchval(
                "SELECT max(file_management_number) FROM kokuhoren_transmissions"
            )
            fmn = f"{int(last or 0) + 1:010d}"
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
            job_id = await create_job(
                conn, JOB_TRANSMIT, subject=file.file_name, created_by=system.system_id
            )
            transmission_id = await conn.fetchval(
                """INSERT INTO kokuhoren_transmissions (job_id, kind, data_type,
                       processing_month, file_name, file_management_number, record_count,
                       content, digest, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
                job_id,
                kind,
                data_type.value,
                str(month),
                file.file_name,
                fmn,
                len(good),
                content,
                hashlib.sha256(content).hexdigest(),
                system.system_id,
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
    spawn_job(state, transmit(state, client, transmission_id), job_id)
    log.info(
        "kokuhoren_file_built",
        transmission_id=transmission_id,
        job_id=job_id,
        fmn=fmn,
        month=str(month),
        kind=kind,
        records=len(good),
        refused=len(refused_json),
        caller=system.system_id,
    )
    body = await _transmission_json(state, transmission_id)
    body["refused"] = refused_json
    return web.json_response(body, status=202)


async def _transmission_json(state: GatewayState, transmission_id: int) -> dict[str, Any]:
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
        for error in intake["errors"]:
            error["change_id"] = by_number.get(error["record_number"])
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


async def get_transmission(request: web.Request) -> web.Response:
    """Status and intake result of one transmission; ``?wait=N`` waits for a final state."""
    await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    transmission_id = _id(request, "transmission_id")
    deadline = time.monotonic() + _wait_seconds(request, state)
    while True:
        body = await _transmission_json(state, transmission_id)
        if body["status"] != "queued" or time.monotonic() >= deadline:
            return web.json_response(body)
        await asyncio.sleep(POLL_INTERVAL)


async def post_resend(request: web.Request) -> web.Response:
    """Deliver a transmission's file again, under the same ファイル管理番号 (operator lever).

    For a ``failed`` transmission once its cause is fixed (a mailbox outage longer than
    the retry budget), or a ``delivered`` one whose intake result is in doubt: the mailbox
    is idempotent per ファイル管理番号, so a file it already holds is not registered twice
    and the answer is its stored intake result (``duplicate``).  The job runs again with a
    fresh retry budget; 409 ``transmission_in_progress`` while it is still queued.
    """
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    client = _client(request)
    transmission_id = _id(request, "transmission_id")
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
        caller=system.system_id,
    )
    return web.json_response(await _transmission_json(state, transmission_id), status=202)


# -- return files ---------------------------------------------------------------------------


async def post_returns(request: web.Request) -> web.Response:
    """Fetch and ingest the return files (給付実績) of a month, as a job."""
    system = await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    _insurer(state)
    client = _client(request)
    data = await read_json(request)
    month = str(parse_month(data.get("month")))
    job_id = await create_job(state.pool, JOB_INGEST, subject=month, created_by=system.system_id)
    spawn_job(state, ingest_returns(state, client, job_id), job_id)
    return web.json_response({"job_id": job_id, "month": month, "status": "queued"}, status=202)


async def _returns_json(state: GatewayState, job_id: int) -> dict[str, Any]:
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


async def get_returns(request: web.Request) -> web.Response:
    """An ingest job and the return files of its month; ``?wait=N`` waits for it to end."""
    await authorize(request, OP_KOKUHOREN_TRANSMIT)
    state = request.config_dict[GATEWAY_STATE]
    job_id = _id(request, "job_id")
    deadline = time.monotonic() + _wait_seconds(request, state)
    while True:
        body = await _returns_json(state, job_id)
        if body["status"] in ("done", "failed") or time.monotonic() >= deadline:
            return web.json_response(body)
        await asyncio.sleep(POLL_INTERVAL)


# -- lifecycle ------------------------------------------------------------------------------


async def _resume(state: GatewayState, client: MailboxClient) -> None:
    """Jobs a stopped process left queued or running are picked up again."""
    rows = await state.pool.fetch(
        "SELECT j.id, j.kind, t.id AS transmission_id FROM jobs j "
        "LEFT JOIN kokuhoren_transmissions t ON t.job_id = j.id "
        "WHERE j.kind = ANY($1::text[]) AND j.status IN ('queued', 'running') ORDER BY j.id",
        [JOB_TRANSMIT, JOB_INGEST],
    )
    for row in rows:
        if row["kind"] == JOB_TRANSMIT and row["transmission_id"] is not None:
            spawn_job(state, transmit(state, client, row["transmission_id"]), row["id"])
        elif row["kind"] == JOB_INGEST:
            spawn_job(state, ingest_returns(state, client, row["id"]), row["id"])
    if rows:
        log.info("kokuhoren_jobs_resumed", count=len(rows))


def setup_kokuhoren_routes(app: web.Application) -> None:
    """Routes of the 国保連 internal API and the mailbox client's lifecycle.

    Call after the gateway's own lifecycle is registered: the client needs its state.
    """

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[GATEWAY_STATE]
        link = state.config.kokuhoren
        if link is None or state.config.insurer_number is None:
            yield
            return
        session = client_session(state.config.tls)  # TLS to the mailbox when the network has it
        client = MailboxClient(
            link, state.config.insurer_number, state.keys, session, state.config.timing.http_timeout
        )
        app[KOKUHOREN_CLIENT] = client
        await _resume(state, client)
        yield
        ours = [t for t in state.tasks if t.get_name().startswith(TASK_PREFIX)]
        for task in ours:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*ours, return_exceptions=True)
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/internal/v1/kokuhoren/recipient-changes", post_recipient_changes)
    app.router.add_post("/internal/v1/kokuhoren/transmissions", post_transmission)
    app.router.add_get("/internal/v1/kokuhoren/transmissions/{transmission_id}", get_transmission)
    app.router.add_post(
        "/internal/v1/kokuhoren/transmissions/{transmission_id}/resend", post_resend
    )
    app.router.add_post("/internal/v1/kokuhoren/returns", post_returns)
    app.router.add_get("/internal/v1/kokuhoren/returns/{job_id}", get_returns)
