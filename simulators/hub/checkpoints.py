"""The hub's record chain: signed checkpoints, the witness file, and the verifying walk.

Every ``checkpoint_every`` events or ``checkpoint_interval`` the hub signs its chain
head (``hub_record_checkpoints``) after checking the segment it vouches for, and
appends the checkpoint, with each event's digest, query id and kind, to the witness
file: JSON lines outside the database, written with ``O_APPEND`` under an exclusive
``flock`` and fsynced.  Each hub process keeps its file level with the database's
checkpoints (a process that died between the commit and the write catches up on its
next pass; several processes sharing one file append each checkpoint once).

A database superuser who rewrites events and re-hashes the chain must delete the
checkpoints that no longer match; the witness file still holds them.  The
checkpointer then refuses to sign (``hub_witness_mismatch``, an error event) and
``chukan hub records verify`` names the events that changed.

What a pass finds wrong (a segment that does not verify, a witness file that disagrees
or cannot be written) is also kept in the database (:mod:`.record_status`): ``/ready``
and ``/metrics`` of every hub process show it, and no new query is routed until a pass
finds it repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.records.chain import ChainRow, ChainWalk, Issue, VerifyReport
from chukan.gateway.records.errors import ChainBrokenError
from chukan.keys import PublicSigningKey, SigningKeyPair
from chukan.simulators.hub import record_status
from chukan.simulators.hub.chain import (
    HUB_CHAIN,
    ROW_COLUMNS,
    WitnessCheck,
    WitnessEntry,
    canonical_event,
    checkpoint_message,
    genesis_hash,
    merge_issues,
    query_ids,
    read_witness_lines,
    verify_segment,
    witness_entry,
)
from chukan.simulators.hub.state import HubState, utcnow

log = structlog.get_logger("chukan.hub")

#: Events per read of the verifying walk.
RANGE: Final = 50_000
#: Checkpoints appended to the witness file per pass at most (a long catch-up takes more).
WITNESS_BATCH: Final = 100
_TAIL_BLOCK: Final = 65_536


# -- signing ----------------------------------------------------------------------------------


async def make_checkpoint(
    conn: db.Conn,
    signer: SigningKeyPair,
    *,
    every: int,
    interval: dt.timedelta,
    force: bool = False,
) -> int | None:
    """Sign the chain head if due (``every`` unsigned events, the oldest older than
    ``interval``, or ``force``), once its segment verifies; the ``seq`` signed, or None.

    A segment that does not verify is an alarm in the database (``hub_record_alarms``:
    new queries are refused) until a pass finds it sound again."""
    try:
        verified, signed = await _sign_if_due(conn, signer, every, interval, force=force)
    except asyncpg.SerializationError:
        return None  # another hub process signed this very head after our snapshot
    except ChainBrokenError as exc:
        log.error("hub_record_chain_broken", seq=exc.seq, detail=str(exc))
        await record_status.note_failing(
            conn, record_status.CHAIN, record_status.CHAIN_BROKEN, exc.seq, str(exc)
        )
        return None
    if verified:
        await record_status.note_ok(conn, record_status.CHAIN)
    return signed


async def _sign_if_due(
    conn: db.Conn, signer: SigningKeyPair, every: int, interval: dt.timedelta, *, force: bool
) -> tuple[bool, int | None]:
    """(whether the unsigned segment was checked and verified, the ``seq`` signed)."""
    async with conn.transaction(isolation="repeatable_read"):
        head = await conn.fetchrow("SELECT seq, hash FROM hub_record_chain_head")
        last = await conn.fetchrow(
            "SELECT seq, hash FROM hub_record_checkpoints ORDER BY seq DESC LIMIT 1"
        )
        if head is None:
            raise ChainBrokenError("the chain head is missing")
        last_seq, prev = (last["seq"], last["hash"]) if last else (0, genesis_hash())
        if head["seq"] <= last_seq:
            return False, None
        if not force:  # due? (counted by the chain's index, the events not read yet)
            pending = await conn.fetchrow(
                "SELECT count(*) AS n, min(recorded_at) AS oldest FROM hub_record_events "
                "WHERE seq > $1",
                last_seq,
            )
            assert pending is not None
            oldest = pending["oldest"]
            if pending["n"] < every and (oldest is None or utcnow() - oldest < interval):
                return False, None
        rows = await conn.fetch(
            f"SELECT {ROW_COLUMNS} FROM hub_record_events "  # noqa: S608 -- fixed columns
            "WHERE seq > $1 ORDER BY seq, id",
            last_seq,
        )
        bad = verify_segment(
            rows, after_seq=last_seq, prev_hash=prev, head_seq=head["seq"], head_hash=head["hash"]
        )
        if bad is not None:
            raise ChainBrokenError(
                f"events after checkpoint {last_seq} do not verify from seq {bad} on", seq=bad
            )
        signed_at = utcnow()
        signature = signer.sign(checkpoint_message(head["seq"], head["hash"], signed_at))
        inserted = await conn.fetchval(
            """INSERT INTO hub_record_checkpoints (seq, after_seq, hash, signed_at, key_id,
                                                   public_key, signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1""",
            head["seq"],
            last_seq,
            head["hash"],
            signed_at,
            signer.key_id,
            signer.public.raw,
            signature,
        )
    if not inserted:
        return True, None
    log.info("hub_record_checkpoint_signed", seq=head["seq"], key_id=signer.key_id)
    return True, int(head["seq"])


# -- the witness file -------------------------------------------------------------------------


def _last_line(handle: BinaryIO) -> str | None:
    """The last non-empty line of an open binary file, read backwards in blocks."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    data = b""
    position = end
    while position > 0:
        step = min(_TAIL_BLOCK, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
        stripped = data.rstrip(b"\n")
        cut = stripped.rfind(b"\n")
        if cut >= 0:
            return stripped[cut + 1 :].decode("utf-8")
    stripped = data.rstrip(b"\n")
    return stripped.decode("utf-8") if stripped else None


def last_witnessed(path: Path) -> WitnessEntry | None:
    """The last checkpoint the witness file holds (None: no file, or an empty one)."""
    try:
        with path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            line = _last_line(handle)
    except FileNotFoundError:
        return None
    return None if line is None else WitnessEntry.from_line(line)


def append_witness(path: Path, entries: Sequence[WitnessEntry], after_seq: int) -> bool:
    """Append ``entries`` (fsynced) if the file still ends at ``after_seq``; False when
    another process appended in between (the next pass looks again)."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        line = _last_line(handle)
        current = 0 if line is None else WitnessEntry.from_line(line).seq
        if current != after_seq:
            return False
        handle.write("".join(e.to_line() + "\n" for e in entries).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    if created:  # the file's name is durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True


def probe_writable(path: Path) -> None:
    """Open the witness file for appending (creating it, durably, if need be), writing
    nothing: an ``OSError`` here means no checkpoint could be witnessed now."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


async def sync_witness(conn: db.Conn, path: Path) -> bool:
    """Append to the witness file the checkpoints it lacks; False when the database no
    longer holds what the file witnessed, or the file cannot be written (alarms, kept in
    ``hub_record_alarms`` until a pass finds the file sound again: nothing is appended,
    or signed, meanwhile)."""
    source = record_status.witness_source(path)
    try:
        await asyncio.to_thread(probe_writable, path)
        witnessed, mismatch = await _sync_witness(conn, path)
    except OSError as exc:
        detail = f"{type(exc).__name__}: {exc.strerror or 'cannot be written'}"
        log.error("hub_witness_unwritable", file=path.name, detail=detail)
        await record_status.note_failing(
            conn, source, record_status.WITNESS_UNWRITABLE, None, f"{path.name}: {detail}"
        )
        return False
    if mismatch is not None:
        log.error("hub_witness_mismatch", seq=witnessed, detail=mismatch)
        await record_status.note_failing(
            conn, source, record_status.WITNESS_MISMATCH, witnessed, mismatch
        )
        return False
    await record_status.note_ok(conn, source, witnessed)
    return True


async def _sync_witness(conn: db.Conn, path: Path) -> tuple[int, str | None]:
    """(the last ``seq`` the file witnesses, why it disagrees with the database or None)."""
    try:
        last = await asyncio.to_thread(last_witnessed, path)
    except ValueError as exc:  # not the hub's writing: the file was tampered with
        return 0, f"the witness file's last line cannot be read ({exc})"
    last_seq = 0 if last is None else last.seq
    if last is not None:
        stored = await conn.fetchrow(
            "SELECT hash FROM hub_record_checkpoints WHERE seq = $1", last.seq
        )
        if stored is None or stored["hash"] != last.hash:
            return last.seq, (
                "the witnessed checkpoint is "
                + ("missing from" if stored is None else "different in")
                + " the database"
            )
    checkpoints = await conn.fetch(
        "SELECT * FROM hub_record_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2",
        last_seq,
        WITNESS_BATCH,
    )
    entries: list[WitnessEntry] = []
    previous = last_seq
    for cp in checkpoints:
        if cp["after_seq"] != previous:
            return cp["seq"], "checkpoints missing"
        rows = await conn.fetch(
            "SELECT seq, query_id, kind, permit_id, requester, provider, business_code, "
            "procedure_code, item_code, legal_basis, requester_person_code, "
            "provider_person_code, requested_at, permit_expires_at, answered_at, outcome, "
            "reason_code, non_disclosure, recorded_at FROM hub_record_events "
            "WHERE seq > $1 AND seq <= $2 ORDER BY seq, id",
            cp["after_seq"],
            cp["seq"],
        )
        entries.append(witness_entry(cp, rows))
        previous = cp["seq"]
    if not entries:
        return last_seq, None
    if not await asyncio.to_thread(append_witness, path, entries, last_seq):
        return last_seq, None  # another process appended meanwhile: the next pass looks
    log.info("hub_record_checkpoints_witnessed", seq=previous, file=path.name)
    return previous, None


async def checkpoint_pass(state: HubState, *, force: bool = False) -> int | None:
    """One pass: the witness file caught up (refusing to go on if it disagrees), then
    the head signed if due and witnessed at once.  The ``seq`` signed, if any."""
    config = state.config
    async with state.pool.acquire() as conn:
        if not await sync_witness(conn, config.witness_path):
            return None
        signed = await make_checkpoint(
            conn,
            state.keys.signing,
            every=config.checkpoint_every,
            interval=config.checkpoint_interval,
            force=force,
        )
        if signed is not None:
            await sync_witness(conn, config.witness_path)
    return signed


async def checkpointer(state: HubState) -> None:
    """Background task: a :func:`checkpoint_pass` every ``checkpoint_poll`` seconds."""
    while True:
        await asyncio.sleep(state.config.checkpoint_poll)
        try:
            await checkpoint_pass(state)
        except Exception as exc:  # a background loop never ends on an error
            if db.is_database_error(exc):
                db.note_unavailable(exc)
            else:
                log.exception("hub_record_checkpoint_failed")


@contextlib.asynccontextmanager
async def running_checkpointer(state: HubState) -> Any:
    """The checkpointer for the life of the hub, cancelled (and awaited) at its stop."""
    task = asyncio.create_task(checkpointer(state), name="hub-record-checkpointer")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- verifying --------------------------------------------------------------------------------


@dataclass
class HubVerifyReport:
    """What ``chukan hub records verify`` prints (JSON) and decides by (``ok``)."""

    chain: VerifyReport
    witness_file: str | None = None
    witnessed_seq: int | None = None
    unwitnessed_events: int | None = None
    issues: list[Issue] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": HUB_CHAIN,
            "ok": self.ok,
            "events": self.chain.records,
            "head_seq": self.chain.head_seq,
            "checkpoints": self.chain.checkpoints,
            "last_checkpoint_seq": self.chain.last_checkpoint_seq,
            "keys_trusted": self.chain.keys_trusted,
            "witness_file": self.witness_file,
            "witnessed_seq": self.witnessed_seq,
            "unwitnessed_events": self.unwitnessed_events,
            "issues": query_ids(self.issues, self.names),
        }


def read_witness_file(path: Path) -> list[WitnessEntry]:
    with path.open(encoding="utf-8") as handle:
        return read_witness_lines(handle)


def _feed(walk: ChainWalk, witness: WitnessCheck | None, rows: Sequence[asyncpg.Record]) -> None:
    """Events of one range, in ``seq`` order, to the walk (grouped by seq) and the witness."""
    index = 0
    while index < len(rows):
        seq = rows[index]["seq"]
        end = index + 1
        while end < len(rows) and rows[end]["seq"] == seq:
            end += 1
        group = rows[index:end]
        chained: list[ChainRow] = []
        for row in group:
            try:
                canonical: bytes | None = canonical_event(row)
            except (ValueError, TypeError):
                canonical = None
            chained.append(ChainRow(seq, row["id"], row["prev_hash"], row["hash"], canonical))
            if witness is not None:
                witness.event(row)
        if len(chained) == 1:
            only = chained[0]
            walk.single(seq, only.id, only.prev_hash.hex(), only.hash.hex(), only.canonical)
        else:
            walk.group(seq, chained)
        index = end


async def verify_hub_chain(
    conn: db.Conn,
    trusted_keys: Mapping[str, PublicSigningKey] | None,
    *,
    witness: list[WitnessEntry] | None = None,
    witness_file: str | None = None,
    grace: dt.timedelta | None = None,
) -> HubVerifyReport:
    """Walk the hub's chain and checkpoints in one snapshot and, with ``witness`` (the
    witness file's entries), check both against what was witnessed: every altered,
    deleted or inserted event named by ``seq`` and query id.  With ``grace``, events
    recorded longer ago than that and covered by no witnessed checkpoint are an issue
    (``unwitnessed``)."""
    chain = VerifyReport(HUB_CHAIN, keys_trusted=trusted_keys is not None)
    report = HubVerifyReport(chain, witness_file=witness_file)
    check = None if witness is None else WitnessCheck(witness)
    by_seq = {e.seq: e for e in witness or []}
    witness_issues: list[Issue] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT seq, hash FROM hub_record_chain_head")
        chain.head_seq = head["seq"] if head else None
        walk = ChainWalk(HUB_CHAIN, chain, chain.head_seq, genesis_hash())
        stored = {
            r["seq"]: r["hash"]
            for r in await conn.fetch("SELECT seq, hash FROM hub_record_checkpoints")
        }
        bounds = list(range(RANGE, chain.head_seq or 0, RANGE))
        for low, high in zip([None, *bounds], [*bounds, None], strict=True):
            checkpoints = await conn.fetch(
                "SELECT * FROM hub_record_checkpoints WHERE ($1::bigint IS NULL OR seq > $1) "
                "AND ($2::bigint IS NULL OR seq <= $2) ORDER BY seq",
                low,
                high,
            )
            witnessed = [
                s for s in by_seq if (low is None or s > low) and (high is None or s <= high)
            ]
            walk.watch([*(cp["seq"] for cp in checkpoints), *witnessed])
            rows = await conn.fetch(
                f"SELECT {ROW_COLUMNS} FROM hub_record_events "  # noqa: S608 -- fixed columns
                "WHERE ($1::bigint IS NULL OR seq > $1) AND ($2::bigint IS NULL OR seq <= $2) "
                "ORDER BY seq, id",
                low,
                high,
            )
            _feed(walk, check, rows)
            for cp in checkpoints:
                walk.checkpoint(cp, trusted_keys)
            for seq in sorted(witnessed):
                witness_issues.extend(
                    _witnessed(by_seq[seq], walk.watching.get(seq), stored, trusted_keys)
                )
        walk.close(head)
        if check is not None:
            witness_issues = merge_issues(check.finish(), witness_issues)
            report.witnessed_seq = check.last_seq
            report.unwitnessed_events = max(0, (chain.head_seq or 0) - check.last_seq)
            if grace is not None:
                stale = await conn.fetchval(
                    "SELECT min(seq) FROM hub_record_events WHERE seq > $1 "
                    "AND recorded_at < now() - $2::interval",
                    check.last_seq,
                    grace,
                )
                if stale is not None:
                    witness_issues.append(
                        Issue(
                            "unwitnessed",
                            stale,
                            None,
                            f"events from seq {stale} on are older than {grace} and no "
                            "witnessed checkpoint covers them",
                        )
                    )
        report.issues = merge_issues(chain.issues, witness_issues)
        wanted = [i.seq for i in report.issues if i.seq is not None]
        if wanted:
            report.names = {
                r["seq"]: r["query_id"]
                for r in await conn.fetch(
                    "SELECT DISTINCT ON (seq) seq, query_id FROM hub_record_events "
                    "WHERE seq = ANY($1::bigint[]) ORDER BY seq, id",
                    wanted,
                )
            }
    log.info(
        "hub_record_chain_verified",
        events=chain.records,
        issues=len(report.issues),
        witnessed=report.witnessed_seq,
    )
    return report


def _witnessed(
    entry: WitnessEntry,
    actual: bytes | None,
    stored: Mapping[int, bytes],
    trusted_keys: Mapping[str, PublicSigningKey] | None,
) -> list[Issue]:
    """One witnessed checkpoint against the chain and the stored checkpoints."""
    found: list[Issue] = []
    if trusted_keys is not None:
        key = trusted_keys.get(entry.key_id)
        try:
            if key is None:
                raise ValueError(entry.key_id)
            key.verify(checkpoint_message(entry.seq, entry.hash, entry.signed_at), entry.signature)
        except Exception:
            found.append(Issue("witness_signature_invalid", entry.seq, None, f"key {entry.key_id}"))
    if entry.seq not in stored:
        found.append(Issue("witness_missing", entry.seq, None, "a witnessed checkpoint is missing"))
    elif stored[entry.seq] != entry.hash:
        found.append(Issue("witness_mismatch", entry.seq, None, "the stored checkpoint differs"))
    if actual is not None and actual != entry.hash:
        found.append(
            Issue(
                "witness_mismatch",
                entry.seq,
                None,
                f"events {entry.after_seq + 1}..{entry.seq} were rewritten after they were "
                "witnessed",
            )
        )
    return found
