"""伝送通信ソフト emulation: delivering files to the 国保連 mailbox and fetching return files.

Every delivery and every fetch is a job (``jobs`` table). A job attempt that
finds the mailbox unreachable (connection refused, timeout, HTTP 5xx or 429)
goes back to ``queued`` with ``next_attempt_at`` after an exponential backoff
(``Timing.transmit_backoff`` doubling up to ``transmit_max_backoff``), at most
``Timing.transmit_attempts`` attempts; a refusal (4xx) fails the job at once
with the mailbox's code. Jobs left queued or running by a stopped process are
resumed at start-up. Re-sending a file is safe: the mailbox is idempotent per
ファイル管理番号, and the intake result comes back in the answer to the upload
(a repeat answers the stored result).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog

from chukan.codecs.errors import CodecError
from chukan.codecs.kokuhoren_flows import COLLECTION_RESULT
from chukan.codecs.kokuhoren_returns import decode_benefit_file, parse_benefit_file_name
from chukan.gateway.core import db
from chukan.gateway.core.config import KokuhorenLink
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.jobs import fail_job, finish_job, start_job
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.retry import backoff_delay
from chukan.gateway.core.state import GatewayState, utcnow
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header, verify_signature
from chukan.gateway.kokuhoren.benefits import apply_pending_benefits, store_collection_file
from chukan.gateway.kokuhoren.errors import (
    EnvelopeInvalidError,
    MailboxAnswerInvalidError,
    MailboxRefusedError,
    MailboxUnavailableError,
    ReturnFileInvalidError,
)
from chukan.gateway.kokuhoren.mailbox import (
    KOKUHOREN_PARTY,
    FileEnvelope,
    IntakeResult,
    open_file,
    seal_file,
)
from chukan.gateway.kokuhoren.returns import THREAD_THRESHOLD, check_listing
from chukan.keys import KeysError

log = structlog.get_logger("chukan.kokuhoren")

JOB_TRANSMIT: Final = "kokuhoren.transmit"
JOB_INGEST: Final = "kokuhoren.ingest"
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


def _remote_error(body: bytes, status: int) -> tuple[str, str]:
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "kokuhoren_error", f"the mailbox answered HTTP {status}"
    if not code.replace("_", "").isalnum() or not code.islower():
        return "kokuhoren_error", f"the mailbox answered HTTP {status}"
    return code, message[:500]


@dataclass
class MailboxClient:
    """This 保険者's connection to the mailbox: bearer token, signed uploads, pinned keys."""

    link: KokuhorenLink
    insurer_number: str
    keys: AgencyKeys
    session: aiohttp.ClientSession
    timeout: float

    async def _request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes, str | None]:
        headers = {"Authorization": f"Bearer {self.link.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers[SIGNATURE_HEADER] = signature_header(self.keys.signing, body)
        try:
            async with self.session.request(
                method,
                self.link.url.rstrip("/") + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                payload = await response.read()
                status, signature = response.status, response.headers.get(SIGNATURE_HEADER)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MailboxUnavailableError(
                f"the 国保連 mailbox could not be reached ({type(exc).__name__})"
            ) from None
        if status in RETRY_STATUSES:
            raise MailboxUnavailableError(f"the 国保連 mailbox answered HTTP {status}")
        if status >= 400:
            code, message = _remote_error(payload, status)
            raise MailboxRefusedError(status, code, message)
        try:
            verify_signature(
                signature, payload, {self.link.signing_key.key_id: self.link.signing_key}
            )
        except GatewayError:
            raise MailboxAnswerInvalidError("the mailbox answer is not signed by 国保連") from None
        return status, payload, signature

    def _json(self, payload: bytes) -> dict[str, Any]:
        try:
            value = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MailboxAnswerInvalidError("the mailbox answer is not JSON") from None
        if not isinstance(value, dict):
            raise MailboxAnswerInvalidError("the mailbox answer is not a JSON object")
        return value

    async def deliver(
        self, file_management_number: str, file_name: str, content: bytes
    ) -> tuple[IntakeResult, bool]:
        """Seal, sign and put one file in the mailbox; the intake result and ``duplicate``."""

        def envelope() -> bytes:
            return seal_file(
                self.link.encryption_key,
                content,
                sender=self.insurer_number,
                receiver=KOKUHOREN_PARTY,
                file_management_number=file_management_number,
                file_name=file_name,
            ).to_bytes()

        body = await asyncio.to_thread(envelope) if len(content) > THREAD_THRESHOLD else envelope()
        _, payload, _ = await self._request("POST", "/mailbox/v1/files", body)
        answer = self._json(payload)
        try:
            intake = IntakeResult.from_json(answer.get("intake"))
        except EnvelopeInvalidError as exc:
            raise MailboxAnswerInvalidError(f"intake result: {exc.message}") from None
        if intake.file_management_number != file_management_number or intake.file_name != file_name:
            raise MailboxAnswerInvalidError("the intake result is about another file")
        return intake, answer.get("duplicate") is True

    async def outbox(self, month: str) -> list[dict[str, Any]]:
        """Return files waiting for this 保険者 for one month."""
        _, payload, _ = await self._request("GET", f"/mailbox/v1/outbox?month={month}")
        files = self._json(payload).get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise MailboxAnswerInvalidError("the outbox listing has no list of files")
        return files

    async def fetch(self, file_management_number: str) -> tuple[FileEnvelope, bytes]:
        """One return file, verified (国保連's signature) and opened with our key."""
        _, payload, _ = await self._request("GET", f"/mailbox/v1/outbox/{file_management_number}")
        envelope = FileEnvelope.from_bytes(payload)
        if (
            envelope.sender != KOKUHOREN_PARTY
            or envelope.receiver != self.insurer_number
            or envelope.file_management_number != file_management_number
        ):
            raise ReturnFileInvalidError("the return file is not addressed to this 保険者")
        keys = {self.keys.encryption.key_id: self.keys.encryption}
        return envelope, open_file(keys, envelope)


# -- jobs -----------------------------------------------------------------------------------

Attempt = Callable[[], Awaitable[None]]
OnFailure = Callable[[db.Conn, str], Awaitable[None]]


async def run_job(
    state: GatewayState, job_id: int, attempt: Attempt, on_failure: OnFailure
) -> None:
    """Run ``attempt`` until it succeeds, retrying while the mailbox is unavailable.

    ``attempt`` records its own success (and finishes the job); ``on_failure``
    records a final failure in the job's own table, in the same transaction as
    the job's ``failed`` status.
    """
    timing = state.config.timing
    while True:
        job = await state.pool.fetchrow(
            "SELECT kind, status, attempts, next_attempt_at FROM jobs WHERE id = $1", job_id
        )
        if job is None or job["status"] in ("done", "failed"):
            return
        due: dt.datetime | None = job["next_attempt_at"]
        if due is not None and (wait := (due - utcnow()).total_seconds()) > 0:
            await asyncio.sleep(wait)
            continue
        number = job["attempts"] + 1
        await start_job(state.pool, job_id)
        try:
            await attempt()
            return
        except MailboxUnavailableError as exc:
            if number < timing.transmit_attempts:
                delay = backoff_delay(number, timing.transmit_backoff, timing.transmit_max_backoff)
                async with state.pool.acquire() as conn, conn.transaction():
                    await fail_job(
                        conn,
                        job_id,
                        f"{exc.code}: {exc.message}",
                        retry_at=utcnow() + dt.timedelta(seconds=delay),
                    )
                log.info(
                    "kokuhoren_job_retry",
                    job_id=job_id,
                    kind=job["kind"],
                    attempt=number,
                    delay=delay,
                    code=exc.code,
                )
                continue
            code, message = exc.code, f"gave up after {number} attempts: {exc.message}"
        except MailboxRefusedError as exc:
            code, message = exc.remote_code, exc.message
        except (GatewayError, CodecError) as exc:
            code, message = exc.code, str(exc)
        except KeysError as exc:
            code, message = exc.code, "the file could not be opened or verified"
        async with state.pool.acquire() as conn, conn.transaction():
            await fail_job(conn, job_id, f"{code}: {message}")
            await on_failure(conn, code)
        log.warning("kokuhoren_job_failed", job_id=job_id, kind=job["kind"], code=code)
        return


async def transmit(state: GatewayState, client: MailboxClient, transmission_id: int) -> None:
    """Deliver one built file and store the intake result (the job of a transmission)."""
    row = await state.pool.fetchrow(
        "SELECT id, job_id, file_name, file_management_number, content, record_count "
        "FROM kokuhoren_transmissions WHERE id = $1",
        transmission_id,
    )
    if row is None:
        return

    async def attempt() -> None:
        await state.pool.execute(
            "UPDATE kokuhoren_transmissions SET attempts = attempts + 1 WHERE id = $1",
            transmission_id,
        )
        try:
            intake, duplicate = await client.deliver(
                row["file_management_number"], row["file_name"], row["content"]
            )
        except MailboxUnavailableError as exc:
            await state.pool.execute(
                "UPDATE kokuhoren_transmissions SET last_error = $2 WHERE id = $1",
                transmission_id,
                exc.code,
            )
            raise
        await _record_intake(state, row["id"], row["job_id"], intake, duplicate)

    async def on_failure(conn: db.Conn, code: str) -> None:
        await conn.execute(
            "UPDATE kokuhoren_transmissions SET status = 'failed', last_error = $2 WHERE id = $1",
            transmission_id,
            code,
        )

    await run_job(state, row["job_id"], attempt, on_failure)


async def _record_intake(
    state: GatewayState, transmission_id: int, job_id: int, intake: IntakeResult, duplicate: bool
) -> None:
    """Store the intake result on the transmission and on each change it carried."""
    refused: dict[int, str] = {}
    for error in intake.errors:
        if error.record_number is not None and error.record_number >= 2:
            refused.setdefault(error.record_number, error.code)
    whole_file = intake.status == "rejected"
    result = {**intake.to_json(), "duplicate": duplicate}
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE kokuhoren_transmissions
               SET status = 'delivered', accepted_count = $2, rejected_count = $3,
                   intake_result = $4::jsonb, delivered_at = now(), last_error = NULL
               WHERE id = $1""",
            transmission_id,
            intake.accepted,
            intake.rejected,
            json.dumps(result, ensure_ascii=False),
        )
        file_code = next((e.code for e in intake.errors), "file_rejected")
        await conn.execute(
            """UPDATE kokuhoren_recipient_changes c
               SET intake_status = CASE WHEN $2 OR r.code IS NOT NULL
                                        THEN 'rejected' ELSE 'accepted' END,
                   intake_code = CASE WHEN $2 THEN COALESCE(r.code, $3) ELSE r.code END
               FROM (SELECT c2.id, e.code FROM kokuhoren_recipient_changes c2
                     LEFT JOIN unnest($4::int[], $5::text[]) AS e(record_number, code)
                       ON e.record_number = c2.record_number
                     WHERE c2.transmission_id = $1) AS r
               WHERE c.id = r.id""",
            transmission_id,
            whole_file,
            file_code,
            list(refused),
            list(refused.values()),
        )
        await conn.execute(
            """UPDATE kokuhoren_flow_records f
               SET intake_status = CASE WHEN $2 OR r.code IS NOT NULL
                                        THEN 'rejected' ELSE 'accepted' END,
                   intake_code = CASE WHEN $2 THEN COALESCE(r.code, $3) ELSE r.code END
               FROM (SELECT f2.id,
                            (SELECT e.code
                             FROM unnest($4::int[], $5::text[]) AS e(record_number, code)
                             WHERE e.record_number BETWEEN f2.first_record AND f2.last_record
                             ORDER BY e.record_number LIMIT 1) AS code
                     FROM kokuhoren_flow_records f2 WHERE f2.transmission_id = $1) AS r
               WHERE f.id = r.id""",
            transmission_id,
            whole_file,
            file_code,
            list(refused),
            list(refused.values()),
        )
        await finish_job(
            conn,
            job_id,
            {
                "records": intake.record_count,
                "accepted": intake.accepted,
                "rejected": intake.rejected,
            },
        )
    log.info(
        "kokuhoren_transmission_delivered",
        transmission_id=transmission_id,
        fmn=intake.file_management_number,
        intake_status=intake.status,
        accepted=intake.accepted,
        rejected=intake.rejected,
        duplicate=duplicate,
        error_codes=sorted({e.code for e in intake.errors}),
    )


async def ingest_returns(state: GatewayState, client: MailboxClient, job_id: int) -> None:
    """Fetch and store the return files (給付実績) of the month named by the job."""
    month = await state.pool.fetchval("SELECT subject FROM jobs WHERE id = $1", job_id)
    if month is None:
        return

    async def attempt() -> None:
        listing = await client.outbox(month)
        counts = {"files": 0, "records": 0, "already_ingested": 0}
        for entry in listing:
            fmn = entry.get("file_management_number")
            if not isinstance(fmn, str):
                raise MailboxAnswerInvalidError("an outbox entry has no ファイル管理番号")
            seen = await state.pool.fetchval(
                "SELECT 1 FROM kokuhoren_return_files WHERE file_management_number = $1", fmn
            )
            if seen:
                counts["already_ingested"] += 1
                continue
            envelope, content = await client.fetch(fmn)
            records = await _store_return(state, job_id, month, envelope, content)
            counts["files"] += 1
            counts["records"] += records
        counts |= await apply_pending_benefits(state)
        await finish_job(state.pool, job_id, counts)
        log.info("kokuhoren_returns_ingested", job_id=job_id, month=month, **counts)

    async def on_failure(conn: db.Conn, code: str) -> None:
        return None

    await run_job(state, job_id, attempt, on_failure)


async def _store_return(
    state: GatewayState, job_id: int, month: str, envelope: FileEnvelope, content: bytes
) -> int:
    if envelope.file_name.startswith(f"10_{COLLECTION_RESULT.data_type}"):
        return await store_collection_file(state, job_id, month, envelope, content)
    insurer, name_month = parse_benefit_file_name(envelope.file_name)
    if len(content) > THREAD_THRESHOLD:
        file = await asyncio.to_thread(decode_benefit_file, content)
    else:
        file = decode_benefit_file(content)
    check_listing(state.config.insurer_number, month, envelope, (insurer, name_month), file.control)
    async with state.pool.acquire() as conn, conn.transaction():
        file_id = await conn.fetchval(
            """INSERT INTO kokuhoren_return_files (job_id, data_type, processing_month, file_name,
                   file_management_number, record_count, content, digest)
               VALUES ($1, '861', $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant, file_management_number) DO NOTHING RETURNING id""",
            job_id,
            month,
            envelope.file_name,
            envelope.file_management_number,
            len(file.records),
            content,
            envelope.digest,
        )
        if file_id is None:  # another process ingested it meanwhile
            return 0
        await conn.executemany(
            """INSERT INTO kokuhoren_benefit_records (return_file_id, record_number,
                   service_month, insured_number, provider_number, service_type, units,
                   benefit_amount, copayment)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            [
                (
                    file_id,
                    number,
                    str(r.service_month),
                    r.insured_number,
                    r.provider_number,
                    r.service_type,
                    r.units,
                    r.benefit_amount,
                    r.copayment,
                )
                for number, r in enumerate(file.records, start=2)
            ],
        )
    return len(file.records)
