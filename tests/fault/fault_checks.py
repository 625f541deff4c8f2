"""Traffic and verdicts of the fault suite.

:class:`Load` submits queries to the requester at a steady rate, each logical
submission with an ``Idempotency-Key`` of its own, retried with the same key and
body until the requester answers 202 (it may be dead, paused or without its
database meanwhile).  :func:`settle` waits until every accepted query is in a
final state and then compares, query by query, what the requester, the hub and
the provider recorded; :class:`Verdict` lists every disagreement with the three
views side by side, so a failure says which query and which party.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
from fault_cluster import PROVIDER, REQUESTER, Cluster, until

from chukan.codecs import catalog
from chukan.codecs.sample_items import local_tax_item
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

FINAL_STATES: Final = frozenset({"answered", "refused", "failed"})
#: Requester state → the outcome every party must have recorded.
OUTCOME_OF_STATE: Final = {"answered": "provided", "refused": "refused"}
RETRY_FIRST: Final = 0.2
RETRY_CAP: Final = 1.0
REPLAYED: Final = "message_replayed"
SHOWN: Final = 25  # disagreements printed in full; the rest are counted by pattern
API_SAMPLE: Final = 10  # queries whose records are also read through each gateway's API


# -- people ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """One synthetic person, under a 宛名番号 of each city, with one 個人番号."""

    requester_atena: str
    provider_atena: str


async def enrol_people(cluster: Cluster, count: int, rng: random.Random) -> list[Person]:
    """Register ``count`` people at both gateways and store a replica item at the provider."""
    people: list[Person] = []
    numbers: set[str] = set()
    while len(people) < count:
        here = synthetic_person(rng, "5")
        if here.individual_number in numbers:
            continue
        numbers.add(here.individual_number)
        there = SyntheticPerson(
            synthetic_person(rng, "6").atena_id,
            here.individual_number,
            here.kana_name,
            here.birth_year,
        )
        for code, person in ((REQUESTER, here), (PROVIDER, there)):
            status, body = await cluster.call(
                code,
                "POST",
                "/internal/v1/persons",
                json={"atena_id": person.atena_id, "individual_number": person.individual_number},
            )
            assert status == 201, (code, status, body)
        item = local_tax_item(rng, dt.date.today())
        status, body = await cluster.call(
            PROVIDER,
            "PUT",
            f"/internal/v1/persons/{there.atena_id}/items/{catalog.LOCAL_TAX_INCOME.code}",
            data=item,
            headers={"Content-Type": "application/xml"},
        )
        assert status == 201, (status, body)
        people.append(Person(here.atena_id, there.atena_id))
    return people


# -- load -----------------------------------------------------------------------------------


@dataclass
class Submission:
    """One logical query submission: one key, one body, however many attempts."""

    key: str
    body: dict[str, Any]
    created: float
    give_up_at: float
    query_id: str | None = None
    attempts: int = 0
    accepted_after: float | None = None
    #: Transient failures seen (connection refused, 503 database_unavailable, ...).
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    #: A final answer other than 202, or the reason it was abandoned.
    refusal: str | None = None


class Load:
    """Queries at ``rate`` per second for ``seconds`` (or until :meth:`stop`), each retried
    until accepted."""

    def __init__(
        self,
        cluster: Cluster,
        people: list[Person],
        *,
        rate: float,
        seconds: float,
        retry_for: float = 45.0,
    ) -> None:
        self.cluster = cluster
        self.people = people
        self.rate = rate
        self.seconds = seconds
        self.retry_for = retry_for
        self.submissions: list[Submission] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> Load:
        self._pacer = asyncio.create_task(self._pace(), name="fault-load")
        return self

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.submissions if s.query_id is not None)

    async def _pace(self) -> None:
        started = time.monotonic()
        count = int(self.rate * self.seconds)
        for i in range(count):
            if self._stopping:
                return
            due = started + i / self.rate
            pause = due - time.monotonic()
            if pause > 0:  # pacing the load, not waiting for anything
                await asyncio.sleep(pause)
            person = self.people[len(self.submissions) % len(self.people)]
            now = time.monotonic()
            submission = Submission(
                key=str(uuid.uuid4()),
                body={
                    "atena_id": person.requester_atena,
                    "procedure_code": catalog.LTC_PREMIUM_PROCEDURE,
                    "item_code": catalog.LOCAL_TAX_INCOME.code,
                    "provider": PROVIDER,
                },
                created=now,
                give_up_at=now + self.retry_for,
            )
            self.submissions.append(submission)
            task = asyncio.create_task(self._submit(submission))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _submit(self, submission: Submission) -> None:
        backoff = RETRY_FIRST
        while True:
            submission.attempts += 1
            try:
                status, body = await self.cluster.call(
                    REQUESTER,
                    "POST",
                    "/internal/v1/queries",
                    json=submission.body,
                    headers={"Idempotency-Key": submission.key},
                    seconds=5.0,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                submission.errors[type(exc).__name__] += 1
            else:
                if status == 202 and isinstance(body, dict) and "query_id" in body:
                    submission.query_id = body["query_id"]
                    submission.accepted_after = time.monotonic() - submission.created
                    return
                code = _error_code(body)
                if status < 500 and status != 429:
                    submission.refusal = f"HTTP {status} {code}"
                    return
                submission.errors[f"HTTP {status} {code}"] += 1
            if time.monotonic() > submission.give_up_at:
                submission.refusal = f"not accepted within {self.retry_for:.0f} s"
                return
            await asyncio.sleep(backoff)  # a client's retry backoff
            backoff = min(backoff * 2, RETRY_CAP)

    def stop(self) -> None:
        """No new submissions from now on (those under way keep retrying)."""
        self._stopping = True

    async def cancel(self) -> None:
        """Stop pacing and abandon every submission still retrying (a scenario failed)."""
        pending = [t for t in (self._pacer, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def finish(self) -> list[Submission]:
        """Wait for the pacing and for every submission to be accepted (or abandoned)."""
        if self._pacer is not None:
            await self._pacer
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        return self.submissions


def _error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code"))
    return repr(body)[:80]


# -- verdict --------------------------------------------------------------------------------


@dataclass
class QueryView:
    """What each party knows of one query."""

    query_id: str
    state: str | None = None  # the requester's, from its database
    api_state: str | None = None  # the requester's, from GET /internal/v1/queries/{id}
    reason: str | None = None
    requester: list[tuple[str, str | None]] = field(default_factory=list)  # (outcome, reason)
    hub: list[tuple[str, str | None]] = field(default_factory=list)
    provider: list[tuple[str, str | None]] = field(default_factory=list)
    #: Permit ids each party recorded: one permit per query, the same everywhere.
    permits: set[str | None] = field(default_factory=set)

    def line(self) -> str:
        def show(records: list[tuple[str, str | None]]) -> str:
            return "[" + ", ".join(o + (f"/{r}" if r else "") for o, r in records) + "]"

        return (
            f"{self.query_id}: requester state={self.state} api={self.api_state}"
            f"{f' reason={self.reason}' if self.reason else ''} record={show(self.requester)}"
            f" | hub={show(self.hub)} | provider={show(self.provider)}"
        )

    def pattern(self) -> str:
        return (
            f"state={self.state} requester={[o for o, _ in self.requester]} "
            f"hub={[o for o, _ in self.hub]} provider={[o for o, _ in self.provider]}"
        )

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.state not in FINAL_STATES:
            found.append("not final at the requester")
        if self.api_state != self.state:
            found.append("API state differs from the database")
        if self.state != "answered":
            found.append("not answered")
        for party, records in (("requester", self.requester), ("hub", self.hub)):
            if len(records) != 1:
                found.append(f"{len(records)} {party} records")
        if self.state == "answered" and len(self.provider) != 1:
            found.append(f"{len(self.provider)} provider records")
        if len(self.provider) > 1:
            found.append("duplicate provider records")
        expected = OUTCOME_OF_STATE.get(self.state or "")
        if expected is not None:
            for party, records in (
                ("requester", self.requester),
                ("hub", self.hub),
                ("provider", self.provider),
            ):
                if any(outcome != expected for outcome, _ in records):
                    found.append(f"{party} outcome differs from state {self.state}")
        if len(self.permits) > 1:
            found.append(f"{len(self.permits)} different permit ids")
        reasons = [self.reason, *(r for _, r in self.requester + self.hub + self.provider)]
        if REPLAYED in reasons:
            found.append(REPLAYED)
        return found


@dataclass
class Verdict:
    scenario: str
    submissions: list[Submission]
    views: dict[str, QueryView]
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        submitted = len(self.submissions)
        accepted = sum(1 for s in self.submissions if s.query_id)
        retried = sum(1 for s in self.submissions if s.attempts > 1)
        states = collections.Counter(v.state for v in self.views.values())
        errors: collections.Counter[str] = collections.Counter()
        for s in self.submissions:
            errors.update(s.errors)
        lines = [
            f"scenario {self.scenario}: {submitted} submissions, {accepted} accepted, "
            f"{retried} retried; requester states {dict(states)}",
            f"  transient submission errors: {dict(errors.most_common(8))}",
            "  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
        ]
        bad = {q: v for q, v in self.views.items() if v.problems()}
        if bad:
            patterns = collections.Counter(
                f"{'; '.join(v.problems())} <- {v.pattern()}" for v in bad.values()
            )
            lines.append(f"  {len(bad)} queries disagree; by pattern:")
            lines.extend(f"    {n} x {p}" for p, n in patterns.most_common(12))
            lines.append(f"  first {min(SHOWN, len(bad))}:")
            lines.extend(
                f"    {v.line()}  <- {'; '.join(v.problems())}" for v in list(bad.values())[:SHOWN]
            )
        if self.problems:
            lines.append("  other problems:")
            lines.extend(f"    {p}" for p in self.problems)
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not self.problems and not any(v.problems() for v in self.views.values())


@dataclass
class LogMarks:
    """Where each server's log ended when a scenario began."""

    offsets: dict[Path, int]

    @classmethod
    def now(cls, cluster: Cluster) -> LogMarks:
        return cls({s.log_file: _size(s.log_file) for s in cluster.servers})

    def since(self, path: Path) -> str:
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(self.offsets.get(path, 0))
            return handle.read().decode("utf-8", errors="replace")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def _states(cluster: Cluster, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    conn = await asyncpg.connect(cluster.gateway_admin_url)
    try:
        rows = await conn.fetch(
            "SELECT query_id, status, reason_code FROM queries "
            "WHERE tenant = $1 AND query_id = ANY($2::text[])",
            REQUESTER,
            ids,
        )
    finally:
        await conn.close()
    return {r["query_id"]: (r["status"], r["reason_code"]) for r in rows}


async def settle(
    cluster: Cluster,
    scenario: str,
    submissions: list[Submission],
    marks: LogMarks,
    *,
    limit: float = 60.0,
) -> Verdict:
    """Wait for a final state of every accepted query, then compare the three parties."""
    problems: list[str] = []
    for s in submissions:
        if s.query_id is None:
            problems.append(f"submission {s.key} never accepted: {s.refusal} {dict(s.errors)}")
        elif s.refusal is not None:
            problems.append(f"submission {s.key}: {s.refusal}")
    ids = [s.query_id for s in submissions if s.query_id is not None]
    if len(set(ids)) != len(ids):
        problems.append("one query id was answered for two different idempotency keys")

    async def all_final() -> bool:
        states = await _states(cluster, ids)
        return all(states.get(q, ("?", None))[0] in FINAL_STATES for q in ids)

    try:
        await until(all_final, limit, "final state of every query", 0.25)
    except TimeoutError as exc:
        problems.append(str(exc))

    views = {q: QueryView(q) for q in ids}
    for query_id, (status, reason) in (await _states(cluster, ids)).items():
        views[query_id].state, views[query_id].reason = status, reason
    await _api_states(cluster, views)
    conn = await asyncpg.connect(cluster.gateway_admin_url)
    try:
        rows = await conn.fetch(
            "SELECT tenant, role, query_id, outcome, reason_code, permit_id FROM provision_records "
            "WHERE query_id = ANY($1::text[]) ORDER BY id",
            ids,
        )
        keyed = await conn.fetch(
            "SELECT idempotency_key, array_agg(query_id) AS ids FROM queries "
            "WHERE tenant = $1 AND idempotency_key = ANY($2::text[]) GROUP BY 1",
            REQUESTER,
            [s.key for s in submissions],
        )
        doubled = await conn.fetch(
            "SELECT tenant, role, query_id, count(*) AS n FROM provision_records "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1 LIMIT 20"
        )
    finally:
        await conn.close()
    for r in rows:
        view = views[r["query_id"]]
        party = "requester" if r["role"] == "requester" else "provider"
        expected_tenant = REQUESTER if party == "requester" else PROVIDER
        if r["tenant"] != expected_tenant:
            problems.append(f"{r['query_id']}: {party} record under tenant {r['tenant']}")
        getattr(view, party).append((r["outcome"], r["reason_code"]))
        view.permits.add(r["permit_id"])
    try:
        hub_records = await cluster.hub_records()
    except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
        hub_records = []
        problems.append(f"the hub's records could not be read: {exc!r}")
    for record in hub_records:
        seen = views.get(record["query_id"])
        if seen is not None:
            seen.hub.append((record["outcome"], record.get("reason_code")))
            seen.permits.add(record.get("permit_id"))

    by_key = {r["idempotency_key"]: list(r["ids"]) for r in keyed}
    for s in submissions:
        found = by_key.get(s.key, [])
        if s.query_id is not None and found != [s.query_id]:
            problems.append(
                f"idempotency key {s.key}: answered {s.query_id}, requester holds {found}"
            )
    problems.extend(
        f"{r['n']} {r['role']} records of {r['query_id']} at {r['tenant']}" for r in doubled
    )
    problems.extend(await _records_api_agrees(cluster, views))
    for server in cluster.servers:
        text = marks.since(server.log_file)
        if REPLAYED in text:
            hits = [line for line in text.splitlines() if REPLAYED in line]
            problems.append(f"{len(hits)} {REPLAYED} in {server.name}'s log, e.g. {hits[0]}")
    return Verdict(scenario, submissions, views, problems)


async def _records_api_agrees(
    cluster: Cluster, views: dict[str, QueryView], sample: int = API_SAMPLE
) -> list[str]:
    """For a sample of queries, the records API of each gateway shows what its database holds."""
    problems: list[str] = []
    chosen = random.Random(len(views)).sample(sorted(views), min(sample, len(views)))
    for query_id in chosen:
        view = views[query_id]
        for code, held in ((REQUESTER, view.requester), (PROVIDER, view.provider)):
            shown: Any
            try:
                status, body = await cluster.call(
                    code, "GET", "/internal/v1/records", params={"query_id": query_id}
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                shown = f"error {type(exc).__name__}"
            else:
                shown = (
                    [(r["outcome"], r.get("reason_code")) for r in body["records"]]
                    if status == 200
                    else f"HTTP {status}"
                )
            if shown != held:
                problems.append(f"{query_id}: records API of {code} shows {shown}, database {held}")
    return problems


async def _api_states(cluster: Cluster, views: dict[str, QueryView]) -> None:
    """Each query's state as the core system reads it (bounded concurrency)."""
    gate = asyncio.Semaphore(8)

    async def one(view: QueryView) -> None:
        async with gate:
            try:
                status, body = await cluster.call(
                    REQUESTER, "GET", f"/internal/v1/queries/{view.query_id}"
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                view.api_state = f"error {type(exc).__name__}"
                return
            view.api_state = body.get("state") if status == 200 else f"HTTP {status}"

    await asyncio.gather(*(one(v) for v in views.values()))


async def verify_both(cluster: Cluster) -> list[str]:
    """``chukan records verify`` for both agencies; the problems it reports."""
    results = await asyncio.gather(*(cluster.verify_records(c) for c in (REQUESTER, PROVIDER)))
    return [
        f"records verify {code}: exit {status}\n{output[-2000:]}"
        for code, (status, output) in zip((REQUESTER, PROVIDER), results, strict=True)
        if status != 0
    ]
