"""The 国保連 simulator: the 伝送 mailbox, intake of 連絡票 files, return files.

A real aiohttp server with its own database. A 保険者 (the gateway's
伝送通信ソフト emulation) authenticates with its bearer token (the simulator
keeps only SHA-256 digests) and signs every upload with its Ed25519 key; the
file inside is sealed for the simulator's X25519 key (see
:mod:`chukan.gateway.kokuhoren.mailbox`). Intake decrypts the file, decodes it leniently
with :func:`~chukan.codecs.kokuhoren.decode_records`, applies 国保連's own
rules (:mod:`chukan.simulators.kokuhoren_rules`), keeps the accepted records in
its register and answers at once with a signed intake result (取込結果).

Uploads are idempotent per ファイル管理番号: the same number with the same
content answers the stored result again (``duplicate: true``); the same number
with other content is refused with 409 ``file_management_number_reused``.

HTTP API
--------
* ``PUT /admin/v1/insurers/{保険者番号}`` (admin token): register a 保険者 —
  ``{"name", "token_sha256", "signing_key": {"key_id", "public"},
  "encryption_key": {"key_id", "public"}}``.
* ``POST /admin/v1/returns`` (admin token): produce the 給付実績 file of a
  month — ``{"insurer_number", "month": "YYYYMM"}``.
* ``GET /mailbox/v1/keys``: the simulator's public keys.
* ``POST /mailbox/v1/files`` (insurer token, signed file envelope): deliver a
  file → 201 (or 200 for a repeat) ``{"duplicate", "intake": {...}}``.
* ``GET /mailbox/v1/files/{ファイル管理番号}`` (insurer token): the intake result again.
* ``GET /mailbox/v1/outbox?month=YYYYMM`` (insurer token): return files waiting.
* ``GET /mailbox/v1/outbox/{ファイル管理番号}`` (insurer token): one return file,
  sealed for the insurer's encryption key.

Every mailbox answer is signed (``Chukan-Signature``) with the simulator's key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from chukan.codecs.kokuhoren import (
    ChangeKind,
    CorrectionKind,
    CsvLimits,
    DataRecord,
    DataType,
    RecipientCorrection,
    YearMonth,
    decode_records,
)
from chukan.codecs.kokuhoren_fields import is_valid_insurer_number
from chukan.codecs.kokuhoren_returns import (
    BENEFIT_DATA_TYPE,
    UNIT_PRICE_YEN,
    BenefitControl,
    BenefitFile,
    BenefitRecord,
    encode_benefit_file,
)
from chukan.gateway.core import db
from chukan.gateway.core.config import token_digest
from chukan.gateway.core.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from chukan.gateway.core.keystore import AgencyKeys, load_or_create_keys
from chukan.gateway.core.tls import peer_identity
from chukan.gateway.core.web import (
    SIGNATURE_HEADER,
    error_middleware,
    read_body,
    read_json,
    require_str,
    signature_header,
    verify_signature,
)
from chukan.gateway.kokuhoren.json_codec import canonical_json, record_to_json
from chukan.gateway.kokuhoren.mailbox import (
    KOKUHOREN_PARTY,
    FileEnvelope,
    IntakeError,
    IntakeResult,
    file_digest,
    open_file,
    seal_file,
)
from chukan.keys import (
    KeysError,
    PublicSigningKey,
    b64d,
    b64e,
    public_encryption_key,
    public_signing_key,
)
from chukan.keys.ca import CertificateError
from chukan.simulators.errors import PeerMismatchError
from chukan.simulators.kokuhoren_rules import Register, Review, key_of, month_end, review_file

log = structlog.get_logger("chukan.kokuhoren")

KOKUHOREN_DATABASE: Final = "chukan_kokuhoren"
DEFAULT_MAX_FILE_BYTES: Final = 16 * 1024 * 1024
#: Files larger than this are decoded off the event loop.
THREAD_THRESHOLD: Final = 256 * 1024
MONTH_PATTERN: Final = re.compile(r"^[0-9]{6}$")
FILE_NUMBER_PATTERN: Final = re.compile(r"^[0-9]{10}$")
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


@dataclass(frozen=True, slots=True)
class KokuhorenConfig:
    """Everything the simulator needs; secrets are hidden from ``repr``."""

    database_url: str
    key_dir: Path
    key_passphrase: bytes
    admin_token: str
    host: str = "127.0.0.1"
    port: int = 0
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: Mailbox calls must present the 保険者's agency client certificate (mutual TLS).
    require_client_certificate: bool = False

    def __repr__(self) -> str:
        return (
            f"KokuhorenConfig(database={self.database_url.rsplit('/', 1)[-1]!r}, port={self.port})"
        )


@dataclass
class KokuhorenState:
    config: KokuhorenConfig
    pool: asyncpg.Pool
    keys: AgencyKeys


KOKUHOREN_STATE: Final = web.AppKey("kokuhoren_state", KokuhorenState)


@dataclass(frozen=True, slots=True)
class Insurer:
    insurer_number: str
    name: str
    signing_keys: dict[str, PublicSigningKey]
    encryption_key_id: str
    encryption_key: bytes


class FileUndecryptableError(BadRequestError):
    """The file is not sealed for the simulator's key, or was altered in transit."""

    code = "file_undecryptable"


class FileNumberReusedError(ConflictError):
    """A ファイル管理番号 already used for a file with other content."""

    code = "file_management_number_reused"


class EnvelopeMisaddressedError(ForbiddenError):
    code = "envelope_misaddressed"


class FileUnknownError(NotFoundError):
    code = "file_unknown"


class InsurerUnknownError(NotFoundError):
    code = "insurer_unknown"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _signed_json(state: KokuhorenState, payload: dict[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={SIGNATURE_HEADER: signature_header(state.keys.signing, body)},
    )


# -- authentication -----------------------------------------------------------------------


def _require_admin(request: web.Request) -> None:
    state = request.config_dict[KOKUHOREN_STATE]
    supplied = request.headers.get("Authorization", "")
    if not supplied:
        raise UnauthenticatedError("an administrator token is required")
    expected = f"Bearer {state.config.admin_token}"
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ForbiddenError("the administrator token is not valid")


class ClientCertificateRequiredError(UnauthenticatedError):
    code = "client_certificate_required"


def _check_peer(
    request: web.Request, config: KokuhorenConfig, insurer: str, agency: str | None
) -> None:
    """With mutual TLS the token alone is not enough: the caller's certificate must be
    the agency the 保険者 was onboarded for."""
    try:
        peer = peer_identity(request)
    except CertificateError:
        peer = None
    if peer is None:
        if config.require_client_certificate:
            log.warning("mailbox_access_refused", code=ClientCertificateRequiredError.code)
            raise ClientCertificateRequiredError("a client certificate is required")
        return
    if peer.kind != "agency" or agency is None or peer.subject_id != agency:
        log.warning("mailbox_access_refused", code=PeerMismatchError.code, insurer=insurer)
        raise PeerMismatchError("the client certificate is not the 保険者's agency")


async def _insurer(request: web.Request) -> Insurer:
    """The 保険者 whose bearer token this is (compared as a SHA-256 digest)."""
    state = request.config_dict[KOKUHOREN_STATE]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not token:
        raise UnauthenticatedError("a 保険者 token is required")
    row = await state.pool.fetchrow(
        "SELECT * FROM insurers WHERE token_sha256 = $1", token_digest(token)
    )
    if row is None:
        log.warning("mailbox_access_refused", code="unauthenticated")
        raise UnauthenticatedError("the token does not belong to a registered 保険者")
    _check_peer(request, state.config, row["insurer_number"], row["agency_code"])
    keys = await state.pool.fetch(
        "SELECT key_id, public_key FROM insurer_keys WHERE insurer_number = $1 AND purpose = 'sig'",
        row["insurer_number"],
    )
    return Insurer(
        insurer_number=row["insurer_number"],
        name=row["name"],
        signing_keys={k["key_id"]: PublicSigningKey(k["key_id"], k["public_key"]) for k in keys},
        encryption_key_id=row["encryption_key_id"],
        encryption_key=row["encryption_key"],
    )


# -- admin ----------------------------------------------------------------------------------


def _insurer_number(value: str) -> str:
    if not is_valid_insurer_number(value):
        raise ValidationError("保険者番号 must be 6 digits with a valid check digit")
    return value


async def register_insurer(request: web.Request) -> web.Response:
    """Onboard a 保険者 (or rotate its token and keys; old keys stay valid)."""
    _require_admin(request)
    state = request.config_dict[KOKUHOREN_STATE]
    number = _insurer_number(request.match_info["insurer_number"])
    data = await read_json(request)
    name = require_str(data, "name", max_length=200)
    token_sha256 = require_str(data, "token_sha256", max_length=64)
    if not re.fullmatch(r"[0-9a-f]{64}", token_sha256):
        raise ValidationError("token_sha256 must be a hex SHA-256 digest")
    agency_code = data.get("agency_code")
    if agency_code is not None and (
        not isinstance(agency_code, str) or not re.fullmatch(r"[0-9]{6}([0-9]{10})?", agency_code)
    ):
        raise ValidationError("agency_code must be 6 or 16 digits")
    sig, enc = data.get("signing_key"), data.get("encryption_key")
    if not isinstance(sig, dict) or not isinstance(enc, dict):
        raise ValidationError("signing_key and encryption_key are required objects")
    signing = public_signing_key(require_str(sig, "key_id"), b64d(require_str(sig, "public")))
    encryption = public_encryption_key(require_str(enc, "key_id"), b64d(require_str(enc, "public")))
    async with state.pool.acquire() as conn, conn.transaction():
        other = await conn.fetchval(
            "SELECT insurer_number FROM insurers WHERE token_sha256 = $1", token_sha256
        )
        if other is not None and other != number:
            raise ConflictError("this token is registered to another 保険者")
        created = await conn.fetchval(
            """INSERT INTO insurers (insurer_number, name, token_sha256, encryption_key_id,
                                     encryption_key, agency_code)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (insurer_number) DO UPDATE SET
                   name = EXCLUDED.name, token_sha256 = EXCLUDED.token_sha256,
                   encryption_key_id = EXCLUDED.encryption_key_id,
                   encryption_key = EXCLUDED.encryption_key,
                   agency_code = EXCLUDED.agency_code, updated_at = now()
               RETURNING (xmax = 0)""",
            number,
            name,
            token_sha256,
            encryption.key_id,
            encryption.raw,
            agency_code,
        )
        for key_id, purpose, raw in (
            (signing.key_id, "sig", signing.raw),
            (encryption.key_id, "enc", encryption.raw),
        ):
            owner = await conn.fetchval(
                "SELECT insurer_number FROM insurer_keys WHERE key_id = $1", key_id
            )
            if owner is not None and owner != number:
                raise ForbiddenError("that key id belongs to another 保険者")
            await conn.execute(
                "INSERT INTO insurer_keys (key_id, insurer_number, purpose, public_key) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
                key_id,
                number,
                purpose,
                raw,
            )
    log.info("kokuhoren_insurer_registered", insurer=number, signing_key=signing.key_id)
    return web.json_response(
        {"insurer_number": number, "registered": True}, status=201 if created else 200
    )


async def public_keys(request: web.Request) -> web.Response:
    state = request.config_dict[KOKUHOREN_STATE]
    return web.json_response(
        {
            "signing_key": {
                "key_id": state.keys.signing.key_id,
                "public": b64e(state.keys.signing.public.raw),
            },
            "encryption_key": {
                "key_id": state.keys.encryption.key_id,
                "public": b64e(state.keys.encryption.public.raw),
            },
        }
    )


async def health(request: web.Request) -> web.Response:
    await request.config_dict[KOKUHOREN_STATE].pool.fetchval("SELECT 1")
    return web.json_response({"status": "ok", "service": "kokuhoren"})


# -- intake ---------------------------------------------------------------------------------


async def receive_file(request: web.Request) -> web.Response:
    """A file put in the mailbox: authenticate, verify, decrypt, review, answer."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await _insurer(request)
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
            return _signed_json(
                state, {"duplicate": True, "intake": json.loads(existing["intake_result"])}
            )
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
    return _signed_json(state, {"duplicate": False, "intake": intake.to_json()}, status=201)


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


def _file_number(request: web.Request) -> str:
    fmn = request.match_info["file_management_number"]
    if not FILE_NUMBER_PATTERN.match(fmn):
        raise ValidationError("ファイル管理番号 must be 10 digits")
    return fmn


async def get_intake(request: web.Request) -> web.Response:
    """The intake result of a file already delivered (for a sender that lost the answer)."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await _insurer(request)
    fmn = _file_number(request)
    row = await state.pool.fetchrow(
        "SELECT intake_result FROM received_files "
        "WHERE insurer_number = $1 AND file_management_number = $2",
        insurer.insurer_number,
        fmn,
    )
    if row is None:
        raise FileUnknownError("no file with this ファイル管理番号 was received from this 保険者")
    return _signed_json(state, {"duplicate": True, "intake": json.loads(row["intake_result"])})


# -- return files (給付実績) -------------------------------------------------------------------


def _month(value: str | None) -> YearMonth:
    if value is None or not MONTH_PATTERN.match(value):
        raise ValidationError("month must be YYYYMM")
    try:
        return YearMonth(int(value[:4]), int(value[4:]))
    except ValueError:
        raise ValidationError("month must be a real month YYYYMM") from None


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
    _require_admin(request)
    state = request.config_dict[KOKUHOREN_STATE]
    data = await read_json(request)
    insurer = _insurer_number(require_str(data, "insurer_number", max_length=6))
    month = _month(require_str(data, "month", max_length=6))
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
    insurer = await _insurer(request)
    month = _month(request.query.get("month"))
    rows = await state.pool.fetch(
        "SELECT * FROM return_files WHERE insurer_number = $1 AND processing_month = $2 "
        "ORDER BY file_management_number",
        insurer.insurer_number,
        str(month),
    )
    return _signed_json(state, {"files": [_return_json(r) for r in rows]})


async def fetch_return(request: web.Request) -> web.Response:
    """One return file, sealed for the insurer's key, in a signed envelope."""
    state = request.config_dict[KOKUHOREN_STATE]
    insurer = await _insurer(request)
    fmn = _file_number(request)
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
    body = envelope.to_bytes()
    log.info("kokuhoren_return_fetched", insurer=insurer.insurer_number, fmn=fmn)
    return web.Response(
        body=body,
        content_type="application/json",
        headers={SIGNATURE_HEADER: signature_header(state.keys.signing, body)},
    )


# -- application ----------------------------------------------------------------------------


def create_kokuhoren_app(config: KokuhorenConfig) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.max_file_bytes * 2 + 65536
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(config.database_url)
        try:
            async with pool.acquire() as conn:
                await db.migrate(
                    conn, db.load_migrations("chukan.simulators", "migrations/kokuhoren")
                )
            keys = await asyncio.to_thread(
                load_or_create_keys, config.key_dir, KOKUHOREN_PARTY, config.key_passphrase
            )
        except BaseException:
            await pool.close()
            raise
        app[KOKUHOREN_STATE] = KokuhorenState(config=config, pool=pool, keys=keys)
        log.info("kokuhoren_started", encryption_key=keys.encryption.key_id)
        yield
        await pool.close()
        log.info("kokuhoren_stopped")

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", health)
    app.router.add_put("/admin/v1/insurers/{insurer_number}", register_insurer)
    app.router.add_post("/admin/v1/returns", produce_returns)
    app.router.add_get("/mailbox/v1/keys", public_keys)
    app.router.add_post("/mailbox/v1/files", receive_file)
    app.router.add_get("/mailbox/v1/files/{file_management_number}", get_intake)
    app.router.add_get("/mailbox/v1/outbox", list_outbox)
    app.router.add_get("/mailbox/v1/outbox/{file_management_number}", fetch_return)
    return app


__all__ = [
    "KOKUHOREN_DATABASE",
    "KOKUHOREN_STATE",
    "KokuhorenConfig",
    "KokuhorenState",
    "create_kokuhoren_app",
]
