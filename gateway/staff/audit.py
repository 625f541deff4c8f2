"""The audit trail: every staff operation, login, logout and refusal, and every CLI command
that reads personal records or changes accounts.

The table is append-only (the database refuses UPDATE and DELETE); an event
never holds a password, a token or a 個人番号.
"""

from __future__ import annotations

import json
from typing import Any

from chukan.gateway.core import db


async def audit(
    conn: db.Executor,
    *,
    actor_kind: str,
    actor: str | None,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    remote: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event to the audit trail (never a password, token or 個人番号)."""
    await conn.execute(
        "INSERT INTO audit_trail (actor_kind, actor, action, target, outcome, remote, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        actor_kind,
        actor,
        action,
        target,
        outcome,
        remote,
        json.dumps(detail or {}, ensure_ascii=False),
    )


async def read_events(
    conn: db.Executor, *, actor: str | None, action: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` events, optionally of one actor and/or one action, as JSON."""
    rows = await conn.fetch(
        """SELECT id, at, actor_kind, actor, action, target, outcome, remote, detail
           FROM audit_trail WHERE ($1::text IS NULL OR actor = $1)
             AND ($2::text IS NULL OR action = $2)
           ORDER BY id DESC LIMIT $3""",
        actor,
        action,
        limit,
    )
    return [
        {
            **{k: r[k] for k in ("id", "actor_kind", "actor", "action", "target")},
            "outcome": r["outcome"],
            "remote": r["remote"],
            "at": r["at"].isoformat(),
            "detail": json.loads(r["detail"]),
        }
        for r in rows
    ]
