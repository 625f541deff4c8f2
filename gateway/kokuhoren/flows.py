"""給付管理票, 償還払い実績 and 特別徴収依頼: posted records → files → the 国保連 mailbox.

The source is the core system (介護保険システム), through the internal API, as for
the 受給者異動連絡票: it posts records as they are decided (a 給付管理票 of a plan
the 保険者 made itself, a 償還払い 支給決定, a 特別徴収 依頼 of a 賦課年度), each
under a ``record_id`` of its own (a repeat with the same content is a no-op, other
content is refused). At month end it asks for the month's file of one flow: every
pending record of that flow due up to that month goes into one file under a new
ファイル管理番号, built in one transaction that also marks the records included;
delivery is the transmission job of :mod:`chukan.gateway.kokuhoren.transmission`
(sealed envelope, retries, idempotent per ファイル管理番号, resumed after a crash),
and the intake result is kept on the transmission and on each record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Final

import structlog

from chukan.codecs.kokuhoren_fields import YearMonth
from chukan.codecs.kokuhoren_flows import FlowControl, FlowSpec, encode_flow_file
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.jobs import create_job
from chukan.gateway.core.state import GatewayState
from chukan.gateway.kokuhoren.changes import (
    CHANGE_ID_PATTERN,
    THREAD_RECORDS,
    insert_transmission,
    next_file_management_number,
    start_built_transmission,
)
from chukan.gateway.kokuhoren.errors import (
    ChangeIdConflictError,
    FieldProblem,
    NothingToTransmitError,
    NoValidRecordsError,
    RecipientChangesInvalidError,
    RecordInvalidError,
)
from chukan.gateway.kokuhoren.flow_json import (
    OUTGOING,
    canonical_json,
    record_from_json,
    record_month,
    record_to_json,
)
from chukan.gateway.kokuhoren.transmission import JOB_TRANSMIT, MailboxClient

log = structlog.get_logger("chukan.kokuhoren")

MAX_RECORDS_PER_REQUEST: Final = 1000


def flow_spec(name: Any) -> FlowSpec[Any]:
    """The outgoing flow called ``name``, or 422."""
    if not isinstance(name, str) or name not in OUTGOING:
        raise ValidationError(f"flow must be one of {', '.join(sorted(OUTGOING))}")
    return OUTGOING[name]


def validate_records(spec: FlowSpec[Any], items: list[Any], insurer: str) -> list[tuple[str, Any]]:
    """Each record with its id, or 422 ``recipient_changes_invalid`` naming every problem."""
    records: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def refuse(index: int, record_id: Any, problem: FieldProblem) -> None:
        errors.append(
            {"index": index, "record_id": record_id if isinstance(record_id, str) else None}
            | problem.to_json()
        )

    for index, item in enumerate(items):
        record_id = item.get("record_id") if isinstance(item, dict) else None
        if not isinstance(record_id, str) or not CHANGE_ID_PATTERN.match(record_id):
            refuse(
                index,
                record_id,
                FieldProblem(
                    "record_id", "record_id_invalid", "record_id must be 1-64 of A-Z a-z 0-9 _ . -"
                ),
            )
            continue
        if record_id in seen:
            refuse(
                index,
                record_id,
                FieldProblem("record_id", "record_id_repeated", "record_id repeats in the batch"),
            )
            continue
        seen.add(record_id)
        try:
            records.append((record_id, record_from_json(spec, item, insurer=insurer)))
        except RecordInvalidError as exc:
            for problem in exc.problems:
                refuse(index, record_id, problem)
    if errors:
        raise RecipientChangesInvalidError(
            f"{len({e['index'] for e in errors})} of {len(items)} records are invalid; "
            "none was stored",
            errors,
        )
    return records


async def store_records(
    state: GatewayState, spec: FlowSpec[Any], items: list[Any], insurer: str, caller: str
) -> dict[str, Any]:
    """Store records of one flow for the next file, all of the batch or none."""
    if len(items) > THREAD_RECORDS:
        records = await asyncio.to_thread(validate_records, spec, items, insurer)
    else:
        records = validate_records(spec, items, insurer)
    stored = unchanged = 0
    conflicts: list[str] = []
    answer: list[dict[str, Any]] = []
    async with state.pool.acquire() as conn, conn.transaction():
        for record_id, item in records:
            text = canonical_json(record_to_json(item))
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            month = str(record_month(item))
            status = await conn.fetchval(
                """INSERT INTO kokuhoren_flow_records
                       (flow, record_id, record, digest, month, submitted_by)
                   VALUES ($1, $2, $3::jsonb, $4, $5, $6)
                   ON CONFLICT (tenant, flow, record_id) DO NOTHING RETURNING status""",
                spec.name,
                record_id,
                text,
                digest,
                month,
                caller,
            )
            if status is None:
                existing = await conn.fetchrow(
                    "SELECT digest, status FROM kokuhoren_flow_records "
                    "WHERE flow = $1 AND record_id = $2",
                    spec.name,
                    record_id,
                )
                assert existing is not None
                if existing["digest"] != digest:
                    conflicts.append(record_id)
                    continue
                unchanged += 1
                status = existing["status"]
            else:
                stored += 1
            answer.append({"record_id": record_id, "status": status, "month": month})
        if conflicts:
            raise ChangeIdConflictError(
                f"{len(conflicts)} record_id(s) were stored before with other content; "
                "none of the batch was stored",
                conflicts,
            )
    log.info(
        "kokuhoren_flow_records_stored",
        flow=spec.name,
        stored=stored,
        unchanged=unchanged,
        caller=caller,
    )
    return {"flow": spec.name, "stored": stored, "unchanged": unchanged, "records": answer}


def _parse_stored(
    spec: FlowSpec[Any], rows: list[Any], insurer: str
) -> tuple[list[tuple[int, Any]], list[tuple[int, str, FieldProblem]]]:
    good: list[tuple[int, Any]] = []
    refused: list[tuple[int, str, FieldProblem]] = []
    for row in rows:
        try:
            item = record_from_json(spec, json.loads(row["record"]), insurer=insurer)
        except RecordInvalidError as exc:
            refused.append((row["id"], row["record_id"], exc.problems[0]))
            continue
        good.append((row["id"], item))
    return good, refused


async def build_flow_transmission(
    state: GatewayState,
    client: MailboxClient,
    insurer: str,
    month: YearMonth,
    spec: FlowSpec[Any],
    caller: str,
) -> dict[str, Any]:
    """Build the month's file of one flow from its pending records; start its delivery."""
    refused_json: list[dict[str, Any]] = []
    transmission_id = job_id = 0
    fmn = ""
    async with state.pool.acquire() as conn, conn.transaction():
        # The same lock as the 異動連絡票's: one ファイル管理番号 sequence per tenant.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('kokuhoren-build:' || chukan_tenant()))"
        )
        rows = await conn.fetch(
            "SELECT id, record_id, record FROM kokuhoren_flow_records "
            "WHERE status = 'pending' AND flow = $1 AND month <= $2 "
            "ORDER BY month, id FOR UPDATE",
            spec.name,
            str(month),
        )
        if not rows:
            raise NothingToTransmitError(f"no pending {spec.name} records up to {month}")
        good, refused = (
            await asyncio.to_thread(_parse_stored, spec, rows, insurer)
            if len(rows) > THREAD_RECORDS
            else _parse_stored(spec, rows, insurer)
        )
        for pk, record_id, problem in refused:
            await conn.execute(
                "UPDATE kokuhoren_flow_records SET status = 'refused', error_code = $2 "
                "WHERE id = $1",
                pk,
                problem.code,
            )
            refused_json.append({"record_id": record_id} | problem.to_json())
        if good:
            fmn = await next_file_management_number(conn)
            control = FlowControl(1, 0, insurer, month, fmn)
            items = [item for _, item in good]
            content = (
                await asyncio.to_thread(encode_flow_file, spec, control, items)
                if len(good) > THREAD_RECORDS
                else encode_flow_file(spec, control, items)
            )
            placed: list[tuple[int, int, int]] = []
            number = 2
            for pk, item in good:
                lines = len(spec.to_rows(item))
                placed.append((pk, number, number + lines - 1))
                number += lines
            name = f"10_{spec.data_type}{insurer}{month}.csv"
            job_id = await create_job(conn, JOB_TRANSMIT, subject=name, created_by=caller)
            transmission_id = await insert_transmission(
                conn,
                job_id=job_id,
                kind=spec.name,
                data_type=spec.data_type,
                month=month,
                file_name=name,
                fmn=fmn,
                record_count=number - 2,
                content=content,
                caller=caller,
            )
            await conn.executemany(
                "UPDATE kokuhoren_flow_records SET status = 'included', transmission_id = $2, "
                "first_record = $3, last_record = $4 WHERE id = $1",
                [(pk, transmission_id, first, last_) for pk, first, last_ in placed],
            )
    if not good:
        raise NoValidRecordsError(
            "every pending record was refused at generation time", refused_json
        )
    return await start_built_transmission(
        state,
        client,
        transmission_id=transmission_id,
        job_id=job_id,
        fmn=fmn,
        month=month,
        kind=spec.name,
        records=len(good),
        refused=refused_json,
        caller=caller,
    )


async def flow_records_json(
    state: GatewayState, spec: FlowSpec[Any], month: str | None
) -> dict[str, Any]:
    """The records of a flow (optionally of one month) with their status and intake."""
    rows = await state.pool.fetch(
        "SELECT f.record_id, f.month, f.status, f.error_code, f.first_record, f.last_record,"
        " f.intake_status, f.intake_code, t.file_management_number"
        " FROM kokuhoren_flow_records f"
        " LEFT JOIN kokuhoren_transmissions t ON t.id = f.transmission_id"
        " WHERE f.flow = $1 AND ($2::text IS NULL OR f.month = $2) ORDER BY f.id LIMIT 5000",
        spec.name,
        month,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    if spec.name == "special_collection":
        for r in await state.pool.fetch(
            "SELECT f.record_id, c.result_kind, c.result_on, c.amounts, c.fiscal_year"
            " FROM kokuhoren_collection_results c JOIN kokuhoren_flow_records f"
            " ON f.id = c.request_id WHERE f.flow = $1 ORDER BY c.id",
            spec.name,
        ):
            results.setdefault(r["record_id"], []).append(
                {
                    "result_kind": r["result_kind"],
                    "result_on": r["result_on"].isoformat(),
                    "amounts": list(r["amounts"]),
                    "fiscal_year": r["fiscal_year"],
                }
            )
    return {
        "flow": spec.name,
        "records": [
            {
                "record_id": r["record_id"],
                "month": r["month"],
                "status": r["status"],
                "error_code": r["error_code"],
                "file_management_number": r["file_management_number"],
                "records": [r["first_record"], r["last_record"]]
                if r["first_record"] is not None
                else None,
                "intake_status": r["intake_status"],
                "intake_code": r["intake_code"],
                **(
                    {"results": results.get(r["record_id"], [])}
                    if results or spec.name == "special_collection"
                    else {}
                ),
            }
            for r in rows
        ],
    }
