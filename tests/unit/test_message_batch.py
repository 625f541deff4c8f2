"""Message batches: the container round-trips any message, refuses hostile input whole
(naming the entry), and the batcher under it runs batches in flight as promised."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chukan.codecs.errors import MessageBatchError
from chukan.codecs.message_batch import (
    MAX_BATCH_MESSAGES,
    BatchMessage,
    BatchReply,
    decode_batch,
    decode_replies,
    encode_batch,
    encode_replies,
)
from chukan.gateway.core.batching import Batcher

_signatures = st.none() | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=400
)
_request_ids = st.none() | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,99}\Z")
_messages = st.builds(BatchMessage, st.binary(max_size=2048), _signatures, _request_ids)
_content_types = st.sampled_from(["application/xml", "application/json", "text/plain"])
_replies = st.builds(
    BatchReply, st.integers(100, 599), st.binary(max_size=2048), _content_types, _signatures
)


@given(st.lists(_messages, min_size=1, max_size=MAX_BATCH_MESSAGES))
def test_any_batch_round_trips(messages: list[BatchMessage]) -> None:
    assert decode_batch(encode_batch(messages)) == messages


@given(st.lists(_replies, min_size=0, max_size=MAX_BATCH_MESSAGES))
def test_any_replies_round_trip(replies: list[BatchReply]) -> None:
    assert decode_replies(encode_replies(replies), len(replies)) == replies


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"body": base64.b64encode(b"<x/>").decode(), "signature": "k=1;s=2"}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not _ABSENT}


_ABSENT = object()


def _batch(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"messages": list(entries)}).encode()


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[]", None),
        (b'{"messages": {}}', None),
        (b'{"messages": [], "extra": 1}', None),
        (b'{"replies": []}', None),
        (_batch(), None),  # empty
        (_batch(*[_entry()] * (MAX_BATCH_MESSAGES + 1)), None),  # too many
        (json.dumps({"messages": [_entry(), "not an object"]}).encode(), "messages[1]"),
        (_batch(_entry(), _entry(body=_ABSENT)), "messages[1]"),
        (_batch(_entry(), _entry(surprise=1)), "messages[1]"),
        (_batch(_entry(body="not base64!")), "messages[0]"),
        (_batch(_entry(), _entry(body="QUJ")), "messages[1]"),  # bad padding
        (_batch(_entry(body=12)), "messages[0]"),
        (_batch(_entry(), _entry(body="Zm9v\u00e9")), "messages[1]"),  # not ASCII
        (_batch(_entry(signature="x" * 401)), "messages[0]"),
        (_batch(_entry(signature="line\nbreak")), "messages[0]"),
        (_batch(_entry(signature=7)), "messages[0]"),
        (_batch(_entry(), _entry(request_id="bad id")), "messages[1]"),
        (_batch(_entry(request_id="trailing-newline\n")), "messages[0]"),
    ],
)
def test_a_hostile_batch_is_refused_whole(raw: bytes, where: str | None) -> None:
    with pytest.raises(MessageBatchError) as refused:
        decode_batch(raw)
    assert refused.value.code == "message_batch_invalid"
    if where is not None:
        assert refused.value.where == where


def _reply(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status": 200,
        "content_type": "application/xml",
        "body": base64.b64encode(b"<a/>").decode(),
        "signature": None,
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not _ABSENT}


def _replies_of(*entries: Any) -> bytes:
    return json.dumps({"replies": list(entries)}).encode()


@pytest.mark.parametrize(
    ("raw", "expected", "where"),
    [
        (b"<html>", 1, None),
        (b'{"messages": []}', 0, None),
        (_replies_of(_reply()), 2, None),  # count mismatch: fewer
        (_replies_of(_reply(), _reply()), 1, None),  # count mismatch: more
        (_replies_of(_reply(), _reply(status=600)), 2, "replies[1]"),
        (_replies_of(_reply(status=99)), 1, "replies[0]"),
        (_replies_of(_reply(status="200")), 1, "replies[0]"),
        (_replies_of(_reply(status=True)), 1, "replies[0]"),
        (_replies_of(_reply(status=200.0)), 1, "replies[0]"),
        (_replies_of(_reply(status=_ABSENT)), 1, "replies[0]"),
        (_replies_of(_reply(content_type="no slash")), 1, "replies[0]"),
        (_replies_of(_reply(body="%%%")), 1, "replies[0]"),
        (_replies_of(_reply(body=_ABSENT)), 1, "replies[0]"),
        (_replies_of(_reply(), [1, 2]), 2, "replies[1]"),
        (_replies_of(_reply(extra=None)), 1, "replies[0]"),
    ],
)
def test_hostile_replies_are_refused_whole(raw: bytes, expected: int, where: str | None) -> None:
    with pytest.raises(MessageBatchError) as refused:
        decode_replies(raw, expected)
    assert refused.value.code == "message_batch_invalid"
    if where is not None:
        assert refused.value.where == where


def test_the_control_batch_is_accepted() -> None:
    """The hostile cases above differ from this one only in what they break."""
    assert decode_batch(_batch(_entry(body="QUJD"), _entry(request_id="q-1"))) == [
        BatchMessage(b"ABC", "k=1;s=2"),
        BatchMessage(b"<x/>", "k=1;s=2", "q-1"),
    ]
    assert decode_replies(_replies_of(_reply()), 1) == [BatchReply(200, b"<a/>", "application/xml")]


def test_a_batch_never_exceeds_its_bound_when_encoded() -> None:
    with pytest.raises(MessageBatchError):
        encode_batch([])
    with pytest.raises(MessageBatchError):
        encode_batch([BatchMessage(b"", None)] * (MAX_BATCH_MESSAGES + 1))


# -- the batcher with batches in flight ----------------------------------------------------


class _Calls:
    """A call that records its batches and waits until released (one event per batch)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.release: list[asyncio.Event] = []
        self.started = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.release.append(gate)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await gate.wait()
        finally:
            self.running -= 1
        if 13 in items:
            raise ValueError("unlucky batch")
        return [item * 10 for item in items]


async def _until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_two_batches_run_in_flight_and_a_burst_fills_one() -> None:
    calls = _Calls()
    batcher: Batcher[int, int] = Batcher(calls, max_batch=8, name="test", in_flight=2)
    first = asyncio.ensure_future(batcher.submit(1))
    await _until(lambda: len(calls.batches) == 1)
    burst = [asyncio.ensure_future(batcher.submit(n)) for n in range(2, 7)]
    await _until(lambda: len(calls.batches) == 2)
    # The whole burst went in one second batch, beside the first (two in flight).
    assert calls.batches == [[1], [2, 3, 4, 5, 6]]
    assert calls.running == 2
    # A third batch waits for one of them: in_flight bounds the exchanges.
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (7, 8, 9)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(calls.batches) == 2 and batcher.waiting == 3
    calls.release[1].set()  # the second ends first: results still reach their own callers
    assert await asyncio.gather(*burst) == [20, 30, 40, 50, 60]
    await _until(lambda: len(calls.batches) == 3)
    assert calls.batches[2] == [7, 8, 9]
    calls.release[0].set()
    calls.release[2].set()
    assert await first == 10
    assert await asyncio.gather(*later) == [70, 80, 90]
    assert calls.most_running == 2
    await batcher.close()


async def test_an_exception_fails_only_its_own_batch() -> None:
    calls = _Calls()
    batcher: Batcher[int, int] = Batcher(calls, max_batch=8, name="test", in_flight=2)
    lucky = asyncio.ensure_future(batcher.submit(1))
    await _until(lambda: len(calls.batches) == 1)
    unlucky = [asyncio.ensure_future(batcher.submit(n)) for n in (12, 13, 14)]
    await _until(lambda: len(calls.batches) == 2)
    calls.release[1].set()
    calls.release[0].set()
    results = await asyncio.gather(*unlucky, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await lucky == 10
    after = asyncio.ensure_future(batcher.submit(2))  # the batcher goes on
    await _until(lambda: len(calls.batches) == 3)
    calls.release[2].set()
    assert await after == 20
    await batcher.close()


async def test_closing_with_cancel_cancels_what_is_in_flight_and_waiting() -> None:
    calls = _Calls()
    batcher: Batcher[int, int] = Batcher(calls, max_batch=2, name="test", in_flight=2)
    futures = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 8)]
    await _until(lambda: len(calls.batches) == 2)
    await batcher.close(cancel=True)
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


async def test_a_submit_right_after_a_runner_ends_is_still_run() -> None:
    """A runner that took its last batch leaves the count before a new submit looks."""
    results: list[int] = []

    async def call(items: Sequence[int]) -> list[int]:
        return list(items)

    batcher: Batcher[int, int] = Batcher(call, max_batch=4, name="test", in_flight=1)
    for n in range(20):
        results.append(await asyncio.wait_for(batcher.submit(n), 5))
    assert results == list(range(20))
    await batcher.close()
