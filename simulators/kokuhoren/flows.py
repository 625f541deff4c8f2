"""Intake of 給付管理票 (821), 償還払い実績 (911) and 特別徴収依頼 (951) files; 特別徴収結果 (952).

The file is decoded leniently (:func:`~chukan.codecs.kokuhoren_flows.decode_flow_records`,
bounded), then each item meets 国保連's rules against what the simulator holds
(the recipients its 異動連絡票 intake registered, the items it accepted before):

* every item: 証記載保険者番号 is the sender's (``insurer_mismatch``) and — except a
  特別徴収依頼 — the 被保険者 is an active recipient (``recipient_unknown``);
* 給付管理票: 要介護状態区分 agrees with the register (``care_level_mismatch``); one
  給付管理票 per person and 対象年月 (``duplicate_plan`` for a second 新規, as the
  published 点検 "同一の給付管理票が2件以上ないか"); 修正/取消 need one (``plan_not_found``);
* 償還払い実績: a 整理番号 is registered once (``duplicate_reference``); 修正/取消
  need it (``reference_not_found``);
* 特別徴収依頼: one per person and 賦課年度 (``duplicate_request``).

Accepted items are kept (``accepted_flow_records``); a 修正 replaces, a 取消 cancels.
For accepted 特別徴収依頼 of 対象者, the simulator (playing the 年金保険者 behind
国保連, its 経由機関 role) puts a 特別徴収結果 file in the outbox at once: 各種区分
00 正常 with the requested amounts, or 02 差止 (amounts 0) for a person whose
recipient register row has ended. The intake result counts lines, as for 531.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from chukan.codecs.errors import CsvFileNameError
from chukan.codecs.kokuhoren import CsvLimits, RecordError
from chukan.codecs.kokuhoren_flows import (
    BENEFIT_PLAN,
    COLLECTION_REQUEST,
    COLLECTION_RESULT,
    REIMBURSEMENT,
    BenefitPlan,
    CollectionRequest,
    CollectionRequestKind,
    CollectionResult,
    CollectionResultKind,
    CreationKind,
    FlowControl,
    FlowSpec,
    NumberedItem,
    Reimbursement,
    decode_flow_records,
    encode_flow_file,
    flow_file_name,
    parse_flow_file_name,
)
from chukan.gateway.core import db
from chukan.gateway.kokuhoren.flow_json import canonical_json, record_to_json
from chukan.gateway.kokuhoren.mailbox import FileEnvelope, IntakeError, IntakeResult, file_digest
from chukan.simulators.kokuhoren.state import KokuhorenState, utcnow


def is_flow_file(file_name: str) -> bool:
    """Whether ``file_name`` names a file of one of these flows (not a 531/532 file)."""
    return file_name[3:6] in (
        BENEFIT_PLAN.data_type,
        REIMBURSEMENT.data_type,
        COLLECTION_REQUEST.data_type,
    )


def _error(number: int, field: str | None, code: str, message: str) -> RecordError:
    return RecordError(number, field, code, message)


def _insured(item: Any) -> str:
    return str(item.insured_number)


def _insurer_of(item: Any) -> str | None:
    return getattr(item, "certificate_insurer_number", None)


def _item_key(item: Any) -> str:
    if isinstance(item, BenefitPlan):
        return str(item.target_month)
    if isinstance(item, Reimbursement):
        return item.reference_number
    assert isinstance(item, CollectionRequest)
    return str(item.fiscal_year)


def _creation(item: Any) -> CreationKind:
    return getattr(item, "creation_kind", CreationKind.NEW)


async def _recipients(conn: db.Conn, insurer: str, insured: list[str]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT insured_number, active, care_level FROM recipients "
        "WHERE insurer_number = $1 AND insured_number = ANY($2::text[])",
        insurer,
        insured,
    )
    return {r["insured_number"]: r for r in rows}


async def _existing(
    conn: db.Conn, insurer: str, data_type: str, insured: list[str]
) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT insured_number, item_key FROM accepted_flow_records "
        "WHERE insurer_number = $1 AND data_type = $2 AND NOT cancelled "
        "AND insured_number = ANY($3::text[])",
        insurer,
        data_type,
        insured,
    )
    return {(r["insured_number"], r["item_key"]) for r in rows}


def _review_item(
    spec: FlowSpec[Any],
    numbered: NumberedItem[Any],
    insurer: str,
    recipients: dict[str, Any],
    existing: set[tuple[str, str]],
) -> RecordError | None:
    item, number = numbered.item, numbered.first_record
    named = _insurer_of(item)
    if named is not None and named != insurer:
        return _error(number, "証記載保険者番号", "insurer_mismatch", "not the sender's 保険者番号")
    recipient = recipients.get(_insured(item))
    if spec is not COLLECTION_REQUEST and (recipient is None or not recipient["active"]):
        return _error(number, "被保険者番号", "recipient_unknown", "not an active recipient")
    key = (_insured(item), _item_key(item))
    creation = _creation(item)
    if isinstance(item, BenefitPlan):
        assert recipient is not None
        if recipient["care_level"] != item.care_level.value:
            return _error(
                number,
                "要介護状態区分コード",
                "care_level_mismatch",
                "differs from the recipient register",
            )
        if creation is CreationKind.NEW and key in existing:
            return _error(
                number, "対象年月", "duplicate_plan", "a 給付管理票 of this person and month exists"
            )
        if creation is not CreationKind.NEW and key not in existing:
            return _error(
                number, "給付管理票情報作成区分コード", "plan_not_found", "no 給付管理票 to change"
            )
    elif isinstance(item, Reimbursement):
        if creation is CreationKind.NEW and key in existing:
            return _error(number, "整理番号", "duplicate_reference", "整理番号 is registered")
        if creation is not CreationKind.NEW and key not in existing:
            return _error(number, "整理番号", "reference_not_found", "no 実績 with this 整理番号")
    elif key in existing:
        return _error(
            number, "賦課年度", "duplicate_request", "a 依頼 of this person and 賦課年度 exists"
        )
    return None


async def flow_intake(
    conn: db.Conn, state: KokuhorenState, insurer: str, envelope: FileEnvelope, content: bytes
) -> IntakeResult:
    """Decode, review, keep what is accepted, answer the intake result (and 952 results)."""
    errors: list[RecordError] = []
    try:
        spec, named_insurer, named_month = parse_flow_file_name(envelope.file_name)
    except CsvFileNameError as exc:
        return await _store(
            conn,
            insurer,
            envelope,
            content,
            None,
            None,
            0,
            [],
            [RecordError(None, None, exc.code, exc.message)],
        )
    limits = CsvLimits(max_bytes=state.config.max_file_bytes)
    decoded = decode_flow_records(spec, content, limits)
    control = decoded.control
    errors.extend(decoded.errors)
    whole_file = [e for e in decoded.errors if e.record_number is None or e.record_number == 1]
    if control is not None:
        if control.insurer_number != insurer:
            whole_file.append(
                _error(1, "保険者番号", "insurer_mismatch", "保険者番号 is not the sender's")
            )
        if named_insurer != control.insurer_number or named_month != control.processing_month:
            whole_file.append(
                RecordError(
                    None, None, "csv_file_name", "file name does not match the control record"
                )
            )
        errors.extend(e for e in whole_file if e not in errors)
    if control is None or whole_file:
        return await _store(
            conn, insurer, envelope, content, spec, control, decoded.record_count, [], errors
        )
    insured = sorted({_insured(i.item) for i in decoded.items})
    recipients = await _recipients(conn, insurer, insured)
    existing = await _existing(conn, insurer, spec.data_type, insured)
    accepted: list[NumberedItem[Any]] = []
    for numbered in decoded.items:
        error = _review_item(spec, numbered, insurer, recipients, existing)
        if error is not None:
            errors.append(error)
            continue
        key = (_insured(numbered.item), _item_key(numbered.item))
        if _creation(numbered.item) is CreationKind.NEW:
            existing.add(key)
        elif _creation(numbered.item) is CreationKind.CANCEL:
            existing.discard(key)
        accepted.append(numbered)
    intake = await _store(
        conn, insurer, envelope, content, spec, control, decoded.record_count, accepted, errors
    )
    if spec is COLLECTION_REQUEST and accepted:
        await _produce_results(conn, insurer, control, envelope, accepted, recipients)
    return intake


async def _store(
    conn: db.Conn,
    insurer: str,
    envelope: FileEnvelope,
    content: bytes,
    spec: FlowSpec[Any] | None,
    control: FlowControl | None,
    record_count: int,
    accepted: list[NumberedItem[Any]],
    errors: list[RecordError],
) -> IntakeResult:
    accepted_lines = sum(i.last_record - i.first_record + 1 for i in accepted)
    rejected = record_count - accepted_lines
    status = "accepted" if not errors else "rejected" if not accepted else "partially_accepted"
    intake = IntakeResult(
        file_management_number=envelope.file_management_number,
        file_name=envelope.file_name,
        status=status,
        record_count=record_count,
        accepted=accepted_lines,
        rejected=rejected,
        errors=tuple(
            IntakeError(e.record_number, e.field, e.code, e.message)
            for e in sorted(errors, key=lambda e: (e.record_number or 0, e.field or ""))
        ),
        received_at=utcnow().isoformat(),
    )
    month = str(control.processing_month) if control is not None else None
    file_id = await conn.fetchval(
        """INSERT INTO received_files (insurer_number, file_management_number, file_name,
               data_type, processing_month, digest, content, status, intake_result)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id""",
        insurer,
        envelope.file_management_number,
        envelope.file_name,
        spec.data_type if spec is not None else None,
        month,
        envelope.digest,
        content,
        status,
        json.dumps(intake.to_json(), ensure_ascii=False),
    )
    assert spec is not None or not accepted
    for numbered in accepted:
        assert spec is not None
        assert month is not None
        item = numbered.item
        key = _item_key(item)
        creation = _creation(item)
        if creation is not CreationKind.NEW:
            await conn.execute(
                "UPDATE accepted_flow_records SET cancelled = true WHERE insurer_number = $1 "
                "AND data_type = $2 AND insured_number = $3 AND item_key = $4 AND NOT cancelled",
                insurer,
                spec.data_type,
                _insured(item),
                key,
            )
        await conn.execute(
            """INSERT INTO accepted_flow_records (insurer_number, file_id, first_record,
                   data_type, processing_month, insured_number, item_key, creation_kind,
                   cancelled, record)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)""",
            insurer,
            file_id,
            numbered.first_record,
            spec.data_type,
            month,
            _insured(item),
            key,
            creation.value,
            creation is CreationKind.CANCEL,
            canonical_json(record_to_json(item)),
        )
    return intake


async def _produce_results(
    conn: db.Conn,
    insurer: str,
    control: FlowControl,
    envelope: FileEnvelope,
    accepted: list[NumberedItem[Any]],
    recipients: dict[str, Any],
) -> None:
    """A 特別徴収結果 file answering the accepted 依頼 of 対象者, in the outbox."""
    results: list[CollectionResult] = []
    for numbered in accepted:
        request = numbered.item
        assert isinstance(request, CollectionRequest)
        if request.request_kind is CollectionRequestKind.NOT_TARGET:
            continue
        recipient = recipients.get(request.insured_number)
        stopped = recipient is not None and not recipient["active"]
        amounts = (0, 0, 0) if stopped else (request.amount_1, request.amount_2, request.amount_3)
        results.append(
            CollectionResult(
                obligor_code=request.obligor_code,
                result_kind=CollectionResultKind.STOPPED
                if stopped
                else CollectionResultKind.NORMAL,
                pension_number=request.pension_number,
                pension_code=request.pension_code,
                insured_number=request.insured_number,
                fiscal_year=request.fiscal_year,
                result_on=dt.date(request.start_month.year, request.start_month.month, 1),
                amount_1=amounts[0],
                amount_2=amounts[1],
                amount_3=amounts[2],
                request_file_management_number=envelope.file_management_number,
                request_record_number=numbered.first_record,
            )
        )
    if not results:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('kokuhoren-outbox:' || $1))", insurer)
    last = await conn.fetchval(
        "SELECT max(file_management_number) FROM return_files WHERE insurer_number = $1", insurer
    )
    fmn = f"{int(last or 0) + 1:010d}"
    month = control.processing_month
    file_content = encode_flow_file(
        COLLECTION_RESULT, FlowControl(1, 0, insurer, month, fmn), results
    )
    source = await conn.fetchval(
        "SELECT id FROM received_files WHERE insurer_number = $1 AND file_management_number = $2",
        insurer,
        envelope.file_management_number,
    )
    await conn.execute(
        """INSERT INTO return_files (insurer_number, data_type, processing_month, file_name,
               file_management_number, record_count, content, digest, source_file_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        insurer,
        COLLECTION_RESULT.data_type,
        str(month),
        flow_file_name(COLLECTION_RESULT, insurer, month),
        fmn,
        len(results),
        file_content,
        file_digest(file_content),
        source,
    )
