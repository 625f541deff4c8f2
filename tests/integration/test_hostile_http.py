"""Malformed or hostile XML over HTTP: a 4xx with a stable code, and nothing stored."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import ssl
from typing import Any
from urllib.parse import urlsplit

import pytest

from chukan.codecs import catalog
from chukan.simulators.devnet.synthetic import synthetic_person

pytestmark = pytest.mark.integration

HOSTILE = {
    "xxe": (
        b'<?xml version="1.0"?><!DOCTYPE i [<!ENTITY x SYSTEM "file:///etc/passwd">]><i>&x;</i>',
        400,
        "xml_forbidden",
    ),
    "billion_laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b"<l>&c;</l>",
        400,
        "xml_forbidden",
    ),
    "external_dtd": (
        b'<?xml version="1.0"?><!DOCTYPE i SYSTEM "http://127.0.0.1:9/x.dtd"><i/>',
        400,
        "xml_forbidden",
    ),
    "deep": (b"<a>" * 10_000 + b"</a>" * 10_000, 413, "xml_too_large"),
    "too_big": (b"<a>" + b"x" * (2 * 1024 * 1024) + b"</a>", 413, "payload_too_large"),
    "not_well_formed": (b"<a><b></a>", 400, "xml_malformed"),
    "wrong_encoding": (
        '<?xml version="1.0" encoding="Shift_JIS"?><a>千葉</a>'.encode("shift_jis"),
        400,
        "xml_encoding",
    ),
    "undeclared_entity": (b"<a>&nope;</a>", 400, "xml_malformed"),
}


@pytest.fixture
async def person(chiba: Any, rng: random.Random) -> str:
    person = synthetic_person(rng, "9")
    assert (await chiba.register(person.atena_id, person.individual_number))[0] == 201
    atena_id: str = person.atena_id
    return atena_id


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_replica_item_is_refused_and_nothing_stored(
    chiba: Any, person: str, name: str
) -> None:
    data, status, code = HOSTILE[name]
    got, body = await chiba.store(person, catalog.CERTIFICATION.code, data)
    assert got == status, body
    assert body["error"]["code"] == code
    stored = await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM replica_items WHERE atena_id = $1", person
    )
    assert stored == 0


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_network_message_is_refused(
    chiba: Any, http: Any, network: Any, name: str
) -> None:
    data, _status, code = HOSTILE[name]
    before = await chiba.gateway.state.pool.fetchval("SELECT count(*) FROM seen_messages")
    async with http.post(
        chiba.gateway.url + "/network/v1/messages",
        data=io.BytesIO(data),
        headers={"Content-Type": "application/xml"},
        ssl=network.hub_client_ssl(),  # as the hub: only the hub may call the network API
    ) as response:
        assert 400 <= response.status < 500
        got = (await response.json())["error"]["code"]
        # The envelope limit (8 MiB) is larger than the item limit, so big bodies reach the
        # parser and fail there as not being a network message.
        assert got == code or (name == "too_big" and got == "xml_structure")
    for url in (network.hub.url + "/network/v1/messages",):
        async with http.post(
            url,
            data=io.BytesIO(data),
            headers={"Content-Type": "application/xml"},
            ssl=network.agency_client_ssl(catalog.CHIBA_CITY),  # as an agency gateway
        ) as r:
            assert 400 <= r.status < 500
    assert await chiba.gateway.state.pool.fetchval("SELECT count(*) FROM seen_messages") == before


async def test_wrong_media_type_for_items(chiba: Any, person: str) -> None:
    status, body = await chiba.call(
        "PUT",
        f"/internal/v1/persons/{person}/items/{catalog.CERTIFICATION.code}",
        data=b"<a/>",
        headers={"Content-Type": "application/json"},
    )
    assert status == 415
    assert body["error"]["code"] == "unsupported_media_type"


async def test_bad_item_code_and_flag(chiba: Any, person: str) -> None:
    status, body = await chiba.store(person, "TM123", b"<a/>")
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    status, body = await chiba.call(
        "PUT",
        f"/internal/v1/persons/{person}/items/{catalog.CERTIFICATION.code}?manual_review=maybe",
        data=b"<a/>",
        headers={"Content-Type": "application/xml"},
    )
    assert (status, body["error"]["code"]) == (422, "validation_failed")


async def test_a_body_cut_short_is_a_client_error_not_an_internal_one(
    chiba: Any, log_capture: Any
) -> None:
    """A client that announces a body and hangs up halfway gets no 500 and no traceback:
    the event says ``request_body_incomplete`` (a busy client giving up did this by the
    hundred, each logged as an internal error)."""
    url = urlsplit(chiba.url)
    context = chiba.gateway.client_ssl(chiba.system)
    auth = "" if context is not None else f"Authorization: Bearer {chiba.gateway.token}\r\n"
    offset = len(log_capture.events())
    _reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=context)
    writer.write(
        (
            f"POST /internal/v1/persons HTTP/1.1\r\nHost: {url.netloc}\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
            '{"atena_id": "'
        ).encode()
    )
    await writer.drain()
    writer.close()  # halfway through the announced body
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()

    async def answered() -> list[dict[str, Any]]:
        return [
            e
            for e in log_capture.events()[offset:]
            if e.get("event") in ("request_refused", "request_failed")
            and e.get("path") == "/internal/v1/persons"
        ]

    for _ in range(200):  # the server notices the hang-up on its own schedule
        events = await answered()
        if events:
            break
        await asyncio.sleep(0.05)
    assert events, "the cut request was never answered or logged"
    assert [e["code"] for e in events] == ["request_body_incomplete"], events
    assert events[0]["event"] == "request_refused" and events[0]["status"] == 400
    assert not [e for e in events if "exception" in e], "a traceback for a client's hang-up"
