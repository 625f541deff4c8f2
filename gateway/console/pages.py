"""The console's pages (職員画面), server-rendered in Japanese.

Where the staff JSON API has the data, a page calls that API's own handler
in-process and renders its JSON: the roles it checks, its validation and its
audit event are then the API's by construction (a page cannot drift from its
API).  ``?format=csv`` of the statistics and the disclosure passes the API's CSV
through.  Decisions and account changes call the same functions as the API.
Pages without an API (the record search, the 副本 of a person, long sessions)
name their roles here; docs/console.md lists them all.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from chukan.gateway.console import views
from chukan.gateway.console.security import (
    BASE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    clear_cookie,
    redirect,
    render,
    secure,
    set_cookie,
)
from chukan.gateway.core.errors import PersonUnknownError, ValidationError
from chukan.gateway.core.refusals import REFUSAL_COUNTED
from chukan.gateway.core.settings import MAX_LONG_SESSION_HOURS
from chukan.gateway.core.state import GATEWAY_STATE, utcnow
from chukan.gateway.core.validation import ATENA_PATTERN, QUERY_ID_PATTERN
from chukan.gateway.ops import routes as ops
from chukan.gateway.ops.statistics import parse_period, today_in
from chukan.gateway.provision import review
from chukan.gateway.records import routes as records
from chukan.gateway.records.store import OUTCOMES
from chukan.gateway.replica.errors import ReplicaInconsistentError
from chukan.gateway.replica.items import item_history, provision_document, today_jst
from chukan.gateway.staff import routes as staff_api
from chukan.gateway.staff.errors import LoginFailedError
from chukan.gateway.staff.offices import ITEM_CLASS_LABELS, all_offices, visible_codes
from chukan.gateway.staff.passwords import MAX_PASSWORD_LENGTH
from chukan.gateway.staff.roles import ROLE_ADMIN, ROLE_APPROVER, ROLE_AUDITOR, ROLES
from chukan.gateway.staff.sessions import STAFF_SESSION, audit_staff, log_out, require_staff

#: Who searches provision records: the disclosure API's role (the same records).
RECORD_READERS: Final = (ROLE_AUDITOR,)
#: Who reads a person's 副本: the roles that see a held item's document in the review API.
REPLICA_READERS: Final = (ROLE_APPROVER, ROLE_AUDITOR)
#: Who reads the long-session report: the account review's roles.
SESSION_READERS: Final = (ROLE_ADMIN, ROLE_AUDITOR)
#: Sessions logged on longer than this are listed unless ``?hours=`` says otherwise.
MAX_RECORD_ROWS: Final = 500
#: Reason codes a refusing approver can choose (sent to the requester as the reason).
REFUSAL_REASONS: Final = (
    (review.REVIEW_REFUSED, "審査の結果、提供しない"),
    ("person_identity_doubtful", "本人の特定に疑義がある"),
    ("legal_basis_unconfirmed", "根拠となる事務に該当しない"),
)
FAILED_LOGIN_MESSAGE: Final = (
    "ユーザー名またはパスワードが正しくないか、このアカウントは現在使用できません。"
)

STATIC: Final = Path(__file__).parent / "static"


def api_json(response: web.StreamResponse) -> dict[str, Any]:
    """The JSON body of a staff API handler's answer."""
    assert isinstance(response, web.Response)
    assert isinstance(response.body, bytes)
    value: dict[str, Any] = json.loads(response.body)
    return value


def _is_download(response: web.StreamResponse) -> bool:
    return response.content_type == "text/csv"


# -- login, logout, home -------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", {"failed": False})


async def login(request: web.Request) -> web.Response:
    """One answer (401, the same page) for an unknown user, a wrong password, a locked,
    revoked or expired account; the audit trail keeps the real reason."""
    form = await request.post()
    username = form.get("username")
    password = form.get("password")
    state = request.config_dict[GATEWAY_STATE]
    try:
        if not isinstance(username, str) or not isinstance(password, str):
            raise LoginFailedError("user name and password are required")
        username = username.strip()
        if not username or not password or len(username) > 64:
            raise LoginFailedError("user name and password are required")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise LoginFailedError("password too long")
        answer = await staff_api.logged_in(request, state, username, password)
    except LoginFailedError:
        request[REFUSAL_COUNTED] = True
        return render(
            request, "login.html", {"failed": True, "message": FAILED_LOGIN_MESSAGE}, status=401
        )
    response = redirect(BASE)
    set_cookie(response, SESSION_COOKIE, answer["token"])
    clear_cookie(response, LOGIN_COOKIE)
    return response


async def logout(request: web.Request) -> web.Response:
    session = await require_staff(request)
    await log_out(request, session)
    response = redirect(BASE + "login")
    clear_cookie(response, SESSION_COOKIE)
    return response


async def home(request: web.Request) -> web.Response:
    session = await require_staff(request)
    return render(
        request,
        "home.html",
        {"roles": [views.ROLE_LABELS.get(r, r) for r in sorted(session.roles)]},
    )


async def stylesheet(request: web.Request) -> web.StreamResponse:
    response = web.Response(
        body=(STATIC / "console.css").read_bytes(), content_type="text/css", charset="utf-8"
    )
    return secure(response, cache=True)


# -- 自動応答不可: the manual-review queue ----------------------------------------------------


async def review_queue(request: web.Request) -> web.Response:
    answer = api_json(await review.staff_list_reviews(request))
    return render(
        request,
        "review_queue.html",
        {
            "reviews": answer["reviews"],
            "status": request.query.get("status", "pending"),
            "statuses": views.REVIEW_STATUS_LABELS,
            "item_name": views.item_name,
        },
    )


async def review_detail(request: web.Request) -> web.Response:
    answer = api_json(await review.staff_get_review(request))
    document = answer.pop("document")
    return render(
        request,
        "review_detail.html",
        {
            "review": answer,
            "fields": views.item_fields(document) if document is not None else [],
            "item_name": views.item_name(answer["item_code"]),
            "statuses": views.REVIEW_STATUS_LABELS,
            "outcomes": views.OUTCOME_LABELS,
            "reasons": REFUSAL_REASONS,
        },
    )


async def review_decide(request: web.Request) -> web.Response:
    """承認 or 拒否 (with a reason code): the staff API's decision path and audit event."""
    decider = await review.staff_decider(request)
    query_id = request.match_info["query_id"]
    if not QUERY_ID_PATTERN.match(query_id):
        raise ValidationError("malformed query id")
    form = await request.post()
    decision = form.get("decision")
    if decision not in ("approve", "refuse"):
        raise ValidationError("decision must be approve or refuse")
    reason = form.get("reason_code") if decision == "refuse" else None
    if reason is not None and not isinstance(reason, str):
        raise ValidationError("reason_code must be text")
    answer = await review.decide_review(
        request.config_dict[GATEWAY_STATE],
        query_id,
        approve=decision == "approve",
        decider=decider,
        reason_code=reason or None,
    )
    await review.audit_decision(request, answer)
    return redirect(f"{BASE}review/{query_id}")


# -- 提供等記録: search, disclosure -------------------------------------------------------------


def _atena(value: str) -> str:
    if not ATENA_PATTERN.match(value):
        raise ValidationError("宛名番号は1〜15桁の数字です")
    return value


async def record_search(request: web.Request) -> web.Response:
    """Provision records by person (宛名番号), period (requested, in the statistics' time
    zone) and outcome, newest first."""
    session = await require_staff(request, *RECORD_READERS)
    state = request.config_dict[GATEWAY_STATE]
    tz = state.config.ops.statistics_time_zone
    query = request.query
    atena_id = _atena(query["atena_id"]) if query.get("atena_id") else None
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise ValidationError(f"outcome must be one of {', '.join(OUTCOMES)}")
    first, last = parse_period(query.get("from"), query.get("to"), today=today_in(tz))
    rows = await state.pool.fetch(
        """SELECT seq, role, requester, provider, procedure_code, item_code, atena_id,
                  requested_at AT TIME ZONE $3 AS requested_at,
                  provided_at AT TIME ZONE $3 AS provided_at, outcome, reason_code,
                  query_id, non_disclosure
           FROM provision_records
           WHERE requested_at >= $1::date::timestamp AT TIME ZONE $3
             AND requested_at < ($2::date + 1)::timestamp AT TIME ZONE $3
             AND recorded_at >= $1::date::timestamp AT TIME ZONE $3
             AND ($4::text IS NULL OR atena_id = $4)
             AND ($5::text IS NULL OR outcome = $5)
             AND ($7::text[] IS NULL OR item_code = ANY ($7))
           ORDER BY requested_at DESC, seq DESC LIMIT $6""",
        first,
        last,
        tz,
        atena_id,
        outcome,
        MAX_RECORD_ROWS,
        visible_codes(session.scope),
    )
    await audit_staff(
        request,
        "records.search",
        target=atena_id,
        detail={
            "from": first.isoformat(),
            "to": last.isoformat(),
            "outcome": outcome,
            "records": len(rows),
        },
    )
    return render(
        request,
        "records.html",
        {
            "rows": rows,
            "atena_id": atena_id or "",
            "from": first.isoformat(),
            "to": last.isoformat(),
            "outcome": outcome or "",
            "outcomes": views.OUTCOME_LABELS,
            "roles": views.RECORD_ROLE_LABELS,
            "limit": MAX_RECORD_ROWS,
            "time_zone": tz,
        },
    )


async def disclosure_form(request: web.Request) -> web.Response:
    await require_staff(request)
    atena_id = request.query.get("atena_id")
    if atena_id:
        return redirect(f"{BASE}disclosure/{_atena(atena_id)}")
    return render(request, "disclosure_form.html", {})


async def disclosure(request: web.Request) -> web.StreamResponse:
    """The disclosure report of one person (the API's, as a printable page or its CSV)."""
    response = await records.get_disclosure(request)
    if _is_download(response):
        return response
    answer = api_json(response)
    return render(
        request,
        "disclosure.html",
        {
            "report": answer,
            "audience": request.query.get("audience", "auditor"),
            "outcomes": views.OUTCOME_LABELS,
            "roles": views.RECORD_ROLE_LABELS,
            "item_name": views.item_name,
        },
    )


# -- statistics, jobs ---------------------------------------------------------------------------


async def statistics_page(request: web.Request) -> web.StreamResponse:
    response = await ops.get_statistics(request)
    if _is_download(response):
        return response
    answer = api_json(response)
    sums = views.totals(answer["rows"])
    charts = [
        (
            heading,
            views.bar_chart([(views.chart_label(key, v), n) for v, n in sums[key]]),
        )
        for key, heading in views.DIMENSIONS
    ]
    return render(
        request,
        "statistics.html",
        {
            "answer": answer,
            "charts": charts,
            "total": sum(int(r["count"]) for r in answer["rows"]),
        },
    )


async def jobs_page(request: web.Request) -> web.Response:
    answer = api_json(await ops.get_jobs(request))
    return render(
        request, "jobs.html", {"jobs": answer["jobs"], "statuses": views.JOB_STATUS_LABELS}
    )


# -- 副本 of a person (read-only) ---------------------------------------------------------------


async def replica_page(request: web.Request) -> web.Response:
    session = await require_staff(request, *REPLICA_READERS)
    atena_id = request.query.get("atena_id")
    if not atena_id:
        return render(request, "replica.html", {"atena_id": "", "items": None})
    atena_id = _atena(atena_id)
    state = request.config_dict[GATEWAY_STATE]
    on = today_jst()
    items: list[dict[str, Any]] = []
    async with state.pool.acquire() as conn:
        if await conn.fetchval("SELECT 1 FROM persons WHERE atena_id = $1", atena_id) is None:
            raise PersonUnknownError("no person with this 宛名番号 is registered")
        codes = [
            r["item_code"]
            for r in await conn.fetch(
                "SELECT DISTINCT item_code FROM replica_items WHERE atena_id = $1 "
                "ORDER BY item_code",
                atena_id,
            )
            if session.sees(r["item_code"])  # the office's item classes only
        ]
        for code in codes:
            history = await item_history(conn, atena_id, code, on)
            contents = [
                await conn.fetchval(
                    "SELECT content FROM replica_items WHERE atena_id = $1 AND item_code = $2 "
                    "AND record_key = $3 AND version = $4",
                    atena_id,
                    code,
                    r["record_key"],
                    r["version"],
                )
                for r in history["in_force"]["records"]
            ]
            try:
                document = provision_document(code, contents) if contents else None
            except ReplicaInconsistentError:
                document = None
            history["name"] = views.item_name(code)
            history["fields"] = views.item_fields(document) if document is not None else []
            items.append(history)
    await audit_staff(request, "replica.read", target=atena_id, detail={"items": len(items)})
    return render(request, "replica.html", {"atena_id": atena_id, "items": items, "on": on})


# -- accounts -----------------------------------------------------------------------------------


async def _office_names(request: web.Request) -> dict[str, str]:
    rows = await all_offices(request.config_dict[GATEWAY_STATE].pool)
    return {r["code"]: r["name"] for r in rows}


async def accounts_page(request: web.Request) -> web.Response:
    answer = api_json(await staff_api.list_accounts(request))
    session = request[STAFF_SESSION]
    names = await _office_names(request)
    offices = names if session.central else {session.office: names[session.office]}
    return render(
        request,
        "accounts.html",
        {
            "accounts": answer["accounts"],
            "all_roles": ROLES,
            "role_labels": views.ROLE_LABELS,
            "offices": offices,
            "office_names": names,
            "item_classes": ITEM_CLASS_LABELS,
        },
    )


def _classes_of(form: Any) -> list[str] | None:
    """Item classes ticked on a form; none ticked = no narrowing (the office's)."""
    ticked = [c for c in form.getall("item_classes", []) if isinstance(c, str)]
    return ticked or None


async def account_create(request: web.Request) -> web.Response:
    session = await staff_api.require_account_admin(request)
    form = await request.post()
    data: dict[str, Any] = {
        "username": form.get("username"),
        "display_name": form.get("display_name") or "",
        "password": form.get("password"),
        "roles": [r for r in form.getall("roles", []) if isinstance(r, str)],
        "expires_at": form.get("expires_at") or None,
        "office": form.get("office"),
        "item_classes": _classes_of(form),
    }
    await staff_api.new_account(request, session, data)
    return redirect(BASE + "accounts")


async def account_revoke(request: web.Request) -> web.Response:
    session = await staff_api.require_account_admin(request)
    await staff_api.revoke_as(request, session, request.match_info["username"])
    return redirect(BASE + "accounts")


async def account_office(request: web.Request) -> web.Response:
    """Move an account to another office and/or set its own item classes."""
    session = await staff_api.require_account_admin(request)
    form = await request.post()
    data = {"office": form.get("office"), "item_classes": _classes_of(form)}
    await staff_api.change_account(request, session, request.match_info["username"], data)
    return redirect(BASE + "accounts")


async def account_review_page(request: web.Request) -> web.Response:
    report = api_json(await staff_api.account_review(request))
    return render(
        request,
        "account_review.html",
        {
            "report": report,
            "role_labels": views.ROLE_LABELS,
            "office_names": await _office_names(request),
        },
    )


# -- offices, operation log ---------------------------------------------------------------------


async def offices_page(request: web.Request) -> web.Response:
    session = await require_staff(request)
    answer = api_json(await staff_api.list_offices(request))
    return render(
        request,
        "offices.html",
        {
            "offices": answer["offices"],
            "item_classes": ITEM_CLASS_LABELS,
            "can_edit": session.central and session.has(ROLE_ADMIN),
        },
    )


async def office_create(request: web.Request) -> web.Response:
    session = await staff_api.require_office_admin(request)
    form = await request.post()
    data = {"code": form.get("code"), "name": form.get("name"), "item_classes": _classes_of(form)}
    await staff_api.new_office(request, session, data)
    return redirect(BASE + "offices")


async def office_update(request: web.Request) -> web.Response:
    session = await staff_api.require_office_admin(request)
    form = await request.post()
    data = {"name": form.get("name"), "item_classes": _classes_of(form)}
    await staff_api.change_office(request, session, request.match_info["code"], data)
    return redirect(BASE + "offices")


async def operations_page(request: web.Request) -> web.Response:
    """操作内容の記録 (auditor): the staff API's query, as a filterable table."""
    rows = await staff_api.operations_query(request)
    query = request.query
    return render(
        request,
        "operations.html",
        {
            "rows": rows,
            "filters": {
                k: query.get(k, "")
                for k in ("from", "to", "caller", "operation", "target", "office")
            },
            "office_names": await _office_names(request),
            "outcomes": views.OPERATION_OUTCOME_LABELS,
        },
    )


async def long_sessions(request: web.Request) -> web.Response:
    """Live sessions logged on longer than ``?hours=`` (default ``[staff]
    long_session_hours``, 8 unless configured)."""
    await require_staff(request, *SESSION_READERS)
    state = request.config_dict[GATEWAY_STATE]
    config = state.config.staff
    try:
        hours = float(request.query.get("hours") or config.long_session_hours)
    except ValueError:
        raise ValidationError("hours must be a number") from None
    if not 0 <= hours <= MAX_LONG_SESSION_HOURS:
        raise ValidationError(f"hours must be between 0 and {MAX_LONG_SESSION_HOURS}")
    rows = await state.pool.fetch(
        """SELECT s.username, a.display_name, a.roles, a.office, s.remote, s.created_at,
                  s.last_seen_at, now() - s.created_at AS logged_on
           FROM staff_sessions s JOIN staff_accounts a
             ON a.tenant = s.tenant AND a.username = s.username
           WHERE s.ended_at IS NULL AND a.revoked_at IS NULL
             AND s.created_at <= now() - $1::interval
             AND s.last_seen_at > now() - $2::interval
             AND s.created_at > now() - $3::interval
           ORDER BY a.office, s.created_at""",
        dt.timedelta(hours=hours),
        config.idle_timeout,
        config.session_lifetime,
    )
    await audit_staff(request, "staff.sessions.long", detail={"hours": hours})
    return render(
        request,
        "sessions.html",
        {
            "rows": rows,
            "groups": views.group_by([dict(r) for r in rows], "office"),
            "office_names": await _office_names(request),
            "hours": hours,
            "generated_at": utcnow(),
            "role_labels": views.ROLE_LABELS,
        },
    )


def add_routes(staff: web.Application, page: Any) -> None:
    """The console's routes on the staff face (``/staff/…``), each run by ``page``."""
    staff.router.add_get("/static/console.css", stylesheet)
    for method, path, handler in (
        ("GET", "/", home),
        ("GET", "/login", login_form),
        ("POST", "/login", login),
        ("POST", "/logout", logout),
        ("GET", "/review", review_queue),
        ("GET", "/review/{query_id}", review_detail),
        ("POST", "/review/{query_id}/decide", review_decide),
        ("GET", "/records", record_search),
        ("GET", "/disclosure", disclosure_form),
        ("GET", "/disclosure/{atena_id}", disclosure),
        ("GET", "/statistics", statistics_page),
        ("GET", "/jobs", jobs_page),
        ("GET", "/replica", replica_page),
        ("GET", "/accounts", accounts_page),
        ("POST", "/accounts", account_create),
        ("POST", "/accounts/{username}/revoke", account_revoke),
        ("POST", "/accounts/{username}/office", account_office),
        ("GET", "/accounts/review", account_review_page),
        ("GET", "/sessions", long_sessions),
        ("GET", "/offices", offices_page),
        ("POST", "/offices", office_create),
        ("POST", "/offices/{code}", office_update),
        ("GET", "/operations", operations_page),
    ):
        staff.router.add_route(method, path, page(handler))
