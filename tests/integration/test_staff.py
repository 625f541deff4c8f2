"""Staff accounts (職員認証・権限管理) over real HTTP against a real gateway and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from conftest import OPS_AGENCY, ROOT_PASSWORD

from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.staff.sessions import token_sha256

pytestmark = pytest.mark.integration


def new_password() -> str:
    return f"Pw-{secrets.token_urlsafe(12)}"


async def login(api: Any, username: str, password: str) -> tuple[int, Any]:
    result: tuple[int, Any] = await api.call(
        "POST",
        "/staff/v1/login",
        json={"username": username, "password": password},
        headers={"Authorization": ""},
    )
    return result


async def session(api: Any, username: str, password: str) -> str:
    status, body = await login(api, username, password)
    assert status == 200, body
    token: str = body["token"]
    return token


async def make_account(api: Any, admin: str, roles: list[str], **extra: Any) -> tuple[str, str]:
    username = f"u{secrets.token_hex(4)}"
    password = new_password()
    status, body = await api.call(
        "POST",
        "/staff/v1/accounts",
        token=admin,
        json={
            "username": username,
            "password": password,
            "roles": roles,
            "office": "kaigo-hoken-kanri",
            **extra,
        },
    )
    assert status == 201, body
    return username, password


@pytest.fixture
async def admin(ops_gateway: Any) -> str:
    return await session(ops_gateway, "root", ROOT_PASSWORD)


async def owner(api: Any) -> asyncpg.Connection:
    return await asyncpg.connect(api.gateway.config.migration_database_url)


async def test_configured_initial_admin_logs_in_and_out_and_both_are_audited(
    ops_gateway: Any, log_capture: Any
) -> None:
    status, body = await login(ops_gateway, "root", ROOT_PASSWORD)
    assert status == 200 and body["roles"] == ["admin"]
    token = body["token"]
    status, me = await ops_gateway.call("GET", "/staff/v1/me", token=token)
    assert status == 200 and me["username"] == "root" and "password_hash" not in me
    assert (await ops_gateway.call("POST", "/staff/v1/logout", token=token))[0] == 200
    status, body = await ops_gateway.call("GET", "/staff/v1/me", token=token)
    assert status == 401 and body["error"]["code"] == "session_invalid"
    conn = await owner(ops_gateway)
    try:
        events = await conn.fetch(
            "SELECT action, outcome, remote FROM audit_trail WHERE tenant = $1 AND actor = 'root' "
            "ORDER BY id",
            OPS_AGENCY,
        )
        actions = [(e["action"], e["outcome"]) for e in events]
        assert ("staff.account.bootstrap", "ok") in [
            (r["action"], r["outcome"])
            for r in await conn.fetch(
                "SELECT action, outcome FROM audit_trail WHERE tenant = $1", OPS_AGENCY
            )
        ]
        assert ("staff.login", "ok") in actions and ("staff.logout", "ok") in actions
        assert all(e["remote"] == "127.0.0.1" for e in events if e["action"] == "staff.login")
        # The token is kept as a digest only; the password as an scrypt hash.
        assert not await conn.fetchval(
            "SELECT count(*) FROM staff_sessions WHERE encode(token_sha256, 'escape') = $1", token
        )
        stored = await conn.fetchval(
            "SELECT password_hash FROM staff_accounts WHERE tenant = $1 AND username = 'root'",
            OPS_AGENCY,
        )
        assert stored.startswith("scrypt$1024$8$1$")
    finally:
        await conn.close()
    logs = log_capture.getvalue()
    assert ROOT_PASSWORD not in logs and token not in logs
    assert log_capture.named("staff_logged_in") and log_capture.named("staff_logged_out")


async def test_roles_decide_and_refusals_are_recorded(ops_gateway: Any, admin: str) -> None:
    user, password = await make_account(ops_gateway, admin, ["operator"])
    token = await session(ops_gateway, user, password)
    status, body = await ops_gateway.call("GET", "/staff/v1/accounts", token=token)
    assert status == 403 and body["error"]["code"] == "role_required"
    status, body = await ops_gateway.call("GET", "/staff/v1/accounts")  # a system token
    assert status == 401 and body["error"]["code"] == "session_invalid"
    assert (await ops_gateway.call("GET", "/staff/v1/jobs", token=token))[0] == 200
    conn = await owner(ops_gateway)
    try:
        refused = await conn.fetchrow(
            "SELECT target, remote, detail FROM audit_trail WHERE tenant = $1 AND actor = $2 "
            "AND action = 'staff.refused'",
            OPS_AGENCY,
            user,
        )
        assert refused is not None
        assert refused["target"] == "GET /staff/v1/accounts"
        assert refused["remote"] == "127.0.0.1"
        assert '"role_required"' in refused["detail"]
    finally:
        await conn.close()


async def test_account_crud_validates_and_never_half_applies(ops_gateway: Any, admin: str) -> None:
    user, _ = await make_account(ops_gateway, admin, ["auditor"], display_name="監査 花子")
    body: Any
    status, body = await ops_gateway.call(
        "POST",
        "/staff/v1/accounts",
        token=admin,
        json={
            "username": user,
            "password": new_password(),
            "roles": ["auditor"],
            "office": "kaigo-hoken-kanri",
        },
    )
    assert status == 409 and body["error"]["code"] == "account_exists"
    for payload, code in (
        ({"username": "x" + user, "password": "short", "roles": ["admin"]}, "password_too_weak"),
        ({"username": "x" + user, "password": new_password(), "roles": ["root"]}, None),
        ({"username": "Bad Name", "password": new_password(), "roles": ["admin"]}, None),
        (
            {
                "username": "x" + user,
                "password": new_password(),
                "roles": ["admin"],
                "expires_at": "tomorrow",
            },
            None,
        ),
    ):
        status, body = await ops_gateway.call(
            "POST",
            "/staff/v1/accounts",
            token=admin,
            json={"office": "kaigo-hoken-kanri", **payload},
        )
        assert status == 422, body
        assert body["error"]["code"] == (code or "validation_failed")
    assert (await ops_gateway.call("GET", f"/staff/v1/accounts/x{user}", token=admin))[0] == 404
    status, body = await ops_gateway.call(
        "PATCH",
        f"/staff/v1/accounts/{user}",
        token=admin,
        json={"roles": ["auditor", "approver"], "expires_at": "2099-12-31"},
    )
    assert status == 200 and body["roles"] == ["approver", "auditor"]
    assert body["expires_at"].startswith("2100-01-01")
    # A bad field in a PATCH changes nothing at all.
    status, _ = await ops_gateway.call(
        "PATCH",
        f"/staff/v1/accounts/{user}",
        token=admin,
        json={"roles": ["operator"], "password": "weak"},
    )
    assert status == 422
    status, body = await ops_gateway.call("GET", f"/staff/v1/accounts/{user}", token=admin)
    assert body["roles"] == ["approver", "auditor"] and body["display_name"] == "監査 花子"
    status, listing = await ops_gateway.call("GET", "/staff/v1/accounts", token=admin)
    assert user in [a["username"] for a in listing["accounts"]]


async def _session_clock(conn: asyncpg.Connection, token: str) -> tuple[dt.timedelta, dt.timedelta]:
    """(age, time since last use) of a session, by the database clock the gateway judges
    idleness with."""
    row = await conn.fetchrow(
        "SELECT now() - created_at AS age, now() - last_seen_at AS unused FROM staff_sessions "
        "WHERE tenant = $1 AND token_sha256 = $2",
        OPS_AGENCY,
        token_sha256(token),
    )
    assert row is not None
    return row["age"], row["unused"]


async def _until(
    condition: Callable[[], Awaitable[bool]], what: str, deadline: float = 15.0
) -> None:
    """Poll ``condition()`` until it holds, failing after ``deadline`` seconds."""
    stop = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > stop:
            pytest.fail(f"still not {what} after {deadline} s")
        await asyncio.sleep(0.05)


async def test_idle_sessions_end(ops_gateway: Any, admin: str) -> None:
    """A session in use outlives the idle timeout; once unused for longer, it has ended.

    Each step waits for a fact on the database clock (the session's age, the time since
    its last use) instead of sleeping for a guessed time."""
    idle: dt.timedelta = ops_gateway.gateway.config.staff.idle_timeout  # 1 s in this gateway
    user, password = await make_account(ops_gateway, admin, ["operator"])
    token = await session(ops_gateway, user, password)
    conn = await owner(ops_gateway)
    try:

        async def in_use_past_the_timeout() -> bool:
            status, body = await ops_gateway.call("GET", "/staff/v1/me", token=token)
            assert status == 200, body  # every use restarts the idle clock
            age, _ = await _session_clock(conn, token)
            return age > idle

        await _until(in_use_past_the_timeout, "older than the idle timeout")

        async def unused_past_the_timeout() -> bool:
            _, unused = await _session_clock(conn, token)
            return unused > idle

        await _until(unused_past_the_timeout, "idle")
        status, body = await ops_gateway.call("GET", "/staff/v1/me", token=token)
        assert status == 401 and body["error"]["code"] == "session_invalid"
        reason = await conn.fetchval(
            "SELECT end_reason FROM staff_sessions WHERE tenant = $1 AND username = $2",
            OPS_AGENCY,
            user,
        )
        assert reason == "idle"
    finally:
        await conn.close()


async def test_revocation_ends_live_sessions_at_once(ops_gateway: Any, admin: str) -> None:
    user, password = await make_account(ops_gateway, admin, ["approver"])
    tokens = [await session(ops_gateway, user, password) for _ in range(2)]
    status, body = await ops_gateway.call("DELETE", f"/staff/v1/accounts/{user}", token=admin)
    assert status == 200 and body["sessions_ended"] == 2
    for token in tokens:
        status, body = await ops_gateway.call("GET", "/staff/v1/me", token=token)
        assert status == 401
    status, body = await login(ops_gateway, user, password)
    assert status == 401 and body["error"]["code"] == "login_failed"


async def test_expired_accounts_cannot_log_in_and_their_sessions_end(
    ops_gateway: Any, admin: str
) -> None:
    user, password = await make_account(ops_gateway, admin, ["auditor"])
    token = await session(ops_gateway, user, password)
    status, _ = await ops_gateway.call(
        "PATCH",
        f"/staff/v1/accounts/{user}",
        token=admin,
        json={"expires_at": "2020-01-01T00:00:00+09:00"},
    )
    assert status == 200
    assert (await ops_gateway.call("GET", "/staff/v1/me", token=token))[0] == 401
    assert (await login(ops_gateway, user, password))[0] == 401
    conn = await owner(ops_gateway)
    try:
        reasons = await conn.fetch(
            "SELECT end_reason FROM staff_sessions WHERE tenant = $1 AND username = $2",
            OPS_AGENCY,
            user,
        )
        assert [r["end_reason"] for r in reasons] == ["expired"]
        detail = await conn.fetchval(
            "SELECT detail->>'reason' FROM audit_trail WHERE tenant = $1 AND actor = $2 "
            "AND action = 'staff.login' AND outcome = 'refused'",
            OPS_AGENCY,
            user,
        )
        assert detail == "expired"
    finally:
        await conn.close()


async def test_repeated_failures_lock_the_account(
    ops_gateway: Any, admin: str, log_capture: Any
) -> None:
    user, password = await make_account(ops_gateway, admin, ["operator"])
    for _ in range(3):
        status, body = await login(ops_gateway, user, "wrong-password-123")
        assert status == 401 and body["error"]["code"] == "login_failed"
    # Right, but locked: refused with the very answer a wrong password or an unknown
    # user gets (it must not tell that the account exists); the trail keeps why.
    status, locked_body = await login(ops_gateway, user, password)
    assert status == 401 and locked_body == body
    conn = await owner(ops_gateway)
    try:
        reasons = await conn.fetch(
            "SELECT detail->>'reason' AS reason FROM audit_trail WHERE tenant = $1 "
            "AND actor = $2 AND action = 'staff.login' AND outcome = 'refused' ORDER BY id",
            OPS_AGENCY,
            user,
        )
        assert [r["reason"] for r in reasons] == ["wrong_password"] * 2 + ["locked_now", "locked"]
    finally:
        await conn.close()
    status, _ = await ops_gateway.call(
        "PATCH", f"/staff/v1/accounts/{user}", token=admin, json={"unlock": True}
    )
    assert status == 200
    assert (await login(ops_gateway, user, password))[0] == 200
    # Unknown users get the same answer as wrong passwords.
    status, unknown_body = await login(ops_gateway, "nobody-here", "wrong-password-123")
    assert status == 401 and unknown_body == body
    assert "wrong-password-123" not in log_capture.getvalue()


async def test_own_password_change(ops_gateway: Any, admin: str) -> None:
    user, password = await make_account(ops_gateway, admin, ["operator"])
    token = await session(ops_gateway, user, password)
    replacement = new_password()
    status, _ = await ops_gateway.call(
        "POST",
        "/staff/v1/me/password",
        token=token,
        json={"current_password": "not-it-at-all", "new_password": replacement},
    )
    assert status == 401
    status, _ = await ops_gateway.call(
        "POST",
        "/staff/v1/me/password",
        token=token,
        json={"current_password": password, "new_password": replacement},
    )
    assert status == 200
    assert (await login(ops_gateway, user, password))[0] == 401
    assert (await login(ops_gateway, user, replacement))[0] == 200


async def test_review_report_lists_unused_and_expired_accounts(
    ops_gateway: Any, admin: str
) -> None:
    stale, _ = await make_account(ops_gateway, admin, ["operator"])
    expired, _ = await make_account(ops_gateway, admin, ["operator"], expires_at="2021-03-31")
    fresh, password = await make_account(ops_gateway, admin, ["operator"])
    await session(ops_gateway, fresh, password)
    conn = await owner(ops_gateway)
    try:
        await conn.execute(
            "UPDATE staff_accounts SET created_at = now() - interval '200 days' "
            "WHERE tenant = $1 AND username = $2",
            OPS_AGENCY,
            stale,
        )
    finally:
        await conn.close()
    status, report = await ops_gateway.call(
        "GET", "/staff/v1/reviews/accounts?unused_days=90", token=admin
    )
    assert status == 200
    unused = {a["username"] for a in report["unused"]}
    assert stale in unused and fresh not in unused
    assert expired in {a["username"] for a in report["expired"]}
    assert (await ops_gateway.call("GET", "/staff/v1/reviews/accounts?unused_days=x", token=admin))[
        0
    ] == 422
    # The same report from the command line, as CSV.
    out = io.StringIO()
    args = _parse(
        "staff", "review", "--tenant", OPS_AGENCY, "--unused-days", "90", "--format", "csv"
    )
    url = ops_gateway.gateway.config.migration_database_url
    assert await admin_cli.run(args, url, out, io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("finding,username,")
    assert any(line.startswith(f"unused,{stale},") for line in lines)
    assert any(line.startswith(f"expired,{expired},") for line in lines)


def _parse(*argv: str) -> Any:
    """The real ``chukan`` parser (without its logging set-up)."""
    import argparse

    parser = argparse.ArgumentParser(prog="chukan")
    commands = parser.add_subparsers(dest="command", required=True)
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    return parser.parse_args(argv)


async def test_cli_creates_an_admin_and_revokes_accounts(ops_gateway: Any, admin: str) -> None:
    url = ops_gateway.gateway.config.migration_database_url
    username = f"a{secrets.token_hex(4)}"
    password = new_password()
    out = io.StringIO()
    args = _parse(
        "staff", "create-admin", "--tenant", OPS_AGENCY, "--username", username,
        "--password-stdin", "--actor", "ops-team",
    )  # fmt: skip
    assert await admin_cli.run(args, url, out, io.StringIO(password + "\n")) == 0
    assert '"admin"' in out.getvalue() and password not in out.getvalue()
    token = await session(ops_gateway, username, password)
    # Generated password, shown once.
    out = io.StringIO()
    args = _parse("staff", "create-admin", "--tenant", OPS_AGENCY, "--username", username + "b")
    assert await admin_cli.run(args, url, out, io.StringIO()) == 0
    assert '"password"' in out.getvalue()
    # Existing account: a clean error, exit status 2.
    assert await admin_cli.run(args, url, io.StringIO(), io.StringIO()) == 2
    args = _parse("staff", "revoke", "--tenant", OPS_AGENCY, "--username", username)
    assert await admin_cli.run(args, url, io.StringIO(), io.StringIO()) == 0
    assert (await ops_gateway.call("GET", "/staff/v1/me", token=token))[0] == 401
    conn = await owner(ops_gateway)
    try:
        actors = await conn.fetch(
            "SELECT actor_kind, actor, action FROM audit_trail WHERE tenant = $1 AND target = $2",
            OPS_AGENCY,
            username,
        )
        assert ("cli", "ops-team", "staff.account.create") in [tuple(r) for r in actors]
    finally:
        await conn.close()


async def test_the_audit_trail_is_append_only_and_readable_by_auditors(
    ops_gateway: Any, admin: str
) -> None:
    user, password = await make_account(ops_gateway, admin, ["auditor"])
    token = await session(ops_gateway, user, password)
    status, body = await ops_gateway.call(
        "GET", "/staff/v1/audit?action=staff.login&limit=5", token=token
    )
    assert status == 200 and body["events"]
    assert all(e["action"] == "staff.login" for e in body["events"])
    conn = await owner(ops_gateway)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE audit_trail SET actor = 'someone-else'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM audit_trail")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE audit_trail")
    finally:
        await conn.close()
    tenant = await asyncpg.connect(ops_gateway.gateway.config.database_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("DELETE FROM audit_trail")
    finally:
        await tenant.close()
