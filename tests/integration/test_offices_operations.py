"""Offices (所属) and item-class scopes, the operation log (操作内容の記録) and bounded
refusals, over real HTTP against real gateways and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import OPS_AGENCY, ROOT_PASSWORD
from console_support import Browser, make_account

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import care_certification, premium_assessment
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core.settings import DEFAULT_REFUSALS_PER_MINUTE as REFUSALS_PER_MINUTE
from chukan.gateway.staff.offices import CENTRAL_OFFICE, DEFAULT_OFFICES
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration

PASSWORD = "Long-enough-passw0rd"


async def login(api: Any, username: str, password: str) -> str:
    status, body = await api.call(
        "POST",
        "/staff/v1/login",
        json={"username": username, "password": password},
        headers={"Authorization": ""},
    )
    assert status == 200, body
    token: str = body["token"]
    return token


async def create(api: Any, token: str, **fields: Any) -> tuple[int, Any]:
    username = fields.pop("username", f"o{secrets.token_hex(4)}")
    result: tuple[int, Any] = await api.call(
        "POST",
        "/staff/v1/accounts",
        token=token,
        json={"username": username, "password": PASSWORD, **fields},
    )
    return result


@pytest.fixture
async def browser(chiba: Any, network: Any) -> AsyncIterator[Browser]:
    client = Browser(chiba.gateway, network.anonymous_ssl())
    yield client
    await client.close()


async def test_offices_are_seeded_and_scope_who_administers_whom(ops_gateway: Any) -> None:
    root = await login(ops_gateway, "root", ROOT_PASSWORD)
    status, body = await ops_gateway.call("GET", "/staff/v1/offices", token=root)
    assert status == 200
    offices = {o["code"]: o for o in body["offices"]}
    assert {code for code, *_ in DEFAULT_OFFICES} <= set(offices)
    assert offices["saiken-kanri"]["name"] == "財政局税務部債権管理課"
    assert offices["saiken-kanri"]["item_classes"] == ["levy"]
    assert offices[CENTRAL_OFFICE]["central"] and offices["chuo"]["item_classes"] is None
    status, me = await ops_gateway.call("GET", "/staff/v1/me", token=root)
    assert me["office"] == CENTRAL_OFFICE  # the bootstrap admin, like migrated accounts
    # An office is required, and must exist.
    status, body = await create(ops_gateway, root, roles=["operator"])
    assert status == 422 and body["error"]["code"] == "validation_failed"
    status, body = await create(ops_gateway, root, roles=["operator"], office="nowhere")
    assert status == 404 and body["error"]["code"] == "office_unknown"
    # The central office's admin makes a ward's admin; the ward's admin only its own.
    ward_admin = f"w{secrets.token_hex(4)}"
    status, body = await create(
        ops_gateway, root, username=ward_admin, roles=["admin"], office="mihama"
    )
    assert status == 201 and body["office"] == "mihama"
    ward = await login(ops_gateway, ward_admin, PASSWORD)
    status, body = await create(ops_gateway, ward, roles=["operator"], office="chuo")
    assert status == 403 and body["error"]["code"] == "office_scope"
    status, own = await create(ops_gateway, ward, roles=["operator"], office="mihama")
    assert status == 201
    status, body = await ops_gateway.call("GET", "/staff/v1/accounts", token=ward)
    assert {a["office"] for a in body["accounts"]} == {"mihama"}
    assert own["username"] in {a["username"] for a in body["accounts"]}
    assert (await ops_gateway.call("GET", "/staff/v1/accounts/root", token=ward))[0] == 404
    status, body = await ops_gateway.call(
        "PATCH", f"/staff/v1/accounts/{own['username']}", token=ward, json={"office": "chuo"}
    )
    assert status == 403 and body["error"]["code"] == "office_scope"
    status, body = await ops_gateway.call(
        "POST", "/staff/v1/offices", token=ward, json={"code": "x-ka", "name": "某課"}
    )
    assert status == 403 and body["error"]["code"] == "office_scope"
    # The central admin adds and edits offices; an account's classes narrow its office's.
    code = f"k{secrets.token_hex(3)}"
    status, body = await ops_gateway.call(
        "POST",
        "/staff/v1/offices",
        token=root,
        json={"code": code, "name": "試験課", "item_classes": ["benefit", "levy"]},
    )
    assert status == 201 and body["item_classes"] == ["benefit", "levy"]
    status, body = await ops_gateway.call(
        "PATCH", f"/staff/v1/offices/{code}", token=root, json={"item_classes": ["levy"]}
    )
    assert status == 200 and body["item_classes"] == ["levy"] and body["updated_by"] == "root"
    status, body = await ops_gateway.call(
        "PATCH", f"/staff/v1/offices/{code}", token=root, json={"item_classes": ["x"]}
    )
    assert status == 422
    status, body = await ops_gateway.call(
        "PATCH",
        f"/staff/v1/accounts/{own['username']}",
        token=root,
        json={"office": code, "item_classes": ["levy"]},
    )
    assert status == 200 and body["office"] == code and body["item_classes"] == ["levy"]
    # The audit trail shows the office of whoever acted.
    conn = await asyncpg.connect(ops_gateway.gateway.config.migration_database_url)
    try:
        offices_seen = await conn.fetch(
            "SELECT actor, detail->>'office' AS office FROM audit_trail "
            "WHERE tenant = $1 AND action = 'staff.account.create' AND actor = ANY($2)",
            OPS_AGENCY,
            ["root", ward_admin],
        )
    finally:
        await conn.close()
    assert {(r["actor"], r["office"]) for r in offices_seen} >= {
        ("root", CENTRAL_OFFICE),
        (ward_admin, "mihama"),
    }


async def test_the_levy_office_sees_levy_items_only(
    chiba: Any, funabashi: Any, browser: Browser, network: Any, rng: random.Random
) -> None:
    """債権管理課 reads 賦課 items only, in the 副本 and the record search; 介護保険管理課 all."""
    here = synthetic_person(rng, "4")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    today = dt.date(2025, 4, 1)
    certification = catalog.CERTIFICATION.code
    premium = catalog.PREMIUM_BASIS.code
    for code, item in (
        (certification, care_certification(rng, today)),
        (premium, premium_assessment(rng, today)),
    ):
        status, body = await chiba.store(here.atena_id, code, encode_item(item))
        assert status in (200, 201), body
    status, body = await funabashi.query(
        there.atena_id, catalog.LTC_CERTIFICATION_PROCEDURE, certification, catalog.CHIBA_CITY
    )
    assert status == 202, body
    assert (await funabashi.result(body["query_id"]))["status"] == "answered"
    levy, levy_password = await make_account(
        chiba.gateway, ["auditor", "approver"], office="saiken-kanri"
    )
    central, central_password = await make_account(chiba.gateway, ["auditor", "approver"])
    assert (await browser.login(levy, levy_password))[0] == 303
    status, page, _ = await browser.get(f"/staff/replica?atena_id={here.atena_id}")
    assert status == 200 and premium in page and certification not in page
    status, page, _ = await browser.get(f"/staff/records?atena_id={here.atena_id}")
    assert status == 200 and body["query_id"] not in page and "該当する記録はありません" in page
    status, page, _ = await browser.get(f"/staff/disclosure/{here.atena_id}")
    assert status == 200 and f"<td>{certification} " not in page  # the provision of 0201
    other = Browser(chiba.gateway, network.anonymous_ssl())
    try:
        assert (await other.login(central, central_password))[0] == 303
        status, page, _ = await other.get(f"/staff/replica?atena_id={here.atena_id}")
        assert status == 200 and premium in page and certification in page
        status, page, _ = await other.get(f"/staff/records?atena_id={here.atena_id}")
        assert status == 200 and body["query_id"] in page
        status, page, _ = await other.get(f"/staff/disclosure/{here.atena_id}")
        assert status == 200 and f"<td>{certification} " in page
    finally:
        await other.close()
    # The operation log names the office of each page's reader.
    rows = await chiba.gateway.state.pool.fetch(
        "SELECT caller, office FROM operation_log WHERE operation = 'replica.read' "
        "AND target = $1 AND caller_kind = 'staff'",
        here.atena_id,
    )
    assert {(r["caller"], r["office"]) for r in rows} == {
        (levy, "saiken-kanri"),
        (central, CENTRAL_OFFICE),
    }


async def test_every_internal_and_staff_operation_is_logged_append_only(
    chiba: Any, browser: Browser, rng: random.Random
) -> None:
    person = synthetic_person(rng, "5")
    request_id = f"oplog-{secrets.token_hex(6)}"
    status, _ = await chiba.call(
        "POST",
        "/internal/v1/persons",
        json={"atena_id": person.atena_id, "individual_number": person.individual_number},
        headers={"X-Request-Id": request_id},
    )
    assert status == 201
    item = encode_item(care_certification(rng, dt.date(2025, 4, 1)))
    assert (await chiba.store(person.atena_id, catalog.CERTIFICATION.code, item))[0] in (200, 201)
    export_id = f"export-{secrets.token_hex(6)}"
    status, _ = await chiba.call(
        "GET",
        f"/internal/v1/replica/export?item_code={catalog.CERTIFICATION.code}",
        headers={"X-Request-Id": export_id},
    )
    assert status == 200
    status, body = await chiba.call(
        "GET", f"/internal/v1/persons/{person.atena_id}/items/not-an-item-code"
    )
    assert status >= 400
    auditor, password = await make_account(chiba.gateway, ["auditor"], office="chuo")
    assert (await browser.login(auditor, password))[0] == 303
    assert (await browser.get(f"/staff/disclosure/{person.atena_id}?format=csv"))[0] == 200
    token = await login(chiba, auditor, password)
    status, body = await chiba.call(
        "GET", f"/staff/v1/operations?target={person.atena_id}", token=token
    )
    assert status == 200, body
    rows = body["operations"]
    by_op = {r["operation"]: r for r in reversed(rows)}  # the first of each
    system = chiba.system
    registered = by_op["person.register"]
    assert registered["caller_kind"] == "system" and registered["caller"] == system
    assert registered["office"] is None and registered["request_id"] == request_id
    assert registered["outcome"] == "ok" and registered["status"] == 201
    assert by_op["replica.write"]["caller"] == system
    assert by_op["replica.read"]["outcome"] == "refused" and by_op["replica.read"]["code"]
    disclosed = by_op["records.disclose"]
    assert disclosed["caller"] == auditor and disclosed["office"] == "chuo"
    assert disclosed["caller_kind"] == "staff" and disclosed["detail"]["download"] == "text/csv"
    exported = await chiba.gateway.state.pool.fetchrow(
        "SELECT operation, target, detail FROM operation_log WHERE request_id = $1", export_id
    )
    assert exported["operation"] == "replica.export"
    assert exported["target"] == catalog.CERTIFICATION.code
    assert json.loads(exported["detail"])["download"].startswith("text/csv")
    # No 個人番号 anywhere in the log.
    dump = json.dumps(rows, ensure_ascii=False)
    assert person.individual_number not in dump
    # Filters: operation prefix, caller, period; the console page; roles.
    status, body = await chiba.call(
        "GET", f"/staff/v1/operations?operation=replica.&caller={system}", token=token
    )
    assert status == 200 and body["operations"]
    assert all(r["operation"].startswith("replica.") for r in body["operations"])
    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    status, body = await chiba.call("GET", f"/staff/v1/operations?from={tomorrow}", token=token)
    assert status == 200 and body["operations"] == []
    status, page, _ = await browser.get(f"/staff/operations?target={person.atena_id}")
    assert status == 200 and "person.register" in page and "中央保健福祉センター" in page
    clerk, clerk_password = await make_account(chiba.gateway, ["operator"])
    clerk_token = await login(chiba, clerk, clerk_password)
    status, body = await chiba.call("GET", "/staff/v1/operations", token=clerk_token)
    assert status == 403 and body["error"]["code"] == "role_required"
    # The command line, as JSON.
    out = io.StringIO()
    args = _parse("operations", "list", "--tenant", catalog.CHIBA_CITY, "--target", person.atena_id)
    url = chiba.gateway.config.migration_database_url
    assert await admin_cli.run(args, url, out, io.StringIO()) == 0
    listed = json.loads(out.getvalue())["operations"]
    assert {"person.register", "replica.write", "records.disclose"} <= {
        r["operation"] for r in listed
    }
    # Append-only, even for the owner.
    conn = await asyncpg.connect(url)
    try:
        for sql in (
            "UPDATE operation_log SET target = 'x' WHERE target = $1",
            "DELETE FROM operation_log WHERE target = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql, person.atena_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE operation_log")
    finally:
        await conn.close()


def _parse(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="chukan")
    commands = parser.add_subparsers(dest="command", required=True)
    admin_cli.add_commands(commands, database_default=GATEWAY_DATABASE)
    return parser.parse_args(argv)


def _client_from(address: str, network: Any) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (a loopback address of its own),
    so that its refusals count for a peer no other test uses."""
    context = network.anonymous_ssl()
    connector = aiohttp.TCPConnector(ssl=context or False, local_addr=(address, 0))
    return aiohttp.ClientSession(connector=connector)


async def test_a_flood_of_unauthenticated_requests_is_counted_not_written_row_by_row(
    chiba: Any, network: Any
) -> None:
    peer = "127.0.0.2"
    pool = chiba.gateway.state.pool
    statuses: list[int] = []
    retry_after: set[str] = set()
    request_ids: list[str] = []
    async with _client_from(peer, network) as session:

        async def one(i: int) -> None:
            path = "/internal/v1/records" if i % 2 else "/staff/v1/accounts"
            # An unknown staff session token counts; no credentials at all on the staff
            # face count nothing (nothing was attempted) and are tested below.
            headers = {} if i % 2 else {"Authorization": f"Bearer nope{i}"}
            async with session.get(chiba.gateway.url + path, headers=headers) as response:
                statuses.append(response.status)
                request_ids.append(response.headers["X-Request-Id"])
                if response.status == 429:
                    body = await response.json()
                    assert body["error"]["code"] == "rate_limited"
                    retry_after.add(response.headers["Retry-After"])

        for start in range(0, 300, 25):
            await asyncio.gather(*(one(i) for i in range(start, start + 25)))
    assert set(statuses) <= {401, 429} and statuses.count(429) > 0
    # Two minutes at most were crossed: at most twice the limit got through to a 401.
    assert statuses.count(401) <= 2 * REFUSALS_PER_MINUTE
    assert all(1 <= int(v) <= 60 for v in retry_after)
    rows = await pool.fetch(
        "SELECT caller, operation, status, code, count, refused_at, last_at FROM access_refusals "
        "WHERE remote = $1 AND window_start IS NOT NULL",
        peer,
    )
    assert sum(r["count"] for r in rows) == 300  # who, how often, when: all there
    assert len(rows) <= 8  # two operations, two answers (401 / 429), two minutes at most
    assert {r["code"] for r in rows} <= {"unauthenticated", "session_invalid", "rate_limited"}
    assert all(r["last_at"] >= r["refused_at"] for r in rows)
    logged = await pool.fetchval(
        "SELECT count(*) FROM operation_log WHERE request_id = ANY($1)", request_ids
    )
    assert logged == 0
    audited = await pool.fetchval(
        "SELECT count(*) FROM audit_trail WHERE remote = $1 AND at > now() - interval '5 min'",
        peer,
    )
    assert audited == 0
    # No credentials at all on the staff face: refused, and nothing written anywhere.
    before = await pool.fetchval("SELECT coalesce(sum(count), 0) FROM access_refusals")
    async with _client_from("127.0.0.4", network) as session:
        for _ in range(5):
            async with session.get(chiba.gateway.url + "/staff/v1/me") as response:
                assert response.status == 401
    assert await pool.fetchval("SELECT coalesce(sum(count), 0) FROM access_refusals") == before
