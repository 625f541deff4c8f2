"""A load generator that runs in its own process(es), never in the event loop it measures.

The parent prepares every request (bytes, headers) beforehand; each generator
process opens its own aiohttp session (its own TLS context from PEM files),
waits for a common start time so that all begin together, and sends its share
either *closed loop* (``concurrency`` requests in flight, as fast as answered)
or *open loop* (at a fixed ``rate``, each latency measured from the time the
request was due, so a stalled server is not hidden by a waiting client).

Flows: ``request`` (one call, any 2xx) and ``query`` (submit a 情報照会, then
long-poll its result until ``answered``; latency is submit to decrypted result).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.harness import percentile
from chukan.keys.tls import client_context

QUERY_WAIT_SECONDS = 30


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a client identity (a context cannot cross a process boundary)."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """The same client context the product's clients use (chukan.keys.tls)."""
        cert = None if self.cert is None else Path(self.cert).read_bytes()
        key = None if self.key is None else Path(self.key).read_bytes()
        return client_context(Path(self.ca).read_bytes(), cert, key)


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One generator process's share of the load."""

    calls: tuple[Call, ...]
    concurrency: int
    tls: TlsFiles | None = None
    flow: str = "request"
    #: open loop: requests per second for this process; None: closed loop
    rate: float | None = None
    start_at: float = 0.0
    cpu: int | None = None


@dataclass(slots=True)
class LoadResult:
    count: int = 0
    errors: int = 0
    started: float = 0.0
    ended: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None


@dataclass(frozen=True, slots=True)
class Measured:
    """What several generator processes measured together."""

    rate: float
    count: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    first_error: str | None


async def _request(session: aiohttp.ClientSession, call: Call, tls: ssl.SSLContext | bool) -> None:
    async with session.request(
        call.method, call.url, headers=dict(call.headers), data=call.body, ssl=tls
    ) as response:
        body = await response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{call.url}: HTTP {response.status} {body[:200]!r}")


async def _query(session: aiohttp.ClientSession, call: Call, tls: ssl.SSLContext | bool) -> None:
    """Submit with ``Prefer: wait`` (the result in the same answer, 200), then long-poll if
    the answer was the plain 202 (a gateway without the preference, or a wait that ended)."""
    headers = dict(call.headers)
    post_headers = {**headers, "Prefer": f"wait={QUERY_WAIT_SECONDS}"}
    async with session.post(call.url, headers=post_headers, data=call.body, ssl=tls) as response:
        submitted = await response.read()
        if response.status == 200 and json.loads(submitted).get("status") == "answered":
            return
        if response.status != 202:
            raise RuntimeError(f"submit: HTTP {response.status} {submitted[:200]!r}")
    query_id = json.loads(submitted)["query_id"]
    headers.pop("Content-Type", None)
    headers.pop("Idempotency-Key", None)
    while True:
        async with session.get(
            f"{call.url}/{query_id}?wait={QUERY_WAIT_SECONDS}", headers=headers, ssl=tls
        ) as response:
            result = json.loads(await response.read())
        if result.get("status") == "answered":
            return
        if result.get("status") not in ("queued", "sent"):
            raise RuntimeError(f"query {query_id}: {result.get('status')} {result}")


FLOWS: dict[
    str, Callable[[aiohttp.ClientSession, Call, ssl.SSLContext | bool], Awaitable[None]]
] = {"request": _request, "query": _query}


async def _run(spec: LoadSpec) -> LoadResult:
    flow = FLOWS[spec.flow]
    tls: ssl.SSLContext | bool = spec.tls.context() if spec.tls is not None else True
    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=0, ssl=tls)
    timeout = aiohttp.ClientTimeout(total=QUERY_WAIT_SECONDS * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(call: Call, due: float) -> None:
            try:
                await flow(session, call, tls)
            except Exception as exc:  # counted and reported, the run goes on
                result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"
                return
            result.latencies_ms.append((time.perf_counter() - due) * 1000)
            result.count += 1

        delay = spec.start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result.started = time.perf_counter()
        if spec.rate is None:
            position = 0

            async def worker() -> None:
                nonlocal position
                while position < len(spec.calls):
                    call = spec.calls[position]
                    position += 1
                    await one(call, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
        else:
            interval = 1.0 / spec.rate
            tasks = []
            for index, call in enumerate(spec.calls):
                due = result.started + index * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(call, due)))
            await asyncio.gather(*tasks)
        result.ended = time.perf_counter()
    return result


def run_in_process(spec: LoadSpec) -> LoadResult:
    """Entry point of a generator process."""
    if spec.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec.cpu})
    return asyncio.run(_run(spec))


def _ready() -> int:
    return os.getpid()


class Generators:
    """A pool of started generator processes (spawned: never forked from a loop with threads)."""

    def __init__(self, processes: int, cpu: int | None = None) -> None:
        self.processes = processes
        self.cpu = cpu
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn")
        )

    async def __aenter__(self) -> Generators:
        # Started and imported before any measurement.
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self.pool, _ready) for _ in range(self.processes))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def run(
        self,
        calls: Sequence[Call],
        *,
        concurrency: int,
        tls: TlsFiles | None,
        flow: str = "request",
        rate: float | None = None,
    ) -> Measured:
        """Split ``calls`` over the processes, start them together, merge what they measured.

        ``concurrency`` and ``rate`` are totals, shared evenly by the processes.
        """
        start_at = time.time() + 0.5
        shares = [tuple(calls[i :: self.processes]) for i in range(self.processes)]
        specs = [
            LoadSpec(
                calls=share,
                concurrency=max(1, concurrency // self.processes),
                tls=tls,
                flow=flow,
                rate=None if rate is None else rate / self.processes,
                start_at=start_at,
                cpu=self.cpu,
            )
            for share in shares
            if share
        ]
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self.pool, run_in_process, spec) for spec in specs)
        )
        count = sum(r.count for r in results)
        errors = sum(r.errors for r in results)
        seconds = max(r.ended for r in results) - min(r.started for r in results)
        latencies = [value for r in results for value in r.latencies_ms]
        first_error = next((r.first_error for r in results if r.first_error), None)
        return Measured(
            rate=count / seconds if seconds > 0 else 0.0,
            count=count,
            errors=errors,
            p50_ms=percentile(latencies, 0.50),
            p99_ms=percentile(latencies, 0.99),
            first_error=first_error,
        )
