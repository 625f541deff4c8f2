"""Return files (給付実績): produced once per 保険者 and month, fetched sealed from the outbox.

The simulator has no real 審査: it makes deterministic synthetic 給付実績 for
the recipients certified in the month, so that the gateway's import can be
exercised end to end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.kokuhoren import YearMonth
from chukan.codecs.kokuhoren_returns import (
    BENEFIT_DATA_TYPE,
    UNIT_PRICE_YEN,
    BenefitControl,
    BenefitFile,
    BenefitRecord,
    encode_benefit_file,
)
from chukan.gateway.core.web import read_json, require_str
from chukan.gateway.kokuhoren.mailbox import KOKUHOREN_PARTY, file_digest, seal_file
from chukan.keys import public_encryption_key
from chukan.simulators.errors import FileUnknownError, InsurerUnknownError
from chukan.simulators.kokuhoren.auth import authenticate_insurer, require_admin
from chukan.simulators.kokuhoren.params import file_number, insurer_number, processing_month
from chukan.simulators.kokuhoren.rules import month_end
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE, signed_json, signed_response

log = structlog.get_logger("chukan.kokuhoren")

#: 区分支給限度基準額 (単位/month) by 要介護状態区分, used when a record names none.
DEFAULT_LIMITS: Final = {
    "12": 5032,
    "13": 10531,
    "21": 16765,
    "22": 19705,
    "23": 27048,
    "24": 30938,
    "25": 36217,
}
#: サービス種類コード: 訪問介護, 訪問看護, 通所介護, 福祉用具貸与, 居宅介護支援.
SERVICE_TYPES: Final = ("11", "13", "15", "17", "43")


def _hash_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


def benefit_records(rows: list[asyncpg.Record], month: YearMonth) -> list[BenefitRecord]:
    """Deterministic synthetic 給付実績 for the certified recipients of a month."""
    records: list[BenefitRecord] = []
    for row in rows:
        insured = row["insured_number"]
        limit = row["benefit_limit"] or DEFAULT_LIMITS.get(row["care_level"], 0)
        if limit <= 0:
            continue
        seed = _hash_int(insured, str(month))
        units = limit * (40 + seed % 51) // 100  # 40-90 % of the limit
        ratio = int(row["burden_ratio"])
        records.append(
            BenefitRecord(
                service_month=month,
                insured_number=insured,
                provider_number=f"12{seed % 10**8:08d}",
                service_type=SERVICE_TYPES[seed % len(SERVICE_TYPES)],
                units=units,
                benefit_amount=units * (10 - ratio) * UNIT_PRICE_YEN // 10,
                copayment=units * ratio * UNIT_PRICE_YEN // 10,
            )
        )
    return records


async def produce_returns(request: web.Request) -> web.Response:
    """Produce (once) the 給付実績 file of a month for one 保険者, after 審査."""
    require_admin(request)
    state = request.config_dict[KOKUHOREN_STATE]
    data = await read_json(request)
    insurer = insurer_number(require_str(data, "insurer_number", max_length=6))
    month = processing_month(require_str(data, "month", max_length=6))
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('kokuhoren-outbox:' || $1))", insurer
        )
        if await conn.fetchval("SELECT 1 FROM insurers WHERE insurer_number = $1", insurer) is None:
            raise InsurerUnknownError("no 保険者 with this number is registered")
        existing = await conn.fetchrow(
            "SELECT * FROM return_files WHERE insurer_number = $1 AND data_type = $2 "
            "AND processing_month = $3",
            insurer,
            BENEFIT_DATA_TYPE,
            str(month),
        )
        if existing is not None:
            return web.json_response(_return_json(existing))
        first_day = dt.date(month.year, month.month, 1)
        rows = await conn.fetch(
            """SELECT insured_number, care_level, burden_ratio, benefit_limit FROM recipients
               WHERE insurer_number = $1 AND active AND care_level IN
                     ('12', '13', '21', '22', '23', '24', '25')
                 AND certification_start <= $2 AND certification_end >= $3
               ORDER BY insured_number""",
            insurer,
            month_end(month),
            first_day,
        )
        last = await conn.fetchval(
            "SELECT max(file_management_number) FROM return_files WHERE insurer_number = $1",
            insurer,
        )
        fmn = f"{int(last or 0) + 1:010d}"
        file = BenefitFile.build(
            BenefitControl(1, 0, insurer, month, fmn), benefit_records(rows, month)
        )
        content = encode_benefit_file(file)
        row = await conn.fetchrow(
            """INSERT INTO return_files (insurer_number, data_type, processing_month, file_name,
                   file_management_number, record_count, content, digest)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
            insurer,
            BENEFIT_DATA_TYPE,
            str(month),
            file.file_name,
            fmn,
            len(file.records),
            content,
            file_digest(content),
        )
        assert row is not None
    log.info(
        "kokuhoren_return_produced",
        insurer=insurer,
        month=str(month),
        fmn=fmn,
        records=len(file.records),
    )
    return web.json_response(_return_json(row), status=201)


def _return_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "file_name": row["file_name"],
        "file_management_number": row["file_management_number"],
        "data_type": row["data_type"],
        "processing_month": row["processing_month"],
        "record_count": row["record_count"],
        "digest": row["digest"],
    }


async def list_outbox(request: web.Request) -> web.Response:
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await authenticate_insurer(request)
    month = processing_month(request.query.get("month"))
    rows = await state.pool.fetch(
        "SELECT * FROM return_files WHERE insurer_number = $1 AND processing_month = $2 "
        "ORDER BY file_management_number",
        insurer.insurer_number,
        str(month),
    )
    return signed_json(state, {"files": [_return_json(r) for r in rows]})


async def fetch_return(request: web.Request) -> web.Response:
    """One return file, sealed for the insurer's key, in a signed envelope."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await authenticate_insurer(request)
    fmn = file_number(request)
    row = await state.pool.fetchrow(
        "UPDATE return_files SET fetched_at = COALESCE(fetched_at, now()) "
        "WHERE insurer_number = $1 AND file_management_number = $2 RETURNING *",
        insurer.insurer_number,
        fmn,
    )
    if row is None:
        raise FileUnknownError("no return file with this ファイル管理番号 for this 保険者")
    envelope = seal_file(
        public_encryption_key(insurer.encryption_key_id, insurer.encryption_key),
        row["content"],
        sender=KOKUHOREN_PARTY,
        receiver=insurer.insurer_number,
        file_management_number=fmn,
        file_name=row["file_name"],
    )
    log.info("kokuhoren_return_fetched", insurer=insurer.insurer_number, fmn=fmn)
    return signed_response(state, envelope.to_bytes())
