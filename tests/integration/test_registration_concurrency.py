"""符号取得 (POST /internal/v1/persons) under concurrency: one binding, never a 500.

The binding 宛名番号 ↔ 符号 is made by one atomic INSERT … ON CONFLICT: identical
concurrent registrations give one 201 and 200 ``already_registered`` for the rest;
registrations that contradict the binding that won give 409 ``person_conflict``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = pytest.mark.integration

CONCURRENT = 10


async def bindings(api: Any, atena_ids: list[str]) -> list[tuple[str, str]]:
    rows = await api.gateway.state.pool.fetch(
        "SELECT atena_id, person_code FROM persons WHERE atena_id = ANY($1::text[])", atena_ids
    )
    return [(row["atena_id"], row["person_code"]) for row in rows]


async def test_identical_concurrent_registrations_give_one_201_and_nine_200(
    chiba: Any, rng: random.Random, log_capture: Any
) -> None:
    person = synthetic_person(rng, "4")
    answers = await asyncio.gather(
        *(chiba.register(person.atena_id, person.individual_number) for _ in range(CONCURRENT))
    )
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 200: CONCURRENT - 1}, answers
    for status, body in answers:
        assert body == {
            "atena_id": person.atena_id,
            "status": "registered" if status == 201 else "already_registered",
        }
    assert len(await bindings(chiba, [person.atena_id])) == 1
    # And again, later: the same answer as the nine.
    assert await chiba.register(person.atena_id, person.individual_number) == (
        200,
        {"atena_id": person.atena_id, "status": "already_registered"},
    )
    assert person.individual_number not in log_capture.getvalue()


Request = tuple[str, SyntheticPerson]


def _check_outcome(answers: list[tuple[int, Any]], requests: list[Request]) -> list[Request]:
    """The bindings made (one 201 each); the answer of every request agrees with them.

    A request equal to a binding made is answered 200 (except the one 201); any other
    request shares its 宛名番号 or its person with a binding made and is answered 409.
    """
    assert all(status in (200, 201, 409) for status, _ in answers), answers
    made = [
        request for request, (status, _) in zip(requests, answers, strict=True) if status == 201
    ]
    assert len(set(made)) == len(made), "one 201 per binding"
    assert len({atena for atena, _ in made}) == len({person for _, person in made}) == len(made)
    for request, (status, body) in zip(requests, answers, strict=True):
        atena, person = request
        if status == 201:
            assert body == {"atena_id": atena, "status": "registered"}
        elif request in made:
            assert (status, body["status"]) == (200, "already_registered"), body
        else:
            assert (status, body["error"]["code"]) == (409, "person_conflict"), body
            assert any(atena == a or person == p for a, p in made), request
            assert person.individual_number not in body["error"]["message"]
    return made


async def test_one_atena_for_two_people_concurrently_binds_one(
    chiba: Any, rng: random.Random
) -> None:
    atena_id = synthetic_person(rng, "4").atena_id
    people = [synthetic_person(rng, "4"), synthetic_person(rng, "4")]
    requests: list[Request] = [(atena_id, people[i % 2]) for i in range(CONCURRENT)]
    answers = await asyncio.gather(
        *(chiba.register(atena, person.individual_number) for atena, person in requests)
    )
    [(_, person)] = _check_outcome(list(answers), requests)
    bound = await bindings(chiba, [atena_id])
    assert len(bound) == 1
    # The 符号 kept is the winner's: registering the winner again is a repeat, the other
    # person under this 宛名番号 still a conflict.
    assert (await chiba.register(atena_id, person.individual_number))[0] == 200
    other = people[1] if person is people[0] else people[0]
    status, body = await chiba.register(atena_id, other.individual_number)
    assert (status, body["error"]["code"]) == (409, "person_conflict")
    assert await bindings(chiba, [atena_id]) == bound


async def test_one_person_under_two_atena_concurrently_binds_one(
    chiba: Any, rng: random.Random
) -> None:
    person = synthetic_person(rng, "4")
    atena_ids = [person.atena_id, synthetic_person(rng, "4").atena_id]
    requests: list[Request] = [(atena_ids[i % 2], person) for i in range(CONCURRENT)]
    answers = await asyncio.gather(
        *(chiba.register(atena, p.individual_number) for atena, p in requests)
    )
    [(winner_atena, _)] = _check_outcome(list(answers), requests)
    assert [atena for atena, _ in await bindings(chiba, atena_ids)] == [winner_atena]


async def test_mixed_concurrent_registrations_never_fail(
    chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    """Repeats, both kinds of conflict and another tenant's registration, all at once."""
    base = synthetic_person(rng, "4")
    other_atena = synthetic_person(rng, "4").atena_id
    other_person = synthetic_person(rng, "4")
    requests: list[Request] = [
        (base.atena_id, base),
        (base.atena_id, other_person),
        (other_atena, base),
    ] * 4
    answers = await asyncio.gather(
        *(chiba.register(atena, p.individual_number) for atena, p in requests),
        # The same pair in another city is that city's own binding (tenant-scoped keys).
        *(funabashi.register(base.atena_id, base.individual_number) for _ in range(3)),
    )
    in_chiba, in_funabashi = list(answers[: len(requests)]), list(answers[len(requests) :])
    made = _check_outcome(in_chiba, requests)
    # Either base's own pair, or the two crossed pairs (which do not conflict).
    assert len(made) in (1, 2)
    assert sorted(status for status, _ in in_funabashi) == [200, 200, 201]
    assert len(await bindings(chiba, [base.atena_id, other_atena])) == len(made)
    assert len(await bindings(funabashi, [base.atena_id])) == 1
