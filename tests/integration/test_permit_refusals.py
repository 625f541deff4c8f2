"""The provider refuses forged, expired, replayed, misaddressed and mismatched permits.

The test plays the hub with the hub's own signing key (taken from the running
hub), so the only thing wrong in each request is the one thing under test.  A
refused permit is answered with a *signed* refusal (200, a ProvisionAnswer with
outcome refused and the reason): the only answer the hub takes as final, recorded
by the provider exactly as the hub will record it.  A message that is not the
hub's (bad signature, wrong receiver) is an HTTP error, which the hub retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from typing import Any

import pytest
from structlog.testing import capture_logs

from chukan.codecs import catalog
from chukan.codecs.envelope import (
    HUB,
    Header,
    ProvisionAnswer,
    ProvisionRequest,
    decode_message,
    encode_body_c14n,
    encode_message,
    new_message_id,
)
from chukan.codecs.sample_items import certification_item
from chukan.gateway.core.web import SIGNATURE_HEADER, signature_header
from chukan.keys import SigningKeyPair, generate_signing_key
from chukan.permits import Permit, body_digest, encode_permit, new_permit_id
from chukan.simulators.devnet.synthetic import synthetic_person
from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class HubImpostor:
    network: Any
    http: Any
    provider: Any  # conftest.Api of the provider gateway
    person_code: str

    @property
    def hub_signer(self) -> SigningKeyPair:
        signer: SigningKeyPair = self.network.hub.app[HUB_STATE].keys.signing
        return signer

    def request_body(self, **changes: Any) -> ProvisionRequest:
        requester = self.network.gateways[catalog.FUNABASHI_CITY].state.keys.encryption.public
        values: dict[str, Any] = {
            "query_id": new_message_id(),
            "requester": catalog.FUNABASHI_CITY,
            "provider_person_code": self.person_code,
            "business_code": catalog.LTC_BUSINESS,
            "procedure_code": catalog.LTC_CERTIFICATION_PROCEDURE,
            "item_code": catalog.CERTIFICATION.code,
            "legal_basis": 132,
            "requester_key_id": requester.key_id,
            "requester_key": requester.raw,
        }
        values.update(changes)
        return ProvisionRequest(**values)

    def permit(self, body: ProvisionRequest, **changes: Any) -> Permit:
        now = dt.datetime.now(dt.UTC)
        values: dict[str, Any] = {
            "permit_id": new_permit_id(),
            "query_id": body.query_id,
            "requester": body.requester,
            "provider": catalog.CHIBA_CITY,
            "business_code": body.business_code,
            "procedure_code": body.procedure_code,
            "item_code": body.item_code,
            "legal_basis": body.legal_basis,
            "provider_person_code": body.provider_person_code,
            "issued_at": now,
            "expires_at": now + dt.timedelta(minutes=5),
            "body_digest": body_digest(encode_body_c14n(body)),
        }
        values.update(changes)
        return Permit(**values)

    async def send(
        self,
        body: ProvisionRequest,
        permit: Permit,
        *,
        permit_signer: SigningKeyPair | None = None,
        receiver: str = catalog.CHIBA_CITY,
    ) -> tuple[int, Any]:
        token = encode_permit(permit, permit_signer or self.hub_signer)
        header = Header(
            new_message_id(), "ProvisionRequest", HUB, receiver, dt.datetime.now(dt.UTC), token
        )
        return await self.post(encode_message(header, body))

    def message(self, body: ProvisionRequest, permit: Permit | None = None) -> bytes:
        """The hub's ProvisionRequest envelope for ``body``, carrying ``permit`` (a fresh one)."""
        token = encode_permit(permit or self.permit(body), self.hub_signer)
        header = Header(
            new_message_id(),
            "ProvisionRequest",
            HUB,
            catalog.CHIBA_CITY,
            dt.datetime.now(dt.UTC),
            token,
        )
        return encode_message(header, body)

    async def post(self, message: bytes) -> tuple[int, Any]:
        """POST one envelope signed with the hub's key, over the hub's certificate."""
        async with self.http.post(
            self.provider.gateway.url + "/network/v1/messages",
            data=message,
            headers={
                "Content-Type": "application/xml",
                SIGNATURE_HEADER: signature_header(self.hub_signer, message),
            },
            ssl=self.network.hub_client_ssl(),
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()


@pytest.fixture
async def impostor(network: Any, http: Any, chiba: Any, rng: random.Random) -> HubImpostor:
    person = synthetic_person(rng, "4")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    item = certification_item(rng, dt.date.today())
    assert (await chiba.store(person.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    code = await chiba.gateway.state.pool.fetchval(
        "SELECT person_code FROM persons WHERE atena_id = $1", person.atena_id
    )
    return HubImpostor(network, http, chiba, code)


def refusal_reason(status: int, answer: Any) -> str | None:
    """The reason of a signed refusal (asserting that it is one)."""
    assert status == 200, answer
    body = decode_message(answer).body
    assert isinstance(body, ProvisionAnswer)
    assert (body.outcome, body.payload) == ("refused", None)
    return body.reason_code


async def _provider_record(impostor: HubImpostor, query_id: str) -> Any:
    return await impostor.provider.gateway.state.pool.fetchrow(
        "SELECT outcome, reason_code, permit_id FROM provision_records "
        "WHERE role = 'provider' AND query_id = $1",
        query_id,
    )


async def test_a_well_formed_permit_is_honoured(impostor: HubImpostor) -> None:
    """Control case: the same construction with nothing wrong is answered."""
    body = impostor.request_body()
    status, answer = await impostor.send(body, impostor.permit(body))
    assert status == 200
    assert b"<Outcome>provided</Outcome>" in answer
    assert b"<EncryptedPayload" in answer
    record = await _provider_record(impostor, body.query_id)
    assert record["outcome"] == "provided"


async def test_forged_permit_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    forger = dataclasses.replace(generate_signing_key("hub"), key_id=impostor.hub_signer.key_id)
    status, error = await impostor.send(body, impostor.permit(body), permit_signer=forger)
    assert refusal_reason(status, error) == "permit_signature_invalid"
    record = await _provider_record(impostor, body.query_id)
    assert record["outcome"] == "refused"
    assert record["reason_code"] == "permit_signature_invalid"


async def test_permit_signed_by_an_unknown_key_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    status, error = await impostor.send(
        body, impostor.permit(body), permit_signer=generate_signing_key("hub")
    )
    assert refusal_reason(status, error) == "permit_key_unknown"


async def test_expired_permit_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    permit = impostor.permit(body, issued_at=past, expires_at=past + dt.timedelta(minutes=5))
    status, error = await impostor.send(body, permit)
    assert refusal_reason(status, error) == "permit_expired"


async def test_replayed_permit_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    permit = impostor.permit(body)
    first, _ = await impostor.send(body, permit)
    assert first == 200
    # Same permit, new message id and signature: only the permit is replayed.
    status, error = await impostor.send(body, permit)
    assert refusal_reason(status, error) == "permit_replayed"
    # Both events are on the provider's record: the provision, then the refused replay.
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE role = 'provider' AND query_id = $1 ORDER BY seq",
        body.query_id,
    )
    assert [(r["outcome"], r["reason_code"]) for r in rows] == [
        ("provided", None),
        ("refused", "permit_replayed"),
    ]


async def test_permit_for_another_agency_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    permit = impostor.permit(body, provider=catalog.FUNABASHI_CITY)
    status, error = await impostor.send(body, permit)
    assert refusal_reason(status, error) == "permit_audience"


async def test_message_addressed_to_another_agency_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    status, error = await impostor.send(
        body, impostor.permit(body), receiver=catalog.FUNABASHI_CITY
    )
    assert status == 403  # not the hub's message to us: an HTTP error, never an answer
    assert error["error"]["code"] == "message_misaddressed"


async def test_permit_for_another_body_is_refused(impostor: HubImpostor) -> None:
    """A valid permit moved onto a request for another item does not pass."""
    body = impostor.request_body()
    permit = impostor.permit(body)
    other = dataclasses.replace(body, item_code=catalog.PREMIUM_BASIS.code)
    status, error = await impostor.send(other, permit)
    assert refusal_reason(status, error) == "permit_body_mismatch"


async def test_permit_for_another_query_is_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    other = impostor.request_body()
    # A permit correctly bound to `body`'s digest but naming another query id.
    permit = impostor.permit(body, query_id=other.query_id)
    status, error = await impostor.send(body, permit)
    assert refusal_reason(status, error) == "permit_malformed"


async def test_unknown_person_code_is_answered_with_a_reason(impostor: HubImpostor) -> None:
    body = impostor.request_body(provider_person_code="NoSuchPersonCode0001")
    status, answer = await impostor.send(body, impostor.permit(body))
    assert status == 200
    assert b"<Outcome>refused</Outcome>" in answer
    assert b"<ReasonCode>person_unknown</ReasonCode>" in answer
    record = await _provider_record(impostor, body.query_id)
    assert record["reason_code"] == "person_unknown"


async def test_unsigned_or_badly_signed_messages_are_refused(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    message = impostor.message(body)
    url = impostor.provider.gateway.url + "/network/v1/messages"
    xml = {"Content-Type": "application/xml"}
    hub_tls = impostor.network.hub_client_ssl()
    async with impostor.http.post(url, data=message, headers=xml, ssl=hub_tls) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "message_signature_invalid"
    stranger = generate_signing_key("hub")
    async with impostor.http.post(
        url,
        data=message,
        headers={**xml, SIGNATURE_HEADER: signature_header(stranger, message)},
        ssl=hub_tls,
    ) as response:
        assert response.status == 401
    tampered = message.replace(b"<LegalBasis>132<", b"<LegalBasis>133<")
    async with impostor.http.post(
        url,
        data=tampered,
        headers={**xml, SIGNATURE_HEADER: signature_header(impostor.hub_signer, message)},
        ssl=hub_tls,
    ) as response:
        assert response.status == 401


async def test_stale_messages_are_refused_and_a_repeated_one_gets_the_same_answer(
    impostor: HubImpostor,
) -> None:
    body = impostor.request_body()
    token = encode_permit(impostor.permit(body), impostor.hub_signer)
    answers: list[bytes] = []

    async def post(header: Header) -> int:
        status, answer = await impostor.post(encode_message(header, body))
        answers.append(answer)
        return status

    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    status = await post(
        Header(new_message_id(), "ProvisionRequest", HUB, catalog.CHIBA_CITY, old, token)
    )
    assert refusal_reason(status, answers[-1]) == "message_stale"
    header = Header(
        new_message_id(),
        "ProvisionRequest",
        HUB,
        catalog.CHIBA_CITY,
        dt.datetime.now(dt.UTC),
        token,
    )
    assert await post(header) == 200
    # The very same message again (the hub retrying after a lost response): the same
    # answer, byte for byte, and nothing provided or recorded twice.
    assert await post(header) == 200
    assert answers[-1] == answers[-2]
    assert b"<Outcome>provided</Outcome>" in answers[-1]
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE role = 'provider' AND query_id = $1 ORDER BY seq",
        body.query_id,
    )
    assert [(r["outcome"], r["reason_code"]) for r in rows] == [
        ("refused", "message_stale"),
        ("provided", None),
    ]


async def test_a_row_missing_from_the_providers_list_is_refused(impostor: HubImpostor) -> None:
    """A genuine hub permit is not enough: the provider's own list must carry the row too."""
    body = impostor.request_body(item_code=catalog.INSURED_QUALIFICATION.code)  # not for 船橋市
    status, error = await impostor.send(body, impostor.permit(body))
    assert refusal_reason(status, error) == "not_authorized"
    record = await _provider_record(impostor, body.query_id)
    assert (record["outcome"], record["reason_code"]) == ("refused", "not_authorized")
    # Nothing was consumed: the permit id is not in the replay store.
    used = await impostor.provider.gateway.state.pool.fetchval(
        "SELECT count(*) FROM used_permits WHERE query_id = $1", body.query_id
    )
    assert used == 0


async def test_a_used_permit_stays_used_across_a_restart(impostor: HubImpostor) -> None:
    body = impostor.request_body()
    permit = impostor.permit(body)
    first, _ = await impostor.send(body, permit)
    assert first == 200
    await impostor.network.restart_gateway(catalog.CHIBA_CITY)
    status, error = await impostor.send(body, permit)
    assert refusal_reason(status, error) == "permit_replayed"
    # Both events are on the provider's record: the provision, then the refused replay.
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE role = 'provider' AND query_id = $1 ORDER BY seq",
        body.query_id,
    )
    assert [(r["outcome"], r["reason_code"]) for r in rows] == [
        ("provided", None),
        ("refused", "permit_replayed"),
    ]


async def test_used_permits_are_forgotten_only_after_expiry_and_skew(
    impostor: HubImpostor,
) -> None:
    """The deletion job keeps a used permit while it could still be accepted (expiry + skew)."""
    from chukan.gateway.ops.purge import purge_results

    state = impostor.provider.gateway.state
    timing = state.config.timing
    margin = max(timing.permit_skew, timing.message_skew)
    now = dt.datetime.now(dt.UTC)
    ids = {
        "long-expired": now - margin - dt.timedelta(minutes=10),
        "within-skew": now - timing.permit_skew / 2,
        "valid": now + dt.timedelta(minutes=5),
    }
    prefix = new_permit_id()
    await state.pool.executemany(
        "INSERT INTO used_permits (permit_id, query_id, expires_at) VALUES ($1, $2, $3)",
        [(f"{prefix}-{name}", f"q-{name}", at) for name, at in ids.items()],
    )
    async with state.pool.acquire() as conn:
        await purge_results(
            conn,
            state.config.agency_code,
            retention=state.config.ops.result_retention,
            message_skew=timing.message_skew,
            permit_skew=timing.permit_skew,
        )
    left = {
        r["permit_id"].removeprefix(f"{prefix}-")
        for r in await state.pool.fetch(
            "SELECT permit_id FROM used_permits WHERE permit_id LIKE $1", f"{prefix}-%"
        )
    }
    assert left == {"within-skew", "valid"}


async def test_a_permit_just_past_expiry_is_accepted_within_the_clock_skew(
    impostor: HubImpostor,
) -> None:
    """``Timing.permit_skew`` (30 s by default) absorbs a hub clock slightly ahead."""
    skew = impostor.provider.gateway.config.timing.permit_skew
    body = impostor.request_body()
    now = dt.datetime.now(dt.UTC)
    permit = impostor.permit(
        body, issued_at=now - dt.timedelta(minutes=5), expires_at=now - skew / 3
    )
    status, _ = await impostor.send(body, permit)
    assert status == 200
    late = impostor.request_body()
    permit = impostor.permit(
        late, issued_at=now - dt.timedelta(minutes=5), expires_at=now - skew * 2
    )
    status, error = await impostor.send(late, permit)
    assert refusal_reason(status, error) == "permit_expired"


async def test_copies_of_one_request_arriving_together_are_answered_once(
    impostor: HubImpostor,
) -> None:
    """The hub retrying while the first copy is still being answered: one provision."""
    message = impostor.message(impostor.request_body())
    answers = await asyncio.gather(*(impostor.post(message) for _ in range(6)))
    assert {status for status, _ in answers} == {200}
    assert len({answer for _, answer in answers}) == 1  # byte for byte
    assert b"<Outcome>provided</Outcome>" in answers[0][1]
    sent = decode_message(message).body
    assert isinstance(sent, ProvisionRequest)
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT outcome FROM provision_records WHERE role = 'provider' AND query_id = $1",
        sent.query_id,
    )
    assert [r["outcome"] for r in rows] == ["provided"]


async def test_provisions_arriving_together_are_committed_together(impostor: HubImpostor) -> None:
    """Group commit: concurrent provisions share statements, each still recorded once."""
    bodies = [impostor.request_body() for _ in range(40)]
    with capture_logs() as events:
        results = await asyncio.gather(*(impostor.send(b, impostor.permit(b)) for b in bodies))
    for status, answer in results:
        assert status == 200
        assert b"<Outcome>provided</Outcome>" in answer
    sizes = [e["size"] for e in events if e["event"] == "provision_batch_written"]
    assert sum(sizes) == len(bodies)
    assert max(sizes) > 1  # at least one commit carried several provisions
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT query_id, count(*) AS n FROM provision_records "
        "WHERE role = 'provider' AND query_id = ANY($1::text[]) GROUP BY query_id",
        [b.query_id for b in bodies],
    )
    assert {r["query_id"]: r["n"] for r in rows} == {b.query_id: 1 for b in bodies}
    stored = await impostor.provider.gateway.state.pool.fetchval(
        "SELECT count(*) FROM provision_answers a JOIN used_permits u USING (permit_id) "
        "WHERE u.query_id = ANY($1::text[])",
        [b.query_id for b in bodies],
    )
    assert stored == len(bodies)


async def test_copies_and_replays_arriving_together_get_one_outcome(
    impostor: HubImpostor,
) -> None:
    """Copies of one message and replays of its permit, all at once: one provision."""
    body = impostor.request_body()
    permit = impostor.permit(body)
    message = impostor.message(body, permit)
    replays = [impostor.message(body, permit) for _ in range(3)]  # new message ids
    results = await asyncio.gather(
        *(impostor.post(message) for _ in range(4)), *(impostor.post(m) for m in replays)
    )
    copies, others = results[:4], results[4:]
    assert {status for status, _ in copies} == {200}
    assert len({answer for _, answer in copies}) == 1  # the stored answer, byte for byte
    outcomes = [decode_message(answer).body for _, answer in [copies[0], *others]]
    assert all(isinstance(o, ProvisionAnswer) for o in outcomes)
    provided = [o for o in outcomes if isinstance(o, ProvisionAnswer) and o.outcome == "provided"]
    assert len(provided) == 1
    rows = await impostor.provider.gateway.state.pool.fetch(
        "SELECT outcome, reason_code FROM provision_records "
        "WHERE role = 'provider' AND query_id = $1 ORDER BY seq",
        body.query_id,
    )
    # One provision; every other message id is a refused replay of its permit.
    assert sorted((r["outcome"], r["reason_code"]) for r in rows) == sorted(
        [("provided", None)] + [("refused", "permit_replayed")] * 3
    )
