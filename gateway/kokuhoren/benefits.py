"""Files 国保連 returns: 給付実績 into the 副本's 0300 item, 特別徴収結果 onto their requests.

給付実績 (861) feed the 副本's 0300 給付 item ("国保連合会からの現物給付実績を受け取り、
給付実績を管理する"): for each person of the file whose 被保険者番号 the 副本 knows (an
item of that person in force carries it) and who is registered, a new version of the
0300 item is registered — the person's current 0300 records with the file's records
merged in (one per サービス提供年月, サービス種類 and 事業所; the file's win). It goes
through the replica registration path (``apply_registration``, one
IF_DBM_20113_R01 message per file, MSGID ``kokuhoren-861-{ファイル管理番号}``), so
versions, history and provisions are the replica's own. The message is applied in
the transaction that marks the file applied: a crash before the commit leaves both
undone, and the next ingest applies it again; after the commit it is never redone.
Persons the 副本 does not know are counted (``replica_unmatched``), never guessed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
from collections import defaultdict
from typing import Any, Final

import asyncpg
import structlog

from chukan.codecs import item_model as m
from chukan.codecs.catalog import BENEFIT, INSURED_QUALIFICATION
from chukan.codecs.items import decode_item
from chukan.codecs.kokuhoren_flows import COLLECTION_RESULT, decode_flow_file, parse_flow_file_name
from chukan.codecs.registration import (
    MessageHeader,
    MessageMode,
    RegistrationEntry,
    Segment,
    encode_registration_parts,
)
from chukan.gateway.core import db
from chukan.gateway.core.state import GatewayState
from chukan.gateway.kokuhoren.errors import ReturnFileInvalidError
from chukan.gateway.kokuhoren.mailbox import FileEnvelope
from chukan.gateway.kokuhoren.returns import THREAD_THRESHOLD, check_listing
from chukan.gateway.replica.items import today_jst
from chukan.gateway.replica.registration import RegistrationSource, apply_registration

log = structlog.get_logger("chukan.kokuhoren")

#: Who the replica records as having stored the versions.
STORED_BY: Final = "kokuhoren-returns"
SOURCE_SYSTEM: Final = "KOKUHOREN"
#: Items whose content names the person's 被保険者番号 (canonical XML, see codecs.items).
PERSON_ITEMS: Final = (INSURED_QUALIFICATION.code, BENEFIT.code)

#: 宛名番号 of registered persons by the 被保険者番号 their current items carry.
_ATENA_SQL: Final = """
    SELECT DISTINCT ON (n.insured) n.insured, r.atena_id
    FROM unnest($1::text[]) AS n(insured)
    JOIN replica_items r
      ON r.item_code = ANY($2::text[]) AND NOT r.deleted
     AND position(convert_to('>' || n.insured || '</k:InsuredNumber>', 'UTF8') IN r.content) > 0
    JOIN persons p ON p.atena_id = r.atena_id
    ORDER BY n.insured, r.valid_from DESC, r.version DESC, r.id DESC"""

_LATEST_SQL: Final = """
    SELECT content, deleted FROM replica_items
    WHERE atena_id = $1 AND item_code = $2 AND record_key = '1'
    ORDER BY valid_from DESC, version DESC LIMIT 1"""


def _benefit_record(row: asyncpg.Record, today: dt.date) -> m.BenefitRecord:
    month = row["service_month"]
    return m.BenefitRecord(
        updated=today,
        service_month=m.YearMonth(int(month[:4]), int(month[4:])),
        service_type=m.ServiceTypeCode(row["service_type"]),
        provider_number=m.ProviderNumber(row["provider_number"]),
        units=m.Units(row["units"]),
        benefit_amount=m.Yen(row["benefit_amount"]),
        user_burden=m.Yen(row["copayment"]),
    )


def _key(record: m.BenefitRecord) -> tuple[Any, ...]:
    provider = record.provider_number if not isinstance(record.provider_number, m.Nil) else ""
    return (record.service_month, record.service_type, provider)


def merged_benefit(
    current: m.Benefit | None, insured: str, insurer: str, new: list[m.BenefitRecord]
) -> m.Benefit:
    """The person's 0300 item with ``new`` records merged in (they replace equal keys)."""
    records = {_key(r): r for r in (current.benefit_records if current else ())}
    records.update({_key(r): r for r in new})
    ordered = tuple(records[k] for k in sorted(records, key=lambda k: (k[0], k[1], str(k[2]))))
    return m.Benefit(m.InsuredNumber(insured), m.InsurerNumber(insurer), ordered)


async def _apply_file(
    state: GatewayState, conn: db.Conn, file_id: int, fmn: str, insurer: str
) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT * FROM kokuhoren_benefit_records WHERE return_file_id = $1 ORDER BY record_number",
        file_id,
    )
    by_person: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        by_person[row["insured_number"]].append(row)
    found = await conn.fetch(_ATENA_SQL, list(by_person), list(PERSON_ITEMS))
    atena = {r["insured"]: r["atena_id"] for r in found}
    today = today_jst()
    entries: list[RegistrationEntry] = []
    for seq, (insured, records) in enumerate(by_person.items(), start=1):
        atena_id = atena.get(insured)
        if atena_id is None:
            continue
        latest = await conn.fetchrow(_LATEST_SQL, atena_id, BENEFIT.code)
        current = None
        if latest is not None and not latest["deleted"]:
            decoded = decode_item(BENEFIT.code, latest["content"])
            assert isinstance(decoded, m.Benefit)
            current = decoded
        item = merged_benefit(
            current, insured, insurer, [_benefit_record(r, today) for r in records]
        )
        entries.append(
            RegistrationEntry(
                record_id=f"K861{fmn}{seq:06d}",
                segment=Segment.REGISTRATION,
                integrated_address_number=atena_id,
                item_code=BENEFIT.code,
                data_set_record_key="1",
                major_version=1,
                publication_date=today,
                item=item,
            )
        )
    counts = {
        "replica_persons": len(entries),
        "replica_unmatched": len(by_person) - len(entries),
    }
    if not entries:
        return counts
    header = MessageHeader(
        message_id=f"kokuhoren-861-{fmn}",
        mode=MessageMode.PRODUCTION,
        source_system_id=SOURCE_SYSTEM,
        destination_system_id="CHUKAN",
    )
    body = encode_registration_parts(header, entries)
    async with RegistrationSource(io.BytesIO(body)) as source:
        outcome = await apply_registration(
            conn,
            source,
            body_sha256=hashlib.sha256(body).hexdigest(),
            stored_by=STORED_BY,
        )
    counts["replica_rejected"] = len(outcome.rejected)
    if outcome.status != 201:
        log.warning(
            "kokuhoren_benefits_not_registered",
            fmn=fmn,
            outcome=outcome.outcome,
            codes=sorted({r["code"] for r in outcome.rejected}),
        )
    return counts


async def apply_pending_benefits(state: GatewayState) -> dict[str, int]:
    """Register 0300 versions for every 給付実績 file not yet applied (idempotent)."""
    totals = {"replica_persons": 0, "replica_unmatched": 0}
    insurer = state.config.insurer_number
    if insurer is None:
        return totals
    pending = await state.pool.fetch(
        "SELECT id, file_management_number FROM kokuhoren_return_files "
        "WHERE data_type = '861' AND replica_applied_at IS NULL ORDER BY id"
    )
    for file in pending:
        async with state.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                "SELECT id FROM kokuhoren_return_files WHERE id = $1 "
                "AND replica_applied_at IS NULL FOR UPDATE",
                file["id"],
            )
            if claimed is None:  # another process applied it meanwhile
                continue
            counts = await _apply_file(
                state, conn, file["id"], file["file_management_number"], insurer
            )
            await conn.execute(
                "UPDATE kokuhoren_return_files SET replica_applied_at = now(), "
                "replica_result = $2::jsonb WHERE id = $1",
                file["id"],
                json.dumps(counts),
            )
        for name in totals:
            totals[name] += counts.get(name, 0)
        log.info("kokuhoren_benefits_registered", fmn=file["file_management_number"], **counts)
    return totals


async def store_collection_file(
    state: GatewayState, job_id: int, month: str, envelope: FileEnvelope, content: bytes
) -> int:
    """Store a 特別徴収結果 file and tie each result to the request it answers."""
    spec, insurer, name_month = parse_flow_file_name(envelope.file_name)
    if spec is not COLLECTION_RESULT:
        raise ReturnFileInvalidError("the return file is not a 特別徴収結果 file")
    if len(content) > THREAD_THRESHOLD:
        file = await asyncio.to_thread(decode_flow_file, COLLECTION_RESULT, content)
    else:
        file = decode_flow_file(COLLECTION_RESULT, content)
    check_listing(state.config.insurer_number, month, envelope, (insurer, name_month), file.control)
    async with state.pool.acquire() as conn, conn.transaction():
        file_id = await conn.fetchval(
            """INSERT INTO kokuhoren_return_files (job_id, data_type, processing_month,
                   file_name, file_management_number, record_count, content, digest)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (tenant, file_management_number) DO NOTHING RETURNING id""",
            job_id,
            COLLECTION_RESULT.data_type,
            month,
            envelope.file_name,
            envelope.file_management_number,
            len(file.items),
            content,
            envelope.digest,
        )
        if file_id is None:
            return 0
        await conn.executemany(
            """INSERT INTO kokuhoren_collection_results (return_file_id, record_number,
                   request_id, insured_number, fiscal_year, result_kind, result_on, amounts)
               SELECT $1, $2,
                      (SELECT f.id FROM kokuhoren_flow_records f
                       JOIN kokuhoren_transmissions t ON t.id = f.transmission_id
                       WHERE t.file_management_number = $3 AND f.flow = 'special_collection'
                         AND f.first_record = $4),
                      $5, $6, $7, $8, $9""",
            [
                (
                    file_id,
                    number,
                    r.request_file_management_number,
                    r.request_record_number,
                    r.insured_number,
                    r.fiscal_year,
                    r.result_kind.value,
                    r.result_on,
                    [r.amount_1, r.amount_2, r.amount_3],
                )
                for number, r in enumerate(file.items, start=2)
            ],
        )
    return len(file.items)
