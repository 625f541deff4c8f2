"""Person lifecycle reported by the 団体内統合宛名システム: 転出, 死亡, merge, unregistration.

Each event changes the person's state (``persons.state``) and is appended to
``person_events`` (who, when, request id) in one transaction; an event the hub must
know (unregistration, merge) also leaves a ``person_notices`` row, sent after the
commit and closed by the hub's signed receipt.  A repeated event (same kind, date and
survivor) changes nothing and re-sends what the hub has not acknowledged, so a core
system retries safely.  The effects on the 符号, the 副本 and provisions are described
in docs/persons.md.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final

import structlog

from chukan.codecs.envelope import PersonNotice, PersonNoticeReceipt
from chukan.gateway.core import db
from chukan.gateway.core.errors import PersonUnknownError, UpstreamError, ValidationError
from chukan.gateway.core.state import GatewayState
from chukan.gateway.core.web import current_request_id
from chukan.gateway.persons.errors import PersonStateConflictError
from chukan.gateway.replica.items import today_jst

log = structlog.get_logger("chukan.gateway")

#: Events a core system may report, and the state each one leads to.
EVENT_KINDS: Final = ("moved_out", "deceased", "merged", "unregistered")
#: From which states each event may come (a state not listed: 409 person_state_conflict).
ALLOWED_FROM: Final[dict[str, frozenset[str]]] = {
    "moved_out": frozenset({"active"}),
    "deceased": frozenset({"active", "moved_out"}),
    "merged": frozenset({"active", "moved_out", "deceased"}),
    "unregistered": frozenset({"active", "moved_out", "deceased"}),
}
#: States a survivor of a merge may be in: it keeps a 符号 the hub can route to.
SURVIVOR_STATES: Final = frozenset({"active", "moved_out", "deceased"})


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What one reported event did, as the API answers it."""

    atena_id: str
    kind: str
    state: str
    event_date: dt.date
    merged_into: str | None
    event_id: int
    repeated: bool
    hub_notified: bool | None  # None: nothing to tell the hub

    def to_json(self) -> dict[str, Any]:
        return {
            "atena_id": self.atena_id,
            "event": self.kind,
            "state": self.state,
            "event_date": self.event_date.isoformat(),
            "merged_into": self.merged_into,
            "event_id": self.event_id,
            "repeated": self.repeated,
            "hub_notified": self.hub_notified,
        }


async def report_event(
    state: GatewayState,
    caller: str,
    atena_id: str,
    kind: str,
    event_date: dt.date | None,
    into: str | None,
) -> EventOutcome:
    """Apply one lifecycle event (one transaction), then tell the hub what it must know."""
    if kind not in EVENT_KINDS:
        raise ValidationError(f"event must be one of {', '.join(EVENT_KINDS)}")
    if (kind == "merged") != (into is not None):
        raise ValidationError("a merge, and only a merge, names the surviving 宛名番号 (into)")
    if into == atena_id:
        raise ValidationError("a 宛名番号 cannot be merged into itself")
    on = event_date or today_jst()
    async with state.pool.acquire() as conn:
        async with conn.transaction():
            outcome = await _apply(conn, caller, atena_id, kind, on, into)
        notified = None
        if kind in ("merged", "unregistered"):
            notified = await send_open_notices(state, conn, atena_id)
    log.info(
        "person_event",
        kind=kind,
        caller=caller,
        repeated=outcome.repeated,
        hub_notified=notified,
    )
    return EventOutcome(
        outcome.atena_id,
        kind,
        outcome.state,
        outcome.event_date,
        outcome.merged_into,
        outcome.event_id,
        outcome.repeated,
        notified,
    )


async def _apply(
    conn: db.Conn, caller: str, atena_id: str, kind: str, on: dt.date, into: str | None
) -> EventOutcome:
    # Both people of a merge are locked in one statement, in key order (no deadlock).
    rows = await conn.fetch(
        "SELECT atena_id, person_code, state, state_date, merged_into FROM persons "
        "WHERE atena_id = ANY($1::text[]) ORDER BY atena_id FOR UPDATE",
        [atena_id] if into is None else [atena_id, into],
    )
    people = {row["atena_id"]: row for row in rows}
    person = people.get(atena_id)
    if person is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    if person["state"] == kind and person["state_date"] == on and person["merged_into"] == into:
        last: int = await conn.fetchval(
            "SELECT max(id) FROM person_events WHERE atena_id = $1 AND kind = $2",
            atena_id,
            kind,
        )
        return EventOutcome(atena_id, kind, kind, on, into, last, True, None)
    if person["state"] not in ALLOWED_FROM[kind]:
        raise PersonStateConflictError(
            f"the person is {person['state']}: a {kind} event cannot follow"
        )
    successor_code = None
    if into is not None:
        survivor = people.get(into)
        if survivor is None:
            raise PersonUnknownError("the surviving 宛名番号 is not registered")
        if survivor["state"] not in SURVIVOR_STATES:
            raise PersonStateConflictError(
                f"the surviving 宛名番号 is {survivor['state']}: nothing merges into it"
            )
        successor_code = survivor["person_code"]
        # Earlier merges into the retired 宛名番号 now point at the survivor too.
        await conn.execute(
            "UPDATE persons SET merged_into = $2 WHERE merged_into = $1 AND state = 'merged'",
            atena_id,
            into,
        )
    await conn.execute(
        "UPDATE persons SET state = $2, state_date = $3, state_changed_at = now(), "
        "merged_into = $4 WHERE atena_id = $1",
        atena_id,
        kind,
        on,
        into,
    )
    event_id: int = await conn.fetchval(
        """INSERT INTO person_events (atena_id, kind, event_date, other_atena_id, detail,
               actor, request_id)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING id""",
        atena_id,
        kind,
        on,
        into,
        json.dumps({"from_state": person["state"]}),
        caller,
        current_request_id(),
    )
    if kind in ("merged", "unregistered"):
        await conn.execute(
            """INSERT INTO person_notices (notice_id, event_id, atena_id, kind, person_code,
                   successor_code)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            secrets.token_urlsafe(18),
            event_id,
            atena_id,
            kind,
            person["person_code"],
            successor_code,
        )
    return EventOutcome(atena_id, kind, kind, on, into, event_id, False, None)


async def send_open_notices(state: GatewayState, conn: db.Conn, atena_id: str | None) -> bool:
    """Send the notices the hub has not acknowledged (one person's, or all); True when
    none is left open.  A notice is closed only by the hub's signed receipt for it."""
    rows = await conn.fetch(
        "SELECT notice_id, kind, person_code, successor_code FROM person_notices "
        "WHERE acknowledged_at IS NULL AND ($1::text IS NULL OR atena_id = $1) "
        "ORDER BY created_at",
        atena_id,
    )
    all_done = True
    for row in rows:
        notice = PersonNotice(
            row["notice_id"], row["kind"], row["person_code"], row["successor_code"]
        )
        try:
            reply = await state.hub.send(notice)
        except UpstreamError:
            all_done = False
            log.warning("person_notice_unsent", kind=notice.kind, reason="hub_unreachable")
            continue
        if reply.status != 200:
            all_done = False
            code, _ = reply.error()
            log.warning("person_notice_refused", kind=notice.kind, status=reply.status, code=code)
            continue
        receipt = state.hub.open_reply(reply).body
        if not isinstance(receipt, PersonNoticeReceipt) or receipt.notice_id != notice.notice_id:
            all_done = False
            log.warning("person_notice_unsent", kind=notice.kind, reason="unexpected_receipt")
            continue
        await conn.execute(
            "UPDATE person_notices SET acknowledged_at = $2, receipt = $3 "
            "WHERE notice_id = $1 AND acknowledged_at IS NULL",
            notice.notice_id,
            receipt.received_at,
            reply.body,
        )
        log.info("person_notice_acknowledged", kind=notice.kind)
    return all_done


async def person_view(conn: db.Executor, atena_id: str) -> dict[str, Any]:
    """The person's state and lifecycle history (no 符号: the core systems never see it)."""
    person = await conn.fetchrow(
        "SELECT atena_id, state, state_date, state_changed_at, merged_into, registered_at, "
        "(SELECT count(*) FROM person_notices n WHERE n.atena_id = p.atena_id "
        " AND n.acknowledged_at IS NULL) AS open_notices "
        "FROM persons p WHERE atena_id = $1",
        atena_id,
    )
    if person is None:
        raise PersonUnknownError("no person with this 宛名番号 is registered")
    events = await conn.fetch(
        "SELECT id, kind, event_date, other_atena_id, detail, actor, request_id, recorded_at "
        "FROM person_events WHERE atena_id = $1 ORDER BY id",
        atena_id,
    )
    return {
        "atena_id": atena_id,
        "state": person["state"],
        "state_date": _iso(person["state_date"]),
        "state_changed_at": _iso(person["state_changed_at"]),
        "merged_into": person["merged_into"],
        "registered_at": person["registered_at"].isoformat(),
        "hub_notified": person["open_notices"] == 0,
        "events": [
            {
                "id": e["id"],
                "event": e["kind"],
                "event_date": _iso(e["event_date"]),
                "other_atena_id": e["other_atena_id"],
                "detail": json.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"],
                "actor": e["actor"],
                "request_id": e["request_id"],
                "recorded_at": e["recorded_at"].isoformat(),
            }
            for e in events
        ],
    }


def _iso(value: dt.date | dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()
