"""Three-party reconciliation, pure: how the hub's and an agency's records of a query compare."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from chukan.gateway.core.errors import ValidationError
from chukan.gateway.records.reconcile import (
    RecordDigest,
    compare,
    page_parameters,
    parse_period,
)

START = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 4, 2, tzinfo=dt.UTC)
AT = START + dt.timedelta(hours=3)


def record(role: str = "requester", outcome: str = "provided", **changes: object) -> RecordDigest:
    base = RecordDigest(
        query_id="q-1",
        role=role,
        requester="122041",
        provider="121002",
        procedure_code="JT00013200000001",
        item_code="TM00000000000001",
        permit_id="permit-1",
        outcome=outcome,
        requested_at=AT,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def one(hub: list[RecordDigest], agency: list[RecordDigest]) -> dict[str, Any]:
    report = compare("122041", hub, agency, start=START, end=END)
    return report.to_json()


def test_the_same_record_on_both_sides_agrees() -> None:
    report = one([record()], [record()])
    assert report["ok"] and report["agree"] == 1 and report["differences"] == []


@pytest.mark.parametrize(
    ("role", "hub", "agency"),
    [
        ("requester", "expired", "refused"),  # the hub's signed refusal
        ("requester", "expired", "failed"),  # expired unanswered at the requester
        ("provider", "expired", "held"),  # never decided
        ("provider", "held", "held"),
        ("provider", "refused", "refused"),
    ],
)
def test_outcomes_map_between_the_two_vocabularies(role: str, hub: str, agency: str) -> None:
    assert one([record(role, hub)], [record(role, agency)])["ok"]


def test_an_expired_query_that_never_reached_the_provider_agrees() -> None:
    assert one([record("provider", "expired")], [])["ok"]


@pytest.mark.parametrize(
    ("role", "hub", "agency"),
    [
        ("requester", "permitted", None),
        ("requester", "held", None),
        ("provider", "permitted", "provided"),  # the answer on its way to the hub
        ("provider", "held", "refused"),
    ],
)
def test_a_query_in_flight_is_listed_apart(role: str, hub: str, agency: str | None) -> None:
    report = one([record(role, hub)], [] if agency is None else [record(role, agency)])
    assert report["ok"] and report["in_flight"] == ["q-1"]


def test_a_different_outcome_is_named_with_both_values() -> None:
    report = one([record(outcome="refused")], [record(outcome="provided")])
    assert not report["ok"]
    assert report["differences"] == [
        {
            "agency": "122041",
            "query_id": "q-1",
            "role": "requester",
            "kind": "differs",
            "fields": {"outcome": {"hub": "refused", "agency": "provided"}},
        }
    ]


def test_every_differing_field_is_named() -> None:
    theirs = record(item_code="TM00000000000002", permit_id="permit-2", provider="121003")
    report = one([theirs], [record()])
    (finding,) = report["differences"]
    assert set(finding["fields"]) == {"item_code", "permit_id", "provider"}


def test_a_provider_that_answered_a_query_the_hub_expired_differs() -> None:
    report = one([record("provider", "expired")], [record("provider", "provided")])
    (finding,) = report["differences"]
    assert finding["fields"] == {"outcome": {"hub": "expired", "agency": "provided"}}


def test_queries_missing_on_either_side_are_named() -> None:
    report = one(
        [record(query_id="only-at-hub")],
        [record(query_id="only-here", role="provider")],
    )
    kinds = {(d["query_id"], d["kind"]) for d in report["differences"]}
    assert kinds == {("only-at-hub", "missing_at_agency"), ("only-here", "missing_at_hub")}


def test_a_query_refused_by_the_agencys_own_list_is_not_missing_at_the_hub() -> None:
    report = one([], [record(outcome="refused", permit_id=None)])
    assert report["ok"] and report["refused_locally"] == ["q-1"]


def test_the_last_record_of_a_query_is_the_one_compared() -> None:
    held, answered = record("provider", "held"), record("provider", "provided")
    assert one([record("provider")], [held, answered])["ok"]


def test_the_period_is_either_sides_requested_time() -> None:
    outside = record(requested_at=START - dt.timedelta(minutes=1))
    inside = record(requested_at=START + dt.timedelta(seconds=1))
    # Read with a margin: the hub placed it just inside, the agency just outside.
    assert one([inside], [outside])["compared"] == 1
    assert one([outside], [outside])["compared"] == 0


def test_record_json_round_trips_and_odd_records_are_refused() -> None:
    assert RecordDigest.from_json(record().to_json()) == record()
    with pytest.raises(ValidationError):
        RecordDigest.from_json({**record().to_json(), "role": "witness"})
    with pytest.raises(ValidationError):
        RecordDigest.from_json({**record().to_json(), "outcome": 3})


def test_periods_and_pages_are_checked() -> None:
    first, last = parse_period("2026-04-01", "2026-04-30", time_zone="Asia/Tokyo")
    assert first.isoformat() == "2026-04-01T00:00:00+09:00"
    assert last.isoformat() == "2026-05-01T00:00:00+09:00"
    with pytest.raises(ValidationError):
        parse_period("2026-04-02", "2026-04-01")
    with pytest.raises(ValidationError):
        page_parameters({"from": "2026-04-01T00:00:00", "to": "2026-04-02T00:00:00+00:00"})
    with pytest.raises(ValidationError):
        page_parameters({"from": START.isoformat(), "to": END.isoformat(), "limit": "0"})
    with pytest.raises(ValidationError):
        page_parameters({"from": START.isoformat(), "to": END.isoformat(), "after": "x|y"})
