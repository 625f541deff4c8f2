"""自動応答不可: flagged items wait for a decision; approve and refuse end to end via the hub."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
from typing import Any

import pytest
from replica_support import flag, moved_person, new_record_id, send_entries

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import care_certification
from chukan.simulators.devnet.replica_synthetic import SyntheticEntry
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration

CODE = catalog.CERTIFICATION.code


async def held_query(
    chiba: Any, funabashi: Any, rng: random.Random, *, with_item: bool = True
) -> tuple[str, bytes | None]:
    """A query of 船橋市 for a flagged item of 千葉市, held at 千葉市: (query id, item)."""
    here, there = await moved_person(rng, chiba, funabashi)
    item = encode_item(care_certification(rng, dt.date(2025, 4, 1))) if with_item else None
    if item is not None:
        entry = SyntheticEntry(new_record_id(), here, CODE, item, valid_from=dt.date(2025, 4, 1))
        assert (await send_entries(chiba, [entry]))[0] == 201
    await flag(chiba, here, CODE, True)
    status, submitted = await funabashi.query(
        there, catalog.LTC_CERTIFICATION_PROCEDURE, CODE, catalog.CHIBA_CITY
    )
    assert status == 202
    query_id: str = submitted["query_id"]
    for _ in range(200):
        status, body = await chiba.call("GET", "/internal/v1/review")
        assert status == 200
        if any(r["query_id"] == query_id for r in body["reviews"]):
            return query_id, item
        await asyncio.sleep(0.02)
    raise AssertionError("the provision was never held")


async def provider_outcomes(chiba: Any, query_id: str) -> list[tuple[str, str | None]]:
    rows = await chiba.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE query_id = $1 AND role = 'provider' ORDER BY id",
        query_id,
    )
    return [(r["outcome"], r["reason_code"]) for r in rows]


async def hub_outcome(network: Any, query_id: str) -> str:
    outcome: str = await network.hub.app[HUB_STATE].pool.fetchval(
        "SELECT outcome FROM hub_records WHERE query_id = $1", query_id
    )
    return outcome


async def test_approved_provision_reaches_the_requester(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    query_id, item = await held_query(chiba, funabashi, rng)
    # Held: the requester waits, the permit is consumed and recorded on every side.
    pending = await funabashi.result(query_id, wait=0.2)
    assert pending["status"] == "pending"
    assert await hub_outcome(network, query_id) == "held"
    assert await provider_outcomes(chiba, query_id) == [("held", "manual_review")]
    status, review = await chiba.call("GET", f"/internal/v1/review/{query_id}")
    assert status == 200, review
    assert review["status"] == "pending" and review["requester"] == catalog.FUNABASHI_CITY
    assert review["permit_id"] == (
        await chiba.gateway.state.pool.fetchval(
            "SELECT permit_id FROM used_permits WHERE query_id = $1", query_id
        )
    )
    assert [(r["record_key"], r["version"]) for r in review["records"]] == [("1", 1)]
    assert item is not None and review["document"].encode() == item

    status, decided = await chiba.call("POST", f"/internal/v1/review/{query_id}/approve")
    assert status == 200, decided
    assert (decided["status"], decided["outcome"], decided["delivered"]) == (
        "approved",
        "provided",
        True,
    )
    assert decided["decided_by"] == "system:kaigo-system"
    result = await funabashi.result(query_id)
    assert result["status"] == "answered", result
    assert result["result"].encode() == item
    assert await provider_outcomes(chiba, query_id) == [
        ("held", "manual_review"),
        ("provided", None),
    ]
    assert await hub_outcome(network, query_id) == "provided"
    requester = await funabashi.gateway.state.pool.fetchrow(
        "SELECT outcome, permit_id FROM provision_records WHERE query_id = $1", query_id
    )
    assert requester["outcome"] == "provided" and requester["permit_id"] == review["permit_id"]

    # Decided once: a second decision is a conflict.
    status, body = await chiba.call("POST", f"/internal/v1/review/{query_id}/refuse")
    assert (status, body["error"]["code"]) == (409, "review_already_decided")


async def test_refused_provision_tells_the_requester_why(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    query_id, _ = await held_query(chiba, funabashi, rng)
    status, decided = await chiba.call("POST", f"/internal/v1/review/{query_id}/refuse")
    assert status == 200, decided
    assert (decided["status"], decided["outcome"], decided["reason_code"]) == (
        "refused",
        "refused",
        "manual_review_refused",
    )
    result = await funabashi.result(query_id)
    assert (result["status"], result["reason_code"]) == ("refused", "manual_review_refused")
    assert result["result"] is None
    assert await provider_outcomes(chiba, query_id) == [
        ("held", "manual_review"),
        ("refused", "manual_review_refused"),
    ]
    assert await hub_outcome(network, query_id) == "refused"

    # A reason of the decider's own; malformed reasons are refused.
    other, _ = await held_query(chiba, funabashi, rng)
    status, body = await chiba.call(
        "POST", f"/internal/v1/review/{other}/refuse", json={"reason_code": "Bad Reason"}
    )
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    status, decided = await chiba.call(
        "POST", f"/internal/v1/review/{other}/refuse", json={"reason_code": "dv_protection"}
    )
    assert status == 200 and decided["reason_code"] == "dv_protection"
    assert (await funabashi.result(other))["reason_code"] == "dv_protection"


async def test_flag_without_data_and_flag_cleared(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    # Flagged but nothing stored: held all the same (the flag says nothing is automatic),
    # and an approval answers that there is no item.
    query_id, _ = await held_query(chiba, funabashi, rng, with_item=False)
    status, decided = await chiba.call("POST", f"/internal/v1/review/{query_id}/approve")
    assert status == 200 and decided["outcome"] == "refused"
    assert decided["reason_code"] == "item_not_found"
    assert (await funabashi.result(query_id))["reason_code"] == "item_not_found"

    status, body = await chiba.call("POST", "/internal/v1/review/nosuchquery1/approve")
    assert (status, body["error"]["code"]) == (404, "review_unknown")
    status, body = await chiba.call("GET", "/internal/v1/review?status=maybe")
    assert status == 422

    # Clearing the flag makes answers automatic again.
    here, there = await moved_person(rng, chiba, funabashi)
    item = encode_item(care_certification(rng, dt.date(2025, 4, 1)))
    status, _ = await chiba.store(here, CODE, item, manual_review=True)
    assert status == 201
    await flag(chiba, here, CODE, False)
    status, submitted = await funabashi.query(
        there, catalog.LTC_CERTIFICATION_PROCEDURE, CODE, catalog.CHIBA_CITY
    )
    result = await funabashi.result(submitted["query_id"])
    assert result["status"] == "answered" and result["result"].encode() == item
    status, body = await chiba.call(
        "PUT",
        f"/internal/v1/persons/999999999999997/items/{CODE}/manual-review",
        json={"manual_review": True},
    )
    assert (status, body["error"]["code"]) == (404, "person_unknown")


async def test_review_operations_need_their_grants(network: Any, http: Any) -> None:
    """Deciding needs review.decide; a reader (review.read) may list but not decide."""
    from chukan.gateway.core.config import OP_READ_REVIEW, SystemCredential, token_digest

    token = secrets.token_urlsafe(16)
    reader = SystemCredential("review-reader", token_digest(token), frozenset({OP_READ_REVIEW}))
    gateway = await network.add_gateway("123455", "試験市", systems=(reader,))
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.get(gateway.url + "/internal/v1/review", headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["reviews"] == []
        for action in ("approve", "refuse"):
            async with http.post(
                gateway.url + f"/internal/v1/review/q-{secrets.token_hex(6)}/{action}",
                headers=headers,
            ) as response:
                assert response.status == 403
                assert (await response.json())["error"]["code"] == "forbidden"
        refusals = await gateway.state.pool.fetch(
            "SELECT caller, operation, count FROM access_refusals ORDER BY id"
        )
        # Counted one row a minute per caller, address, operation and code.
        assert [(r["caller"], r["operation"]) for r in refusals for _ in range(r["count"])] == [
            ("review-reader", "review.decide"),
            ("review-reader", "review.decide"),
        ]
    finally:
        await gateway.server.stop()
        del network.gateways["123455"]


async def _staff_token(chiba: Any, roles: list[str]) -> str:
    """A staff account of 千葉市 with ``roles``, logged in over HTTP; returns the session token."""
    from chukan.gateway.staff.accounts import create_account
    from chukan.gateway.staff.passwords import hash_password

    username = f"s{secrets.token_hex(4)}"
    password = f"Pw-{secrets.token_urlsafe(12)}"
    await create_account(
        chiba.gateway.state.pool,
        username=username,
        roles=roles,
        password_hash=hash_password(password, n=2**10, r=8, p=1),
        created_by="test",
    )
    status, body = await chiba.call(
        "POST",
        "/staff/v1/login",
        json={"username": username, "password": password},
        headers={"Authorization": ""},
    )
    assert status == 200, body
    token: str = body["token"]
    return token


async def test_staff_approver_decides_and_is_audited(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id, item = await held_query(chiba, funabashi, rng)
    operator = await _staff_token(chiba, ["operator"])
    approver = await _staff_token(chiba, ["approver"])
    # An operator may not decide; the refusal is recorded.
    status, body = await chiba.call("POST", f"/staff/v1/review/{query_id}/approve", token=operator)
    assert (status, body["error"]["code"]) == (403, "role_required")
    status, body = await chiba.call("GET", "/staff/v1/review", token=approver)
    assert status == 200
    assert query_id in [r["query_id"] for r in body["reviews"]]
    status, decided = await chiba.call(
        "POST", f"/staff/v1/review/{query_id}/approve", token=approver
    )
    assert status == 200, decided
    assert decided["decided_by"].startswith("staff:s")
    result = await funabashi.result(query_id)
    assert result["status"] == "answered"
    assert item is not None and result["result"].encode() == item
    actions = await chiba.gateway.state.pool.fetch(
        "SELECT action, actor_kind FROM audit_trail WHERE target = $1 ORDER BY id", query_id
    )
    assert ("review.approve", "staff") in [tuple(r) for r in actions]


async def test_staff_approver_refuses_with_a_reason(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id, _ = await held_query(chiba, funabashi, rng)
    approver = await _staff_token(chiba, ["approver"])
    status, decided = await chiba.call(
        "POST",
        f"/staff/v1/review/{query_id}/refuse",
        token=approver,
        json={"reason_code": "manual_review_refused"},
    )
    assert status == 200, decided
    result = await funabashi.result(query_id)
    assert (result["status"], result["reason_code"]) == ("refused", "manual_review_refused")
    # Without a session: 401.
    status, body = await chiba.call("GET", "/staff/v1/review", headers={"Authorization": ""})
    assert (status, body["error"]["code"]) == (401, "session_invalid")
