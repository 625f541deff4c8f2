"""The staff console (職員画面) over real HTTP against a real gateway and PostgreSQL, without
a browser: headers, cookie flags, CSRF, roles per page, the uniform login answer, and the
pages' content."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from console_support import Browser, make_account

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import care_certification
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration


@pytest.fixture
async def browser(chiba: Any, network: Any) -> AsyncIterator[Browser]:
    client = Browser(chiba.gateway, network.anonymous_ssl())
    yield client
    await client.close()


@pytest.fixture
async def other_browser(chiba: Any, network: Any) -> AsyncIterator[Browser]:
    client = Browser(chiba.gateway, network.anonymous_ssl())
    yield client
    await client.close()


def set_cookie_headers(response: Any) -> dict[str, str]:
    """Set-Cookie headers of a response, by cookie name."""
    return {h.split("=", 1)[0]: h for h in response.headers.getall("Set-Cookie", [])}


async def audit_reasons(chiba: Any, username: str) -> list[str]:
    rows = await chiba.gateway.state.pool.fetch(
        "SELECT detail->>'reason' AS reason FROM audit_trail "
        "WHERE action = 'staff.login' AND outcome = 'refused' AND actor = $1 ORDER BY id",
        username,
    )
    return [r["reason"] for r in rows]


async def test_pages_carry_the_security_headers_and_the_cookie_its_flags(
    chiba: Any, browser: Browser
) -> None:
    status, page, response = await browser.get("/staff/login")
    assert status == 200 and "ログイン" in page
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'none'" in csp and "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in page and " style=" not in page
    user, password = await make_account(chiba.gateway, ["operator"])
    status, _, response = await browser.login(user, password)
    assert status == 303 and response.headers["Location"] == "/staff/"
    cookie = set_cookie_headers(response)["chukan_staff_session"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/staff/"):
        assert flag in cookie, cookie
    status, page, response = await browser.get("/staff/")
    assert status == 200 and user in page and "運用担当" in page
    assert response.headers["Cache-Control"] == "no-store"
    # The style sheet comes from the console itself (CSP 'self'), with the same headers.
    status, css, response = await browser.get("/staff/static/console.css")
    assert status == 200 and response.content_type == "text/css" and "@media print" in css
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_a_form_without_its_csrf_token_is_refused(chiba: Any, browser: Browser) -> None:
    user, password = await make_account(chiba.gateway, ["admin"])
    assert (await browser.login(user, password))[0] == 303
    good = await browser.csrf()
    for form in ({}, {"csrf_token": ""}, {"csrf_token": good[:-1] + "x"}):
        status, page, response = await browser.post("/staff/logout", form)
        assert status == 403, (form, status)
        assert "csrf_token_invalid" in page and response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"]
    # Nothing happened: still logged in; with the token, the same form works.
    assert (await browser.get("/staff/"))[0] == 200
    status, _, response = await browser.post(
        "/staff/accounts",
        {"username": "should-not-exist", "password": "x" * 20, "roles": "operator"},
    )
    assert status == 403
    assert (
        await chiba.gateway.state.pool.fetchval(
            "SELECT count(*) FROM staff_accounts WHERE username = 'should-not-exist'"
        )
        == 0
    )
    status, _, response = await browser.post("/staff/logout", {"csrf_token": good})
    assert status == 303 and response.headers["Location"] == "/staff/login"
    assert (await browser.get("/staff/"))[0] == 303  # logged out: back to the login page
    # The login form has its own token (double submit), refused without it too.
    status, page, _ = await browser.post("/staff/login", {"username": user, "password": password})
    assert status == 403 and "csrf_token_invalid" in page


async def test_each_page_enforces_the_roles_of_its_api(
    chiba: Any, browser: Browser, other_browser: Browser
) -> None:
    clerk, clerk_password = await make_account(chiba.gateway, ["operator"])
    admin, admin_password = await make_account(chiba.gateway, ["admin"])
    status, _, response = await browser.get("/staff/accounts")
    assert status == 303 and response.headers["Location"] == "/staff/login"
    assert (await browser.login(clerk, clerk_password))[0] == 303
    for path in (
        "/staff/accounts",
        "/staff/disclosure/123",
        "/staff/records",
        "/staff/replica?atena_id=123",
        "/staff/review",
        "/staff/sessions",
    ):
        status, page, _ = await browser.get(path)
        assert status == 403 and "role_required" in page, (path, status)
    for path in ("/staff/statistics", "/staff/jobs", "/staff/"):
        assert (await browser.get(path))[0] == 200, path
    # A clerk's form to create an account is refused by the API's own check.
    token = await browser.csrf()
    form = {"csrf_token": token, "username": "clerkmade", "password": "x" * 20, "roles": "admin"}
    assert (await browser.post("/staff/accounts", form))[0] == 403
    refusals = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM audit_trail WHERE actor = $1 AND action = 'staff.refused' "
        "AND detail->>'reason' = 'role_required'",
        clerk,
    )
    assert refusals >= 7
    # The administrator sees the list and can create and revoke through the forms.
    assert (await other_browser.login(admin, admin_password))[0] == 303
    status, page, _ = await other_browser.get("/staff/accounts")
    assert status == 200 and clerk in page and "アカウントの作成" in page
    token = await other_browser.csrf("/staff/accounts")
    made = f"m{clerk}"
    status, _, _ = await other_browser.post(
        "/staff/accounts",
        {
            "csrf_token": token,
            "username": made,
            "display_name": "新規 職員",
            "password": "Long-enough-passw0rd",
            "roles": ["approver", "auditor"],
            "office": "chuo",
        },
    )
    assert status == 303
    row = await chiba.gateway.state.pool.fetchrow(
        "SELECT roles, created_by FROM staff_accounts WHERE username = $1", made
    )
    assert sorted(row["roles"]) == ["approver", "auditor"] and row["created_by"] == admin
    status, page, _ = await other_browser.post(
        "/staff/accounts", {"csrf_token": token, "username": "x", "password": "p"}
    )
    assert status == 422 and "validation_failed" in page
    assert (await other_browser.post(f"/staff/accounts/{clerk}/revoke", {"csrf_token": token}))[
        0
    ] == 303
    # Revoked: the clerk's session ends at once.
    status, _, response = await browser.get("/staff/")
    assert status == 303 and response.headers["Location"] == "/staff/login"
    status, page, _ = await other_browser.get("/staff/accounts/review?unused_days=0")
    assert status == 200 and made in page


async def test_unknown_wrong_and_locked_get_the_same_answer(chiba: Any, browser: Browser) -> None:
    user, password = await make_account(chiba.gateway, ["operator"])
    answers = []
    for name, secret in (("nobody-at-all", "Wrong-passw0rd-1"), (user, "Wrong-passw0rd-1")):
        status, page, _ = await browser.login(name, secret)
        answers.append((status, page))
    for _ in range(4):  # five failures in all lock the account (the default)
        await browser.login(user, "Wrong-passw0rd-1")
    status, page, _ = await browser.login(user, password)  # right, but locked
    answers.append((status, page))
    assert answers[0][0] == 401 and "正しくないか" in answers[0][1]
    assert all(answer == answers[0] for answer in answers), "the answers differ"
    # The JSON API answers alike: 401 login_failed, for every reason.
    bodies = set()
    for name, secret in (("nobody-at-all", "x" * 12), (user, "x" * 12), (user, password)):
        status, body = await chiba.call(
            "POST",
            "/staff/v1/login",
            json={"username": name, "password": secret},
            token="",
            headers={"Authorization": ""},
        )
        assert status == 401 and body["error"]["code"] == "login_failed"
        bodies.add(str(body))
    assert len(bodies) == 1
    # The audit trail keeps the real reasons, which the answers never show.
    reasons = await audit_reasons(chiba, user)
    assert reasons == ["wrong_password"] * 4 + ["locked_now"] + ["locked"] * 3
    assert await audit_reasons(chiba, "nobody-at-all") == []  # no actor for unknown names


async def test_idle_sessions_end_for_the_console_too(chiba: Any, browser: Browser) -> None:
    user, password = await make_account(chiba.gateway, ["operator"])
    assert (await browser.login(user, password))[0] == 303
    assert (await browser.get("/staff/"))[0] == 200
    await chiba.gateway.state.pool.execute(
        "UPDATE staff_sessions SET last_seen_at = now() - interval '1 day' "
        "WHERE username = $1 AND ended_at IS NULL",
        user,
    )
    status, _, response = await browser.get("/staff/jobs")
    assert status == 303 and response.headers["Location"] == "/staff/login"
    assert "chukan_staff_session=" in response.headers.get("Set-Cookie", "")
    reason = await chiba.gateway.state.pool.fetchval(
        "SELECT end_reason FROM staff_sessions WHERE username = $1", user
    )
    assert reason == "idle"


async def test_records_disclosure_replica_statistics_and_sessions_pages(
    chiba: Any, funabashi: Any, browser: Browser, rng: random.Random
) -> None:
    """A person of 千葉市 whose 認定情報 船橋市 asked for: every page shows its part."""
    here = synthetic_person(rng, "4")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    code = catalog.CERTIFICATION.code
    item = care_certification(rng, dt.date(2025, 4, 1))
    status, body = await chiba.store(here.atena_id, code, encode_item(item))
    assert status in (200, 201), body
    status, body = await funabashi.query(
        there.atena_id, catalog.LTC_CERTIFICATION_PROCEDURE, code, catalog.CHIBA_CITY
    )
    assert status == 202, body
    assert (await funabashi.result(body["query_id"]))["status"] == "answered"
    auditor, password = await make_account(chiba.gateway, ["auditor", "admin"])
    assert (await browser.login(auditor, password))[0] == 303
    # The 副本, decoded into fields; never the XML itself.
    status, page, _ = await browser.get(f"/staff/replica?atena_id={here.atena_id}")
    assert status == 200 and code in page and "InsuredNumber" in page
    assert item.insured_number in page
    assert "&lt;" not in page and "<k:" not in page and "urn:chukan" not in page
    status, page, _ = await browser.get("/staff/replica?atena_id=999999999999999")
    assert status == 404 and "person_unknown" in page
    # Disclosure, records search, statistics (SVG), sessions, jobs: all answer.
    status, page, _ = await browser.get(f"/staff/disclosure/{here.atena_id}")
    assert status == 200 and "開示報告" in page and here.atena_id in page
    assert 'id="disclosure-count">1 件' in page and "一致" in page
    status, csv, response = await browser.get(f"/staff/disclosure/{here.atena_id}?format=csv")
    assert status == 200 and response.content_type == "text/csv" and csv.startswith("seq,")
    status, _, response = await browser.get(f"/staff/disclosure?atena_id={here.atena_id}")
    assert status == 303 and response.headers["Location"].endswith(here.atena_id)
    status, page, _ = await browser.get(f"/staff/records?atena_id={here.atena_id}&outcome=provided")
    assert status == 200 and body["query_id"] in page and "提供" in page
    status, page, _ = await browser.get(f"/staff/records?atena_id={here.atena_id}&outcome=held")
    assert status == 200 and "該当する記録はありません" in page
    assert (await browser.get("/staff/records?outcome=stolen"))[0] == 422
    status, page, _ = await browser.get("/staff/statistics")
    assert status == 200 and "<svg" in page and "月別" in page
    status, page, _ = await browser.get("/staff/sessions?hours=0")
    assert status == 200 and f"<td>{auditor}</td>" in page
    status, page, _ = await browser.get("/staff/sessions")  # 8 hours: nobody yet
    assert status == 200 and f"<td>{auditor}</td>" not in page
    actions = {
        r["action"]
        for r in await chiba.gateway.state.pool.fetch(
            "SELECT action FROM audit_trail WHERE actor = $1", auditor
        )
    }
    assert {"replica.read", "records.disclose", "records.search", "statistics.read"} <= actions
