"""Prometheus text exposition written by hand (format 0.0.4)."""

from __future__ import annotations

import math

import pytest

from chukan.gateway.core.metrics import (
    Counter,
    GatewayMetrics,
    Histogram,
    escape_label,
    format_value,
    metrics_for,
)


def test_counter_lines_are_sorted_and_labelled() -> None:
    c = Counter("x_total", "Things.\nCounted \\ here.", ("a", "b"))
    c.inc("2", "y")
    c.inc("1", "x", amount=2)
    c.inc("1", "x")
    assert list(c.render()) == [
        "# HELP x_total Things.\\nCounted \\\\ here.",
        "# TYPE x_total counter",
        'x_total{a="1",b="x"} 3',
        'x_total{a="2",b="y"} 1',
    ]
    with pytest.raises(ValueError, match="only go up"):
        c.inc("1", "x", amount=-1)
    with pytest.raises(ValueError, match="labels"):
        c.inc("1")


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_values() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(math.nan) == "NaN"


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    h = Histogram("lat_seconds", "Latency.", ("route",), buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        h.observe(value, "/r")
    assert list(h.render()) == [
        "# HELP lat_seconds Latency.",
        "# TYPE lat_seconds histogram",
        'lat_seconds_bucket{route="/r",le="0.1"} 1',
        'lat_seconds_bucket{route="/r",le="1"} 3',
        'lat_seconds_bucket{route="/r",le="+Inf"} 4',
        'lat_seconds_sum{route="/r"} 4.05',
        'lat_seconds_count{route="/r"} 4',
    ]
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "h", buckets=(1.0, 0.5))


def test_gateway_metrics_render_every_family_once() -> None:
    m = GatewayMetrics()
    m.requests.inc("/health", "GET", "200")
    m.latency.observe(0.002, "/health")
    m.queries.inc("provided")
    text = m.render({("results.purge", "done"): 2.0})
    assert text.endswith("\n")
    for family, kind in (
        ("chukan_http_requests_total", "counter"),
        ("chukan_http_request_duration_seconds", "histogram"),
        ("chukan_queries_total", "counter"),
        ("chukan_provisions_total", "counter"),
        ("chukan_jobs", "gauge"),
    ):
        assert text.count(f"# TYPE {family} {kind}\n") == 1
    assert 'chukan_jobs{kind="results.purge",status="done"} 2\n' in text
    assert metrics_for("999999") is metrics_for("999999")
