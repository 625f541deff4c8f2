"""Administrative commands: ``chukan records|staff|ops ...``.

They connect with the owner's URL of the gateway database — the one migrations
use; a role with CREATEDB and CREATEROLE, no superuser needed — and act *as the
tenant*: ``SET ROLE`` to the tenant's role (the owner is made a member of it when
the tenant is provisioned), so row-level security, column privileges and the
append-only triggers apply exactly as to the gateway itself.  The tenant's own
URL works too.  A database with a migration pending is refused (``chukan db
migrate``).  Every command
that reads personal records or changes accounts is written to the audit trail
(actor kind ``cli``, actor ``--actor`` or the OS user).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from chukan.gateway.cli import records_witness
from chukan.gateway.cli.errors import AdminCommandError
from chukan.gateway.cli.reconcile import add_reconcile_parser
from chukan.gateway.core import db
from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.jobs import list_jobs
from chukan.gateway.core.keyring import open_ring, own_verification_keys, ring_path
from chukan.gateway.core.settings import (
    DEFAULT_RESULT_RETENTION,
    DEFAULT_STATISTICS_TIME_ZONE,
    DEFAULT_UNUSED_DAYS,
    StaffConfig,
)
from chukan.gateway.core.validation import ATENA_PATTERN
from chukan.gateway.ops.purge import run_purge_job
from chukan.gateway.ops.statistics import STATISTICS_FIELDS, parse_period, statistics
from chukan.gateway.records.checkpoints import checkpoint_now, latest_checkpoint
from chukan.gateway.records.disclosure import disclose, disclosure_csv
from chukan.gateway.records.retention import dispose_expired_records
from chukan.gateway.records.store import ensure_partitions
from chukan.gateway.records.verify import verify_chain
from chukan.gateway.staff.accounts import (
    ACCOUNT_COLUMNS,
    account_json,
    check_username,
    create_account,
    parse_expiry,
    review_accounts,
    revoke_account,
)
from chukan.gateway.staff.api import to_csv
from chukan.gateway.staff.audit import audit as audit_event
from chukan.gateway.staff.operations_cli import (
    add_operation_filters,
    list_operations,
    operation_filters,
)
from chukan.gateway.staff.passwords import check_password_strength, hash_with
from chukan.gateway.staff.roles import ROLE_ADMIN
from chukan.keys import KeysError, PublicSigningKey, b64d, public_signing_key
from chukan.keys.ring import KeyRing

COMMANDS = ("records", "staff", "ops", "operations")


def add_commands(commands: Any, *, database_default: str) -> None:
    """Add the ``records``, ``staff`` and ``ops`` sub-commands to ``chukan``'s parser."""

    def common(parser: argparse.ArgumentParser, *, tenant: bool = True) -> None:
        parser.add_argument(
            "--database-url",
            help="owner URL of the gateway database (default: CHUKAN_DATABASE_URL or the "
            "embedded server, database --database)",
        )
        parser.add_argument("--database", default=database_default)
        if tenant:
            parser.add_argument("--tenant", required=True, help="agency code (6 or 16 digits)")
        parser.add_argument("--actor", default=None, help="who runs this (audit trail)")

    def fmt(parser: argparse.ArgumentParser, default: str = "json") -> None:
        parser.add_argument("--format", choices=("json", "csv"), default=default)

    rec = commands.add_parser("records", help="provision records: verify, disclose, checkpoint")
    rec_cmds = rec.add_subparsers(dest="action", required=True)
    verify = rec_cmds.add_parser("verify", help="walk the hash chain and signed checkpoints")
    common(verify)
    verify.add_argument("--key-dir", type=Path, help="the agency's key folder (trusted keys)")
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY_ID=BASE64",
        help="a trusted public signing key (repeatable)",
    )
    verify.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress lines on stderr (by default one every 100,000 records)",
    )
    records_witness.add_verify_arguments(verify)
    records_witness.add_receipts_command(rec_cmds, common)
    add_reconcile_parser(rec_cmds)  # --config: run by cli.main without a database URL
    disclosure = rec_cmds.add_parser("disclose", help="every record about one person")
    common(disclosure)
    disclosure.add_argument("--atena-id", required=True)
    disclosure.add_argument("--audience", choices=("auditor", "person"), default="auditor")
    fmt(disclosure)
    checkpoint = rec_cmds.add_parser("checkpoint", help="sign a checkpoint of the chain now")
    common(checkpoint)
    checkpoint.add_argument("--key-dir", type=Path, required=True)
    dispose = rec_cmds.add_parser(
        "dispose",
        help="drop the months of records past their seven years (every tenant's), "
        "each tenant's chain then verified from its base",
    )
    common(dispose)
    partitions = rec_cmds.add_parser("partitions", help="create monthly partitions ahead")
    common(partitions, tenant=False)
    partitions.add_argument("--months", type=int, default=4)

    st = commands.add_parser("staff", help="staff accounts")
    st_cmds = st.add_subparsers(dest="action", required=True)
    create = st_cmds.add_parser(
        "create-admin", help="bootstrap an administrator (password from stdin or generated)"
    )
    common(create)
    create.add_argument("--username", required=True)
    create.add_argument("--password-stdin", action="store_true")
    create.add_argument("--expires", help="ISO date of expiry (default: none)")
    st_cmds.add_parser("hash-password", help="scrypt hash of a password read from stdin")
    review = st_cmds.add_parser("review", help="accounts unused for N days or past expiry")
    common(review)
    review.add_argument("--unused-days", type=int, default=DEFAULT_UNUSED_DAYS)
    fmt(review)
    revoke = st_cmds.add_parser("revoke", help="revoke an account and end its sessions")
    common(revoke)
    revoke.add_argument("--username", required=True)

    op = commands.add_parser("ops", help="system management: deletion job, statistics, jobs")
    op_cmds = op.add_subparsers(dest="action", required=True)
    purge = op_cmds.add_parser("purge", help="run the result-deletion job now")
    common(purge)
    purge.add_argument(
        "--retention-hours",
        type=float,
        default=DEFAULT_RESULT_RETENTION.total_seconds() / 3600,
    )
    stats = op_cmds.add_parser("stats", help="records per day, procedure, item and outcome")
    common(stats)
    stats.add_argument("--from", dest="start")
    stats.add_argument("--to", dest="end")
    stats.add_argument("--time-zone", default=DEFAULT_STATISTICS_TIME_ZONE)
    fmt(stats)
    jobs = op_cmds.add_parser("jobs", help="recent jobs")
    common(jobs)
    jobs.add_argument("--kind")

    opl = commands.add_parser("operations", help="the operation log (操作内容の記録)")
    opl_cmds = opl.add_subparsers(dest="action", required=True)
    opl_list = opl_cmds.add_parser("list", help="operations, newest first, as JSON")
    common(opl_list)
    add_operation_filters(opl_list)


async def tenant_connection(url: str, tenant: str) -> asyncpg.Connection:
    """An owner connection that then acts as the tenant's role (``SET ROLE``)."""
    try:
        role = db.tenant_role(tenant)  # validated: safe as an identifier
    except ValueError:
        raise AdminCommandError(f"--tenant must be 6 or 16 digits, not {tenant!r}") from None
    conn = await asyncpg.connect(url)
    try:
        await db.require_migrations(conn, "gateway", db.load_migrations("chukan.gateway"))
        await conn.execute(f"SET ROLE {role}")
        await conn.execute("SET TIME ZONE 'UTC'")
        actual = await conn.fetchval("SELECT chukan_tenant()")
    except asyncpg.InvalidParameterValueError:
        await conn.close()
        raise AdminCommandError(f"tenant {tenant} has no login role on this server") from None
    except asyncpg.InsufficientPrivilegeError:
        await conn.close()
        raise AdminCommandError(
            f"this login is not a member of {role}, so it cannot act as tenant {tenant}: "
            f"use the owner that provisioned the tenant (or GRANT {role} TO it)"
        ) from None
    except BaseException:
        await conn.close()
        raise
    if actual != tenant:
        await conn.close()
        raise AdminCommandError(f"tenant {tenant} is not provisioned in this database")
    return conn


def _trusted_keys(args: argparse.Namespace) -> dict[str, PublicSigningKey] | None:
    keys: dict[str, PublicSigningKey] = {}
    for item in args.public_key:
        key_id, sep, raw = item.partition("=")
        if not sep:
            raise AdminCommandError("--public-key takes KEY_ID=BASE64")
        keys[key_id] = public_signing_key(key_id, b64d(raw))
    if args.key_dir is not None:
        keys.update(own_verification_keys(_load_ring(args.key_dir, args.tenant)))
    return keys or None


def _load_ring(key_dir: Path, tenant: str) -> KeyRing:
    """The agency's key ring (``chukan keys``); every key it holds verifies, the newest signs."""
    passphrase = os.environ.get("CHUKAN_KEY_PASSPHRASE")
    if not passphrase:
        raise AdminCommandError("set CHUKAN_KEY_PASSPHRASE to open the key folder")
    if not ring_path(key_dir, tenant).exists():
        raise AdminCommandError(f"no key ring of {tenant} in {key_dir}")
    try:
        return open_ring(key_dir, tenant, passphrase.encode())
    except KeysError as exc:
        raise AdminCommandError(str(exc)) from None


def verify_progress(tenant: str, err: TextIO) -> Callable[[int, int | None], None]:
    """A progress reporter for ``records verify``: one line on ``err`` each time it is told
    how far the walk is (records so far, of the chain head's ``seq``), with the rate."""
    started = time.monotonic()

    def report(records: int, head_seq: int | None) -> None:
        seconds = max(time.monotonic() - started, 1e-9)
        of = f" of {head_seq:,} ({100 * records / head_seq:.0f}%)" if head_seq else ""
        err.write(
            f"records verify {tenant}: {records:,} records{of}, "
            f"{records / seconds:,.0f} records/s, {seconds:.1f} s\n"
        )
        err.flush()

    return report


def _json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


async def run(args: argparse.Namespace, url: str, out: TextIO, stdin: TextIO) -> int:
    """Run one parsed command against the gateway database at ``url``."""
    try:
        return await _dispatch(args, url, out, stdin)
    except GatewayError as exc:  # AdminCommandError, or a flow's refusal (weak password, …)
        print(f"chukan: {exc.message}", file=sys.stderr)
        return 2


async def _dispatch(args: argparse.Namespace, url: str, out: TextIO, stdin: TextIO) -> int:
    command, action = args.command, args.action
    if (command, action) == ("staff", "hash-password"):
        password = stdin.readline().rstrip("\n")
        config = StaffConfig()
        check_password_strength(password, config, "")
        out.write(hash_with(config, password) + "\n")
        return 0
    if (command, action) == ("records", "partitions"):
        conn = await asyncpg.connect(url)
        try:
            await db.require_migrations(conn, "gateway", db.load_migrations("chukan.gateway"))
            created = await ensure_partitions(conn, dt.date.today(), args.months)
        finally:
            await conn.close()
        _json(out, {"created": created})
        return 0
    actor = args.actor or getpass.getuser()
    conn = await tenant_connection(url, args.tenant)
    try:
        return await _tenant_command(args, conn, actor, out, stdin)
    finally:
        await conn.close()


async def _tenant_command(
    args: argparse.Namespace, conn: asyncpg.Connection, actor: str, out: TextIO, stdin: TextIO
) -> int:
    command, action, tenant = args.command, args.action, args.tenant

    async def audit(action_name: str, target: str | None, detail: Mapping[str, Any]) -> None:
        await audit_event(
            conn,
            actor_kind="cli",
            actor=actor,
            action=action_name,
            target=target,
            detail=dict(detail),
        )

    if (command, action) == ("records", "verify"):
        progress = None if args.no_progress else verify_progress(tenant, sys.stderr)
        async with contextlib.AsyncExitStack() as stack:
            receipts, hub_keys, window = await records_witness.receipt_source(args, stack)
            report = await verify_chain(
                conn,
                tenant,
                _trusted_keys(args),
                progress=progress,
                receipts=receipts,
                hub_keys=hub_keys,
                window=window,
            )
        await audit(
            "records.verify",
            None,
            {"ok": report.ok, "issues": len(report.issues), "witnessed": report.witnessed},
        )
        _json(out, report.to_json())
        return 0 if report.ok else 1
    if (command, action) == ("records", "disclose"):
        if not ATENA_PATTERN.match(args.atena_id):
            raise AdminCommandError("--atena-id must be 1 to 15 digits")
        async with conn.transaction():
            rows = await disclose(
                conn, tenant, args.atena_id, include_non_disclosed=args.audience == "auditor"
            )
            checkpoint = await latest_checkpoint(conn, tenant)
            await audit(
                "records.disclose",
                args.atena_id,
                {"records": len(rows), "format": args.format, "audience": args.audience},
            )
        if args.format == "csv":
            out.write(disclosure_csv(rows))
        else:
            _json(
                out,
                {
                    "agency": tenant,
                    "atena_id": args.atena_id,
                    "records": rows,
                    "checkpoint": checkpoint.to_json() if checkpoint else None,
                },
            )
        return 0
    if (command, action) == ("records", "receipts"):
        written = await records_witness.export_receipts(args)
        await audit("records.receipts.export", None, {"receipts": written})
        _json(out, {"receipts": written, "out": str(args.out)})
        return 0
    if (command, action) == ("records", "dispose"):
        disposal = await dispose_expired_records(conn)
        await audit(
            "records.dispose",
            None,
            {"partitions": len(disposal.dropped), "records": disposal.records},
        )
        _json(out, disposal.to_json())
        return 0
    if (command, action) == ("records", "checkpoint"):
        signer = _load_ring(args.key_dir, tenant).current_signing(dt.datetime.now(dt.UTC))
        made = await checkpoint_now(conn, tenant, signer)
        await audit("records.checkpoint", None, {"seq": made.seq if made else None})
        _json(out, {"checkpoint": made.to_json() if made else None})
        return 0
    if (command, action) == ("staff", "create-admin"):
        username = check_username(args.username)
        config = StaffConfig()
        generated = not args.password_stdin
        if generated:
            password = secrets.token_urlsafe(18)
        else:
            password = stdin.readline().rstrip("\n")
            check_password_strength(password, config, username)
        hashed = hash_with(config, password)
        async with conn.transaction():
            row = await create_account(
                conn,
                username=username,
                roles=[ROLE_ADMIN],
                password_hash=hashed,
                created_by=f"cli:{actor}",
                display_name="administrator",
                expires_at=parse_expiry(args.expires),
            )
            await audit("staff.account.create", username, {"roles": [ROLE_ADMIN]})
        result = account_json(row)
        if generated:
            result["password"] = password  # shown once, never stored in clear
        _json(out, result)
        return 0
    if (command, action) == ("staff", "review"):
        review = await review_accounts(conn, args.unused_days)
        await audit("staff.account.review", None, {"unused_days": args.unused_days})
        if args.format == "csv":
            rows = [{"finding": "unused", **a} for a in review["unused"]] + [
                {"finding": "expired", **a} for a in review["expired"]
            ]
            fields = ("finding", *ACCOUNT_COLUMNS.split(", "))
            out.write(to_csv(rows, fields))
        else:
            _json(out, review)
        return 0
    if (command, action) == ("staff", "revoke"):
        ended = await revoke_account(conn, args.username, f"cli:{actor}")
        await audit("staff.account.revoke", args.username, {"sessions_ended": ended})
        _json(out, {"username": args.username, "revoked": True, "sessions_ended": ended})
        return 0
    if (command, action) == ("ops", "purge"):
        job = await run_purge_job(
            conn,
            tenant,
            retention=dt.timedelta(hours=args.retention_hours),
            message_skew=dt.timedelta(minutes=5),
            created_by=f"cli:{actor}",
        )
        await audit("jobs.purge", str(job.id), job.counts)
        _json(out, job.to_json())
        return 0
    if (command, action) == ("ops", "stats"):
        first, last = parse_period(args.start, args.end, today=dt.date.today())
        rows = await statistics(conn, first, last, args.time_zone)
        await audit("statistics.read", None, {"from": str(first), "to": str(last)})
        if args.format == "csv":
            out.write(to_csv(rows, STATISTICS_FIELDS))
        else:
            _json(out, {"from": str(first), "to": str(last), "rows": rows})
        return 0
    if (command, action) == ("operations", "list"):
        _json(out, {"operations": await list_operations(conn, args)})
        await audit("operations.read", args.target, operation_filters(args))
        return 0
    if (command, action) == ("ops", "jobs"):
        jobs = await list_jobs(conn, kind=args.kind)
        _json(out, {"jobs": [j.to_json() for j in jobs]})
        return 0
    raise AdminCommandError(f"unknown command {command} {action}")
