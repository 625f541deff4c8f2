"""The demo's client: one core system calling its gateway, and the demo's failure.

Shared by the demo's steps (:mod:`demo`, :mod:`kokuhoren_demo`), so that neither
imports the other.
"""

from __future__ import annotations

import ssl
from typing import Any, TextIO

import aiohttp
from lxml import etree

from chukan.simulators.devnet.errors import DemoFailedError
from chukan.simulators.devnet.network import Gateway, Network
from chukan.simulators.devnet.synthetic import SyntheticPerson
from chukan.simulators.hub import HUB_STATE


def _markers(xml: bytes) -> list[bytes]:
    """Distinctive fragments of an item: its element names and its whole text."""
    root = etree.fromstring(xml)
    names = {etree.QName(element).localname.encode() for element in root.iter()}
    return [xml, *(b"<" + name for name in names), *(b":" + name for name in names)]


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
            method, gateway.url + path, ssl=core_system_context(gateway), **kwargs
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


def core_system_context(gateway: Gateway) -> ssl.SSLContext:
    """The 介護保険システム's client certificate for this gateway (mutual TLS)."""
    context = gateway.client_ssl()
    if context is None:
        raise DemoFailedError("the demo network runs over mutual TLS")
    return context
