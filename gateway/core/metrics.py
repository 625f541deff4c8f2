"""Prometheus text exposition (format 0.0.4), written by hand.

A handful of counters and one histogram do not justify a dependency: this
module is pure (no I/O) and tested against the format's rules.  Metrics are
per agency and per process, as Prometheus expects; scrape every process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Counter:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {format_value(value)}"


@dataclass
class Gauge:
    """A gauge whose samples are set whole at scrape time (e.g. counted in the database)."""

    name: str
    help: str
    labelnames: tuple[str, ...] = ()

    def render(self, samples: dict[tuple[str, ...], float]) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(samples.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {format_value(value)}"


@dataclass
class Histogram:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    # per label set: (bucket counts (not cumulative), sum, count)
    series: dict[tuple[str, ...], tuple[list[int], float, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError("buckets must be strictly increasing")

    def observe(self, value: float, *labels: str) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        with self._lock:
            counts, total, count = self.series.get(labels, ([0] * len(self.buckets), 0.0, 0))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            self.series[labels] = (counts, total + value, count + 1)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total, count) in sorted(self.series.items()):
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                le = f'le="{format_value(bound)}"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {cumulative}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labelnames, labels, inf)} {count}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {format_value(total)}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {count}"


@dataclass
class LiveGauge:
    """A gauge the process sets as it goes (e.g. bodies held now), with the most seen."""

    name: str
    help: str
    value: float = 0.0
    max_seen: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, value: float) -> None:
        with self._lock:
            self.value = value
            self.max_seen = max(self.max_seen, value)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {format_value(self.value)}"
        yield f"# HELP {self.name}_max {escape_help('Most at once since the process started.')}"
        yield f"# TYPE {self.name}_max gauge"
        yield f"{self.name}_max {format_value(self.max_seen)}"


@dataclass
class HttpMetrics:
    """What every server (gateway, hub, 国保連) counts of its HTTP answers and bodies."""

    requests: Counter = field(
        default_factory=lambda: Counter(
            "chukan_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        )
    )
    latency: Histogram = field(
        default_factory=lambda: Histogram(
            "chukan_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ("route",),
        )
    )
    large_bodies: LiveGauge = field(
        default_factory=lambda: LiveGauge(
            "chukan_large_bodies_in_use",
            "Large request bodies held by requests of this process now (ops.max_large_bodies).",
        )
    )
    large_bodies_refused: Counter = field(
        default_factory=lambda: Counter(
            "chukan_large_bodies_refused_total",
            "Requests answered 503 busy: no large-body slot within ops.large_body_wait.",
            values={(): 0.0},
        )
    )

    def http_lines(self) -> list[str]:
        lines: list[str] = []
        for family in (self.requests, self.latency, self.large_bodies, self.large_bodies_refused):
            lines.extend(family.render())
        return lines


@dataclass
class GatewayMetrics(HttpMetrics):
    """What a gateway process exposes on ``/metrics``."""

    queries: Counter = field(
        default_factory=lambda: Counter(
            "chukan_queries_total",
            "Queries made by this agency (requester records written), by outcome.",
            ("outcome",),
        )
    )
    provisions: Counter = field(
        default_factory=lambda: Counter(
            "chukan_provisions_total",
            "Provisions answered by this agency (provider records written), by outcome.",
            ("outcome",),
        )
    )
    conclusion_conflicts: Counter = field(
        default_factory=lambda: Counter(
            "chukan_conclusion_conflicts_total",
            "Answers that contradicted a query's stored conclusion (kept, never applied).",
            ("kind",),
        )
    )
    task_failures: Counter = field(
        default_factory=lambda: Counter(
            "chukan_background_task_failures_total",
            "Background tasks that ended with an exception (their work is swept again).",
            ("task",),
        )
    )
    jobs: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_jobs", "Jobs in the jobs table, by kind and status.", ("kind", "status")
        )
    )

    def render(self, jobs: dict[tuple[str, ...], float]) -> str:
        lines = self.http_lines()
        for family in (
            self.queries,
            self.provisions,
            self.conclusion_conflicts,
            self.task_failures,
        ):
            lines.extend(family.render())
        lines.extend(self.jobs.render(jobs))
        return "\n".join(lines) + "\n"


_REGISTRY: dict[str, GatewayMetrics] = {}
_REGISTRY_LOCK = threading.Lock()


def metrics_for(agency: str) -> GatewayMetrics:
    """The metrics of one agency in this process (gateway apps of one agency share them)."""
    with _REGISTRY_LOCK:
        metrics = _REGISTRY.get(agency)
        if metrics is None:
            metrics = _REGISTRY[agency] = GatewayMetrics()
        return metrics
