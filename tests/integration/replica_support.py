"""Helpers of the replica tests: people, registration messages and queries over real HTTP."""

from __future__ import annotations

import io
import random
import secrets
from typing import Any

import asyncpg

from chukan.simulators.devnet.replica_synthetic import SyntheticEntry, registration_bytes
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

REGISTRATIONS = "/internal/v1/replica/registrations"


def new_message_id(prefix: str = "MSG") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def new_record_id(prefix: str = "R") -> str:
    return f"{prefix}{secrets.token_hex(10)}"


async def post_message(api: Any, data: bytes) -> tuple[int, Any, dict[str, str]]:
    """POST a registration message; status, JSON body and response headers."""
    headers = {**api.gateway.auth, "Content-Type": "application/xml"}
    body: Any = io.BytesIO(data) if len(data) > 512 * 1024 else data
    async with api.session.post(api.gateway.url + REGISTRATIONS, data=body, headers=headers) as r:
        payload = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, payload, dict(r.headers)


async def send_entries(
    api: Any, entries: list[SyntheticEntry], *, message_id: str | None = None, mode: str = "0"
) -> tuple[int, Any, dict[str, str]]:
    return await post_message(
        api, registration_bytes(message_id or new_message_id(), entries, mode=mode)
    )


async def registered(api: Any, rng: random.Random, prefix: str = "7") -> str:
    """A person registered through the hub (符号 acquisition); their 宛名番号."""
    person = synthetic_person(rng, prefix)
    status, body = await api.register(person.atena_id, person.individual_number)
    assert status == 201, body
    return person.atena_id


async def moved_person(rng: random.Random, source: Any, target: Any) -> tuple[str, str]:
    """One person registered in two cities under different 宛名番号: (source's, target's)."""
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await source.register(here.atena_id, here.individual_number))[0] == 201
    assert (await target.register(there.atena_id, there.individual_number))[0] == 201
    return here.atena_id, there.atena_id


async def insert_people(gateway: Any, atena_ids: list[str]) -> None:
    """Many people at once for bulk tests, straight into the tenant's table (their 符号
    are synthetic: these people are never queried through the hub)."""
    conn = await asyncpg.connect(gateway.config.database_url)
    try:
        # COPY cannot write into a table with row-level security; the import stages first.
        await conn.execute(
            "INSERT INTO persons (atena_id, person_code) "
            "SELECT * FROM unnest($1::text[], $2::text[])",
            atena_ids,
            ["SYN" + secrets.token_hex(16) for _ in atena_ids],
        )
    finally:
        await conn.close()


async def count_items(api: Any, atena_ids: list[str]) -> int:
    count: int = await api.gateway.state.pool.fetchval(
        "SELECT count(*) FROM replica_items WHERE atena_id = ANY($1::text[])", atena_ids
    )
    return count


async def history(api: Any, atena_id: str, item_code: str, on: str | None = None) -> Any:
    path = f"/internal/v1/persons/{atena_id}/items/{item_code}" + (f"?on={on}" if on else "")
    status, body = await api.call("GET", path)
    assert status == 200, body
    return body


async def ask(
    requester: Any, atena_id: str, procedure: str, item_code: str, provider: str, **extra: Any
) -> dict[str, Any]:
    """Submit a query and wait for its final state."""
    status, submitted = await requester.query(atena_id, procedure, item_code, provider, **extra)
    assert status == 202, submitted
    result: dict[str, Any] = await requester.result(submitted["query_id"])
    return result


async def flag(api: Any, atena_id: str, item_code: str, value: bool) -> None:
    """Set or clear the 自動応答不可フラグ of one of a person's items."""
    status, body = await api.call(
        "PUT",
        f"/internal/v1/persons/{atena_id}/items/{item_code}/manual-review",
        json={"manual_review": value},
    )
    assert status == 200 and body["manual_review"] is value, body
