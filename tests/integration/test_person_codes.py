"""The hub's 符号 conversion (codes.provider_person_code) on the hub's own tables."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pytest

from chukan.codecs import catalog
from chukan.gateway.core.errors import PersonNotAtProviderError, PersonUnknownError
from chukan.simulators.hub import HUB_STATE
from chukan.simulators.hub.codes import provider_person_code

pytestmark = pytest.mark.integration


async def test_a_code_converts_only_for_its_own_agency_and_a_known_provider(
    network: Any, chiba: Any, funabashi: Any
) -> None:
    pool = network.hub.app[HUB_STATE].pool
    both, only_chiba = uuid.uuid4(), uuid.uuid4()
    codes = {name: secrets.token_urlsafe(18) for name in ("chiba", "funabashi", "alone")}
    await pool.executemany(
        "INSERT INTO persons (person_id, number_digest) VALUES ($1, $2)",
        [(both, secrets.token_bytes(32)), (only_chiba, secrets.token_bytes(32))],
    )
    await pool.executemany(
        "INSERT INTO person_codes (agency_code, person_id, person_code) VALUES ($1, $2, $3)",
        [
            (catalog.CHIBA_CITY, both, codes["chiba"]),
            (catalog.FUNABASHI_CITY, both, codes["funabashi"]),
            (catalog.CHIBA_CITY, only_chiba, codes["alone"]),
        ],
    )
    chiba_city, funabashi_city = catalog.CHIBA_CITY, catalog.FUNABASHI_CITY
    assert (
        await provider_person_code(pool, chiba_city, codes["chiba"], funabashi_city)
        == (codes["funabashi"])
    )
    assert (
        await provider_person_code(pool, funabashi_city, codes["funabashi"], chiba_city)
        == (codes["chiba"])
    )
    with pytest.raises(PersonNotAtProviderError):
        await provider_person_code(pool, chiba_city, codes["alone"], funabashi_city)
    with pytest.raises(PersonUnknownError):  # another agency's 符号 is not the requester's
        await provider_person_code(pool, funabashi_city, codes["chiba"], chiba_city)
    with pytest.raises(PersonUnknownError):
        await provider_person_code(pool, chiba_city, secrets.token_urlsafe(18), funabashi_city)
