import datetime as dt

import pytest

from chukan.codecs.catalog import CERTIFICATION, CHIBA_CITY, FUNABASHI_CITY
from chukan.codecs.catalog import LTC_CERTIFICATION_PROCEDURE as PROCEDURE
from chukan.codecs.sample_items import certification_item
from chukan.testing import CoreSystemClient, SyntheticPeople

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_funabashi_reads_a_certification_from_chiba(
    chukan_agencies: dict[str, CoreSystemClient], chukan_people: SyntheticPeople
) -> None:
    chiba, funabashi = chukan_agencies[CHIBA_CITY], chukan_agencies[FUNABASHI_CITY]
    person = chukan_people.person()  # a random 個人番号 with a valid check digit
    for city in (chiba, funabashi):
        assert (await city.register(person.atena_id, person.individual_number))[0] == 201
    item = certification_item(chukan_people.rng, dt.date.today())  # 要介護認定 XML
    assert (await chiba.store(person.atena_id, CERTIFICATION.code, item))[0] == 201
    status, query = await funabashi.query(
        person.atena_id, PROCEDURE, CERTIFICATION.code, CHIBA_CITY
    )
    assert status == 202
    answer = await funabashi.result(query["query_id"])
    assert answer["status"] == "answered" and answer["result"].encode() == item
