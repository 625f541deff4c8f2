"""Helpers shared by the tests of batched exchanges and group commits: a new query, a
provider's answer made by hand, and the check that the three parties recorded alike."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from replica_support import moved_person
from test_exactly_once import provider_answer

from chukan.codecs import catalog
from chukan.codecs.envelope import ProvisionAnswer, QueryRequest, answer_aad, new_message_id
from chukan.keys import seal

#: The fields a query's records share at the requester, the provider and the hub.
SHARED_FIELDS = ("permit_id", "outcome", "procedure_code", "item_code")


async def new_query(chiba: Any, funabashi: Any, rng: random.Random) -> QueryRequest:
    """A new query of 船橋市 to 千葉市 (要介護認定), for a person both know."""
    _, there = await moved_person(rng, chiba, funabashi)
    code = await funabashi.gateway.state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", there
    )
    return QueryRequest(
        query_id=new_message_id(),
        requester_person_code=code,
        provider=catalog.CHIBA_CITY,
        business_code=catalog.LTC_BUSINESS,
        procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
        item_code=catalog.CERTIFICATION.code,
    )


def answer_for(funabashi: Any, query_id: str, permit_id: str, item: bytes) -> bytes:
    """千葉市's signed, sealed answer to one of 船橋市's queries (as the hub forwards it)."""
    aad = answer_aad(query_id, permit_id, catalog.CHIBA_CITY, catalog.FUNABASHI_CITY)
    sealed = seal(funabashi.gateway.state.keys.encryption.public, item, aad)
    return provider_answer(ProvisionAnswer(query_id, permit_id, "provided", None, sealed))


async def assert_recorded_alike(
    chiba: Any,
    funabashi: Any,
    hub_pool: asyncpg.Pool,
    query_ids: Sequence[str],
    outcome: str = "provided",
) -> None:
    """Each query recorded once by 船橋市 (requester), 千葉市 (provider) and the hub, alike,
    with ``outcome``."""
    for query_id in query_ids:
        requester = await funabashi.gateway.state.pool.fetch(
            "SELECT * FROM provision_records WHERE query_id = $1", query_id
        )
        provider = await chiba.gateway.state.pool.fetch(
            "SELECT * FROM provision_records WHERE query_id = $1", query_id
        )
        hub = await hub_pool.fetch("SELECT * FROM hub_records WHERE query_id = $1", query_id)
        assert len(requester) == len(provider) == len(hub) == 1, query_id
        assert requester[0]["role"] == "requester" and provider[0]["role"] == "provider"
        for name in SHARED_FIELDS:
            assert requester[0][name] == provider[0][name] == hub[0][name], name
        assert requester[0]["outcome"] == outcome


@contextlib.asynccontextmanager
async def chain_held(api: Any) -> AsyncIterator[asyncpg.Connection]:
    """The tenant's record-chain head locked (by the owner) until the block ends: every
    conclusion's record insert waits behind it, as behind a slow commit."""
    tenant = api.gateway.state.config.agency_code
    conn = await asyncpg.connect(api.gateway.config.migration_database_url)
    try:
        # The head as the chain's first record would create it, if there is none yet.
        await conn.execute(
            "INSERT INTO record_chain_heads (tenant, seq, hash) "
            "VALUES ($1, 0, chukan_chain_genesis($1)) ON CONFLICT (tenant) DO NOTHING",
            tenant,
        )
        async with conn.transaction():
            locked = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM record_chain_heads WHERE tenant = $1 "
                "FOR UPDATE) AS h",
                tenant,
            )
            assert locked == 1
            yield conn
    finally:
        await conn.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (a state reached, not a duration)."""
    for _ in range(1500):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached: {what}")
