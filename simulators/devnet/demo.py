"""The offline demo: a move between 千葉市 and 船橋市, both directions.

1. 船橋市 (the new city of person A) asks 千葉市 for A's care-need
   certification (認定情報) under 項 132;
2. 千葉市 (the new city of person B) asks 船橋市 for B's premium basis
   (地方税 所得・課税) under 項 131;
3. a query that is not on the authorization list is refused at the requester;
4. 千葉市 sends its month-end 受給者異動連絡票 to the 国保連 simulator and prints
   the intake result, then ingests the 給付実績 国保連 returns;

then it shows the provision records on each side and that the hub stored only
ciphertext of what it routed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from lxml import etree

from chukan.codecs import catalog
from chukan.codecs.sample_items import certification_item, local_tax_item
from chukan.gateway.core import db
from chukan.simulators.devnet.kokuhoren_demo import month_end_transmission
from chukan.simulators.devnet.network import Gateway, Network, start_network
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person
from chukan.simulators.hub import HUB_STATE


class DemoFailedError(RuntimeError):
    """A demo step did not give the expected result (the demo then exits non-zero)."""


class Demo:
    def __init__(self, network: Network, session: aiohttp.ClientSession, out: TextIO) -> None:
        self.network = network
        self.session = session
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def call(
        self, gateway: Gateway, method: str, path: str, expect: int, **kwargs: Any
    ) -> dict[str, Any]:
        async with self.session.request(
            method, gateway.url + path, ssl=_core_system(gateway), **kwargs
        ) as response:
            data: dict[str, Any] = await response.json()
            if response.status != expect:
                raise DemoFailedError(f"{method} {path}: HTTP {response.status} {data}")
            return data

    async def register(self, gateway: Gateway, person: SyntheticPerson) -> None:
        await self.call(
            gateway,
            "POST",
            "/internal/v1/persons",
            201,
            json={"atena_id": person.atena_id, "individual_number": person.individual_number},
        )

    async def store(self, gateway: Gateway, atena_id: str, item_code: str, xml: bytes) -> None:
        data = await self.call(
            gateway,
            "PUT",
            f"/internal/v1/persons/{atena_id}/items/{item_code}",
            201,
            data=xml,
            headers={"Content-Type": "application/xml"},
        )
        self.say(
            f"   副本 stored: {item_code} version {data['version']} digest {data['digest'][:16]}…"
        )

    async def query(
        self, requester: Gateway, atena_id: str, procedure: str, item: str, provider: str
    ) -> dict[str, Any]:
        submitted = await self.call(
            requester,
            "POST",
            "/internal/v1/queries",
            202,
            json={
                "atena_id": atena_id,
                "procedure_code": procedure,
                "item_code": item,
                "provider": provider,
            },
        )
        self.say(f"   query id   {submitted['query_id']} (submitted, status {submitted['status']})")
        result = await self.call(
            requester, "GET", f"/internal/v1/queries/{submitted['query_id']}?wait=20", 200
        )
        self.say(f"   permit id  {result['permit_id']}")
        self.say(f"   outcome    {result['status']} {result['reason_code'] or ''}".rstrip())
        return result

    async def record_counts(self) -> None:
        for code, gateway in self.network.gateways.items():
            rows = await gateway.state.pool.fetch(
                "SELECT role, outcome, count(*) AS n FROM provision_records "
                "GROUP BY role, outcome ORDER BY role, outcome"
            )
            summary = ", ".join(f"{r['role']}/{r['outcome']}: {r['n']}" for r in rows)
            self.say(f"   {code} {gateway.config.agency_name}: {summary}")
        hub = self.network.hub.app[HUB_STATE]
        rows = await hub.pool.fetch(
            "SELECT outcome, count(*) AS n FROM hub_records GROUP BY outcome ORDER BY outcome"
        )
        self.say("   hub: " + ", ".join(f"{r['outcome']}: {r['n']}" for r in rows))

    async def hub_saw_only_ciphertext(self, plaintexts: list[bytes]) -> None:
        hub = self.network.hub.app[HUB_STATE]
        rows = await hub.pool.fetch("SELECT message_type, body FROM routed_messages")
        answers = [r for r in rows if r["message_type"] == "ProvisionAnswer"]
        leaks = [
            r["message_type"]
            for r in rows
            for text in plaintexts
            if any(marker in r["body"] for marker in _markers(text))
        ]
        self.say(
            f"   hub routed {len(rows)} messages, {len(answers)} answers, "
            f"all payloads sealed (EncryptedPayload): "
            f"{all(b'<EncryptedPayload' in r['body'] for r in answers if b'provided' in r['body'])}"
        )
        if leaks:
            raise DemoFailedError(f"plaintext found in hub messages: {leaks}")
        self.say("   no item plaintext appears in any message the hub stored")


def _core_system(gateway: Gateway) -> ssl.SSLContext:
    """The 介護保険システム's client certificate for this gateway (mutual TLS)."""
    context = gateway.client_ssl()
    if context is None:
        raise DemoFailedError("the demo network runs over mutual TLS")
    return context


def _markers(xml: bytes) -> list[bytes]:
    """Distinctive fragments of an item: its element names and its whole text."""
    root = etree.fromstring(xml)
    names = {etree.QName(element).localname.encode() for element in root.iter()}
    return [xml, *(b"<" + name for name in names), *(b":" + name for name in names)]


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

            say("\n5. A query with no row in the authorization list is refused at the requester")
            async with session.post(
                chiba.url + "/internal/v1/queries",
                ssl=_core_system(chiba),
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
            await demo.hub_saw_only_ciphertext([certification, income])
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
