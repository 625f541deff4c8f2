"""Staff accounts: creation, changes, revocation, the periodic review and the initial admin.

Shared by the staff API (:mod:`.routes`) and the command line
(``chukan staff …``); each caller writes its own audit event.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import structlog

from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.core.settings import StaffConfig
from chukan.gateway.core.state import utcnow
from chukan.gateway.core.web import require_str
from chukan.gateway.staff.audit import audit
from chukan.gateway.staff.errors import (
    AccountExistsError,
    AccountUnknownError,
    OfficeUnknownError,
)
from chukan.gateway.staff.offices import (
    CENTRAL_OFFICE,
    check_office_code,
    ensure_offices,
    parse_item_classes,
)
from chukan.gateway.staff.passwords import (
    MAX_PASSWORD_LENGTH,
    check_password_strength,
    hash_in_thread,
)
from chukan.gateway.staff.roles import parse_roles

log = structlog.get_logger("chukan.staff")

USERNAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
MAX_DISPLAY_NAME: Final = 200
#: What a request may change of an account (``PATCH``).
CHANGEABLE: Final = frozenset(
    {"roles", "display_name", "expires_at", "password", "unlock", "office", "item_classes"}
)

ACCOUNT_COLUMNS: Final = (
    "username, display_name, roles, created_at, created_by, expires_at, revoked_at, "
    "revoked_by, failed_logins, locked_until, last_login_at, password_changed_at, office, "
    "item_classes"
)


def account_json(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ACCOUNT_COLUMNS.split(", "):
        value = row[key]
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    out["roles"] = sorted(row["roles"])
    out["item_classes"] = sorted(row["item_classes"]) if row["item_classes"] is not None else None
    return out


def check_username(value: str) -> str:
    if not USERNAME_PATTERN.match(value):
        raise ValidationError("username must be 2-64 of a-z 0-9 . _ - starting with a letter")
    return value


def check_display_name(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_DISPLAY_NAME:
        raise ValidationError(
            f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters"
        )
    return value


def parse_expiry(value: Any) -> dt.datetime | None:
    """An ISO date (end of that day, UTC) or date-time with offset; None for no expiry."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("expires_at must be an ISO date or date-time")
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("expires_at must be an ISO date or date-time") from None
    if parsed.tzinfo is None:
        raise ValidationError("expires_at needs a UTC offset")
    return parsed


async def create_account(
    conn: db.Executor,
    *,
    username: str,
    roles: list[str],
    password_hash: str,
    created_by: str | None,
    display_name: str = "",
    expires_at: dt.datetime | None = None,
    office: str = CENTRAL_OFFICE,
    item_classes: list[str] | None = None,
) -> asyncpg.Record:
    """A new account of ``office`` (the default offices are seeded first: a tenant's first
    account may come from the command line before any gateway started)."""
    await ensure_offices(conn)
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO staff_accounts (username, display_name, roles, password_hash,
                    created_by, expires_at, office, item_classes)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ACCOUNT_COLUMNS}""",  # noqa: S608
            username,
            display_name,
            roles,
            password_hash,
            created_by,
            expires_at,
            office,
            item_classes,
        )
    except asyncpg.UniqueViolationError:
        raise AccountExistsError(f"account {username} already exists") from None
    except asyncpg.ForeignKeyViolationError:
        raise OfficeUnknownError(f"no office {office}") from None
    assert row is not None
    return row


async def find_account(conn: db.Executor, username: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS} FROM staff_accounts WHERE username = $1",  # noqa: S608
        username,
    )


async def all_accounts(conn: db.Executor) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM staff_accounts ORDER BY username"  # noqa: S608
        )
    )


async def password_hash_of(conn: db.Executor, username: str) -> str:
    stored: str = await conn.fetchval(
        "SELECT password_hash FROM staff_accounts WHERE username = $1", username
    )
    return stored


async def set_password(conn: db.Executor, username: str, password_hash: str) -> None:
    await conn.execute(
        "UPDATE staff_accounts SET password_hash = $2, password_changed_at = now() "
        "WHERE username = $1",
        username,
        password_hash,
    )


@dataclass
class AccountUpdate:
    """The SQL assignments of one checked ``PATCH`` of an account (password already hashed)."""

    username: str
    assignments: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def put(self, column: str, value: Any) -> None:
        self.args.append(value)
        self.assignments.append(f"{column} = ${len(self.args) + 1}")


async def plan_update(data: Mapping[str, Any], config: StaffConfig, username: str) -> AccountUpdate:
    """Check a change of roles, display name, expiry, password (reset) or lockout."""
    unknown = set(data) - CHANGEABLE
    if unknown or not data:
        raise ValidationError(f"fields that can change: {', '.join(sorted(CHANGEABLE))}")
    update = AccountUpdate(username)
    if "roles" in data:
        update.put("roles", parse_roles(data["roles"]))
    if "display_name" in data:
        update.put("display_name", check_display_name(data["display_name"]))
    if "expires_at" in data:
        update.put("expires_at", parse_expiry(data["expires_at"]))
    if "office" in data:
        update.put("office", check_office_code(data["office"]))
    if "item_classes" in data:
        update.put("item_classes", parse_item_classes(data["item_classes"]))
    if data.get("unlock") is True:
        update.assignments.append("failed_logins = 0, locked_until = NULL")
    elif "unlock" in data and data["unlock"] is not False:
        raise ValidationError("unlock must be true or false")
    if "password" in data:
        password = require_str(data, "password", max_length=MAX_PASSWORD_LENGTH)
        check_password_strength(password, config, username)
        update.put("password_hash", await hash_in_thread(config, password))
        update.assignments.append("password_changed_at = now()")
    if not update.assignments:
        raise ValidationError("nothing to change")
    return update


async def update_account(conn: db.Executor, update: AccountUpdate) -> asyncpg.Record:
    try:
        row = await conn.fetchrow(
            f"UPDATE staff_accounts SET {', '.join(update.assignments)} "  # noqa: S608
            f"WHERE username = $1 RETURNING {ACCOUNT_COLUMNS}",
            update.username,
            *update.args,
        )
    except asyncpg.ForeignKeyViolationError:
        raise OfficeUnknownError("no such office") from None
    if row is None:
        raise AccountUnknownError(f"no account {update.username}")
    return row


async def review_accounts(conn: db.Executor, unused_days: int) -> dict[str, Any]:
    """Accounts nobody used for ``unused_days`` and accounts past expiry (not revoked)."""
    unused = await conn.fetch(
        f"""SELECT {ACCOUNT_COLUMNS} FROM staff_accounts
            WHERE revoked_at IS NULL
              AND COALESCE(last_login_at, created_at) < now() - make_interval(days => $1)
            ORDER BY username""",  # noqa: S608 -- fixed column list
        unused_days,
    )
    expired = await conn.fetch(
        f"""SELECT {ACCOUNT_COLUMNS} FROM staff_accounts
            WHERE revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
            ORDER BY username""",  # noqa: S608 -- fixed column list
    )
    return {
        "unused_days": unused_days,
        "generated_at": utcnow().isoformat(),
        "unused": [account_json(r) for r in unused],
        "expired": [account_json(r) for r in expired],
    }


async def revoke_account(conn: db.Conn, username: str, by: str | None) -> int:
    """Revoke at once: the account and every live session of it; returns sessions ended."""
    async with conn.transaction():
        found = await conn.fetchval(
            "UPDATE staff_accounts SET revoked_at = COALESCE(revoked_at, now()), "
            "revoked_by = COALESCE(revoked_by, $2) WHERE username = $1 RETURNING 1",
            username,
            by,
        )
        if not found:
            raise AccountUnknownError(f"no account {username}")
        ended = await conn.fetchval(
            """WITH ended AS (UPDATE staff_sessions SET ended_at = now(), end_reason = 'revoked'
                              WHERE username = $1 AND ended_at IS NULL RETURNING 1)
               SELECT count(*) FROM ended""",
            username,
        )
    return int(ended)


async def ensure_initial_admin(conn: db.Executor, config: StaffConfig) -> bool:
    """Create the configured initial administrator when the tenant has no live admin."""
    admin = config.initial_admin
    await ensure_offices(conn)
    if admin is None:
        return False
    check_username(admin.username)
    created = await conn.fetchval(
        """INSERT INTO staff_accounts (username, display_name, roles, password_hash, created_by,
                                       office)
           SELECT $1, 'initial administrator', ARRAY['admin'], $2, 'configuration',
                  'kaigo-hoken-kanri'
           WHERE NOT EXISTS (SELECT 1 FROM staff_accounts
                             WHERE 'admin' = ANY (roles) AND revoked_at IS NULL)
           ON CONFLICT DO NOTHING RETURNING 1""",
        admin.username,
        admin.password_hash,
    )
    if created:
        await audit(
            conn,
            actor_kind="gateway",
            actor="configuration",
            action="staff.account.bootstrap",
            target=admin.username,
        )
        log.info("staff_initial_admin_created", username=admin.username)
    return bool(created)
