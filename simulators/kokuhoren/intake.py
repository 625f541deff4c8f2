"""Intake of 連絡票 files put in the 伝送 mailbox, and their intake results (取込結果).

A 保険者 (the gateway's 伝送通信ソフト emulation) signs every upload with its
Ed25519 key; the file inside is sealed for the simulator's X25519 key (see
:mod:`chukan.gateway.kokuhoren.mailbox`).  Intake decrypts the file, decodes it
leniently with :func:`~chukan.codecs.kokuhoren.decode_records`, applies
国保連's own rules (:mod:`chukan.simulators.kokuhoren.rules`), keeps the
accepted records in its register and answers at once with a signed intake result.

Uploads are idempotent per ファイル管理番号: the same number with the same
content answers the stored result again (``duplicate: true``); the same number
with other content is refused with 409 ``file_management_number_reused``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

import structlog
from aiohttp import web

from chukan.codecs.kokuhoren import (
    ChangeKind,
    CorrectionKind,
    CsvLimits,
    DataRecord,
    DataType,
    RecipientCorrection,
    decode_records,
)
from chukan.gateway.core import db
from chukan.gateway.core.web import SIGNATURE_HEADER, read_body, verify_signature
from chukan.gateway.kokuhoren.json_codec import canonical_json, record_to_json
from chukan.gateway.kokuhoren.mailbox import (
    KOKUHOREN_PARTY,
    FileEnvelope,
    IntakeError,
    IntakeResult,
    open_file,
)
from chukan.keys import KeysError
from chukan.simulators.errors import (
    EnvelopeMisaddressedError,
    FileNumberReusedError,
    FileUndecryptableError,
    FileUnknownError,
)
from chukan.simulators.kokuhoren.auth import authenticate_insurer
from chukan.simulators.kokuhoren.flows import flow_intake, is_flow_file
from chukan.simulators.kokuhoren.params import file_number
from chukan.simulators.kokuhoren.rules import Register, Review, key_of, review_file
from chukan.simulators.kokuhoren.state import (
    KOKUHOREN_STATE,
    KokuhorenState,
    signed_json,
    utcnow,
)

log = structlog.get_logger("chukan.kokuhoren")

#: Files larger than this are decoded off the event loop.
THREAD_THRESHOLD: Final = 256 * 1024


async def receive_file(request: web.Request) -> web.Response:
    """A file put in the mailbox: authenticate, verify, decrypt, review, answer."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await authenticate_insurer(request)
    raw = await read_body(request, limit=state.config.max_file_bytes * 2)
    verify_signature(request.headers.get(SIGNATURE_HEADER), raw, insurer.signing_keys)
    envelope = FileEnvelope.from_bytes(raw)
    if envelope.sender != insurer.insurer_number or envelope.receiver != KOKUHOREN_PARTY:
        raise EnvelopeMisaddressedError("the envelope must be from this 保険者 to 国保連")
    keys = {state.keys.encryption.key_id: state.keys.encryption}
    try:
        content = open_file(keys, envelope)
    except KeysError:
        raise FileUndecryptableError(
            "the file cannot be opened with the mailbox key (wrong key or altered)"
        ) from None
    fmn = envelope.file_management_number
    async with state.pool.acquire() as conn, conn.transaction():
        # One intake at a time per 保険者: the register and the numbers stay consistent.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('kokuhoren-intake:' || $1))",
            insurer.insurer_number,
        )
        existing = await conn.fetchrow(
            "SELECT digest, intake_result FROM received_files "
            "WHERE insurer_number = $1 AND file_management_number = $2",
            insurer.insurer_number,
            fmn,
        )
        if existing is not None:
            if existing["digest"] != envelope.digest:
                log.warning("kokuhoren_file_conflict", insurer=insurer.insurer_number, fmn=fmn)
                raise FileNumberReusedError(
                    "this ファイル管理番号 was already used for a file with other content"
                )
            log.info("kokuhoren_file_duplicate", insurer=insurer.insurer_number, fmn=fmn)
            return signed_json(
                state, {"duplicate": True, "intake": json.loads(existing["intake_result"])}
            )
        if is_flow_file(envelope.file_name):
            intake = await flow_intake(conn, state, insurer.insurer_number, envelope, content)
        else:
            intake = await _intake(conn, state, insurer.insurer_number, envelope, content)
    log.info(
        "kokuhoren_file_received",
        insurer=insurer.insurer_number,
        fmn=fmn,
        status=intake.status,
        records=intake.record_count,
        accepted=intake.accepted,
        rejected=intake.rejected,
        error_codes=sorted({e.code for e in intake.errors}),
    )
    return signed_json(state, {"duplicate": False, "intake": intake.to_json()}, status=201)


async def _load_register(
    conn: db.Conn, insurer: str, data_type: str, month: str, insured: list[str]
) -> Register:
    register = Register()
    rows = await conn.fetch(
        "SELECT insured_number, changed_on, change_kind FROM accepted_records "
        "WHERE insurer_number = $1 AND data_type = '531' AND NOT deleted "
        "AND insured_number = ANY($2::text[])",
        insurer,
        insured,
    )
    for row in rows:
        history = register.changes.setdefault(row["insured_number"], {})
        history[row["changed_on"]] = ChangeKind(row["change_kind"])
    rows = await conn.fetch(
        "SELECT insured_number, changed_on FROM accepted_records "
        "WHERE insurer_number = $1 AND data_type = $2 AND processing_month = $3 "
        "AND insured_number = ANY($4::text[])",
        insurer,
        data_type,
        month,
        insured,
    )
    register.month_keys.update((r["insured_number"], r["changed_on"]) for r in rows)
    return register


async def _intake(
    conn: db.Conn, state: KokuhorenState, insurer: str, envelope: FileEnvelope, content: bytes
) -> IntakeResult:
    limits = CsvLimits(max_bytes=state.config.max_file_bytes)
    if len(content) > THREAD_THRESHOLD:
        decoded = await asyncio.to_thread(decode_records, content, limits)
    else:
        decoded = decode_records(content, limits)
    control = decoded.control
    data_type = control.data_type.value if control is not None else None
    month = str(control.processing_month) if control is not None else None
    insured = sorted({key_of(item.record)[0] for item in decoded.records})
    register = (
        await _load_register(conn, insurer, data_type, month, insured)
        if data_type is not None and month is not None
        else Register()
    )
    review = review_file(decoded, sender=insurer, file_name=envelope.file_name, register=register)
    intake = IntakeResult(
        file_management_number=envelope.file_management_number,
        file_name=envelope.file_name,
        status=review.status,
        record_count=review.record_count,
        accepted=len(review.accepted),
        rejected=review.rejected,
        errors=tuple(
            IntakeError(e.record_number, e.field, e.code, e.message) for e in review.errors
        ),
        received_at=utcnow().isoformat(),
    )
    file_id = await conn.fetchval(
        """INSERT INTO received_files (insurer_number, file_management_number, file_name,
               data_type, processing_month, digest, content, status, intake_result)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id""",
        insurer,
        envelope.file_management_number,
        envelope.file_name,
        data_type,
        month,
        envelope.digest,
        content,
        review.status,
        json.dumps(intake.to_json(), ensure_ascii=False),
    )
    if review.accepted and data_type is not None and month is not None:
        await _apply_review(conn, insurer, file_id, data_type, month, review)
    return intake


async def _apply_review(
    conn: db.Conn, insurer: str, file_id: int, data_type: str, month: str, review: Review
) -> None:
    """Store accepted records, apply corrections, rebuild the touched register rows."""
    insert = """INSERT INTO accepted_records (insurer_number, file_id, record_number, data_type,
                    processing_month, insured_number, changed_on, change_kind, record)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id"""
    rows = []
    for item in review.accepted:
        change = item.record.change if isinstance(item.record, RecipientCorrection) else item.record
        rows.append(
            (
                insurer,
                file_id,
                item.record_number,
                data_type,
                month,
                change.insured_number,
                change.changed_on,
                change.change_kind.value,
                canonical_json(record_to_json(item.record)),
            )
        )
    if data_type == DataType.CHANGE.value:  # 異動 only add rows: one batch
        await conn.executemany(insert.replace(" RETURNING id", ""), rows)
    for item, row in zip(review.accepted, rows, strict=True):
        record: DataRecord = item.record
        if not isinstance(record, RecipientCorrection):
            continue
        record_id = await conn.fetchval(insert, *row)
        delete = record.correction_kind is CorrectionKind.DELETE
        await conn.execute(
            """UPDATE accepted_records SET
                   deleted = $5,
                   record = CASE WHEN $5 THEN record ELSE $6::jsonb END,
                   change_kind = CASE WHEN $5 THEN change_kind ELSE $7 END,
                   corrected_by = $4
               WHERE insurer_number = $1 AND insured_number = $2 AND changed_on = $3
                 AND data_type = '531' AND NOT deleted""",
            insurer,
            record.change.insured_number,
            record.change.changed_on,
            record_id,
            delete,
            canonical_json(record_to_json(record.change)),
            record.change.change_kind.value,
        )
    touched = {key_of(item.record)[0] for item in review.accepted}
    await conn.execute(
        "DELETE FROM recipients WHERE insurer_number = $1 AND insured_number = ANY($2::text[])",
        insurer,
        sorted(touched),
    )
    await conn.execute(
        """INSERT INTO recipients (insurer_number, insured_number, active, last_changed_on,
               care_level, burden_ratio, benefit_limit, certification_start, certification_end,
               record)
           SELECT DISTINCT ON (insured_number) insurer_number, insured_number,
                  change_kind <> '3', changed_on, record->>'care_level', record->>'burden_ratio',
                  (record->>'benefit_limit')::integer, (record->>'certification_start')::date,
                  (record->>'certification_end')::date, record
           FROM accepted_records
           WHERE insurer_number = $1 AND insured_number = ANY($2::text[])
             AND data_type = '531' AND NOT deleted
           ORDER BY insured_number, changed_on DESC, id DESC""",
        insurer,
        sorted(touched),
    )


async def get_intake(request: web.Request) -> web.Response:
    """The intake result of a file already delivered (for a sender that lost the answer)."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await authenticate_insurer(request)
    fmn = file_number(request)
    row = await state.pool.fetchrow(
        "SELECT intake_result FROM received_files "
        "WHERE insurer_number = $1 AND file_management_number = $2",
        insurer.insurer_number,
        fmn,
    )
    if row is None:
        raise FileUnknownError("no file with this ファイル管理番号 was received from this 保険者")
    return signed_json(state, {"duplicate": True, "intake": json.loads(row["intake_result"])})
