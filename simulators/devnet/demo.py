"""The offline demo: a move between 千葉市 and 船橋市, both directions.

1. 船橋市 (the new city of person A) asks 千葉市 for A's care-need
   certification (認定情報) under 項 132;
2. 千葉市 (the new city of person B) asks 船橋市 for B's premium basis
   (地方税 所得・課税) under 項 131;
3. 市川市, a third city started for the purpose (every city of 千葉県 is on the
   list), asks 千葉市 for the certification of person C, who moved there;
4. a query that is not on the authorization list is refused at the requester;
5. 千葉市 sends its month-end 受給者異動連絡票 to the 国保連 simulator and prints
   the intake result, then ingests the 給付実績 国保連 returns;

then it shows the provision records on each side and that the hub stored only
ciphertext of what it routed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import aiohttp

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item, local_tax_item
from chukan.gateway.core import db
from chukan.simulators.devnet.demo_client import Demo, core_system_context
from chukan.simulators.devnet.errors import DemoFailedError
from chukan.simulators.devnet.kokuhoren_demo import month_end_transmission
from chukan.simulators.devnet.network import start_network
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person


async def run_demo(server_url: str, work_dir: Path, out: TextIO = sys.stdout) -> None:
    rng = random.Random()  # noqa: S311 -- synthetic data, not secrets

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("chukan demo: hub, 千葉市 and 船橋市 gateways on one PostgreSQL")
    # each run starts empty
    for database in ("chukan_demo_hub", "chukan_demo_gateway", "chukan_demo_kokuhoren"):
        await db.drop_database(server_url, database)
    network = await start_network(
        server_url,
        work_dir,
        gateway_database="chukan_demo_gateway",
        hub_database="chukan_demo_hub",
        kokuhoren_database="chukan_demo_kokuhoren",
    )
    try:
        chiba = network.gateways[catalog.CHIBA_CITY]
        funabashi = network.gateways[catalog.FUNABASHI_CITY]
        say(" mutual TLS: a CA for this run; every server and caller holds a certificate")
        say(f" hub      {network.hub.url}")
        say(f" 千葉市   {chiba.url}")
        say(f" 船橋市   {funabashi.url}")
        async with aiohttp.ClientSession() as session:
            demo = Demo(network, session, out)
            # Person A moves from 千葉市 to 船橋市; person B from 船橋市 to 千葉市.
            a_chiba, b_funabashi = synthetic_person(rng, "1"), synthetic_person(rng, "2")
            a_funabashi = SyntheticPerson(
                synthetic_person(rng, "3").atena_id,
                a_chiba.individual_number,
                a_chiba.kana_name,
                a_chiba.birth_year,
            )
            b_chiba = SyntheticPerson(
                synthetic_person(rng, "4").atena_id,
                b_funabashi.individual_number,
                b_funabashi.kana_name,
                b_funabashi.birth_year,
            )
            say("\n1. 符号取得: each city registers the people it knows (個人番号 → 符号)")
            for gateway, person in (
                (chiba, a_chiba),
                (funabashi, a_funabashi),
                (funabashi, b_funabashi),
                (chiba, b_chiba),
            ):
                await demo.register(gateway, person)
                say(f"   {gateway.config.agency_name}: 宛名番号 {person.atena_id} registered")
            say("\n2. 副本: 千葉市 stores A's 認定情報; 船橋市 stores B's 地方税 所得情報")
            certification = certification_item(rng, dt.date.today())
            income = local_tax_item(rng, dt.date.today())
            await demo.store(chiba, a_chiba.atena_id, catalog.CERTIFICATION.code, certification)
            await demo.store(funabashi, b_funabashi.atena_id, catalog.LOCAL_TAX_INCOME.code, income)

            say("\n3. 船橋市 queries 千葉市 for A's 認定情報 (項 132)")
            first = await demo.query(
                funabashi,
                a_funabashi.atena_id,
                catalog.LTC_CERTIFICATION_PROCEDURE,
                catalog.CERTIFICATION.code,
                catalog.CHIBA_CITY,
            )
            if first["status"] != "answered" or first["result"].encode() != certification:
                raise DemoFailedError("船橋市 did not receive A's certification intact")
            say("   result     decrypted by 船橋市, identical to 千葉市's 副本")

            say("\n4. 千葉市 queries 船橋市 for B's premium basis (項 131)")
            second = await demo.query(
                chiba,
                b_chiba.atena_id,
                catalog.LTC_PREMIUM_PROCEDURE,
                catalog.LOCAL_TAX_INCOME.code,
                catalog.FUNABASHI_CITY,
            )
            if second["status"] != "answered" or second["result"].encode() != income:
                raise DemoFailedError("千葉市 did not receive B's premium basis intact")
            say("   result     decrypted by 千葉市, identical to 船橋市's 副本")

            say("\n4b. 市川市 (a third city) queries 千葉市 for C's 認定情報 (項 132)")
            ichikawa = await network.add_gateway(catalog.ICHIKAWA_CITY, "市川市")
            c_chiba = synthetic_person(rng, "5")
            c_ichikawa = SyntheticPerson(
                synthetic_person(rng, "6").atena_id,
                c_chiba.individual_number,
                c_chiba.kana_name,
                c_chiba.birth_year,
            )
            await demo.register(chiba, c_chiba)
            await demo.register(ichikawa, c_ichikawa)
            certification_c = certification_item(rng, dt.date.today())
            await demo.store(chiba, c_chiba.atena_id, catalog.CERTIFICATION.code, certification_c)
            third = await demo.query(
                ichikawa,
                c_ichikawa.atena_id,
                catalog.LTC_CERTIFICATION_PROCEDURE,
                catalog.CERTIFICATION.code,
                catalog.CHIBA_CITY,
            )
            if third["status"] != "answered" or third["result"].encode() != certification_c:
                raise DemoFailedError("市川市 did not receive C's certification intact")
            say("   result     decrypted by 市川市, identical to 千葉市's 副本")

            say("\n5. A query with no row in the authorization list is refused at the requester")
            async with session.post(
                chiba.url + "/internal/v1/queries",
                ssl=core_system_context(chiba),
                json={
                    "atena_id": b_chiba.atena_id,
                    "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
                    "item_code": catalog.BENEFIT.code,
                    "provider": catalog.FUNABASHI_CITY,
                },
            ) as response:
                refusal = await response.json()
                if response.status != 403:
                    raise DemoFailedError(f"expected a refusal, got HTTP {response.status}")
                say(f"   HTTP {response.status} {refusal['error']['code']}")

            say("\n6. 情報提供等記録 per side")
            await demo.record_counts()
            say("\n7. What the hub stored")
            await demo.hub_saw_only_ciphertext([certification, income, certification_c])
            await month_end_transmission(demo, rng, [a_chiba, b_chiba])
        say("\ndemo finished: both directions answered, records kept on every side")
    finally:
        await network.stop()


def demo_main(server_url: str) -> int:
    with tempfile.TemporaryDirectory(prefix="chukan-demo-") as tmp:
        try:
            asyncio.run(run_demo(server_url, Path(tmp)))
        except DemoFailedError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    return 0
