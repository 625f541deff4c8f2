"""What every benchmark shares: figures with their baseline, the table, the ``--json`` file.

A figure is one measured value (a rate, a latency) beside the baseline it is
compared with, measured in the same run on the same machine; the ratio is
``value / baseline``.  Every bench prints a table and, with ``--json FILE``,
writes ``{"figures": [{"name", "value", "unit", "baseline_name", "baseline",
"ratio", "p50_ms", "p99_ms"}, ...]}`` (``null`` where a field does not apply).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chukan.gateway.core import db


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured value, with the baseline of the same run it is compared with."""

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "baseline": None if self.baseline is None else round(self.baseline, 3),
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def machine() -> str:
    """One line naming where the figures were measured."""
    cpus = os.cpu_count() or 0
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpus} cores {model}".strip()


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def print_figures(figures: Iterable[Figure]) -> None:
    """The table: figure, value, baseline, ratio, latencies."""
    rows = [
        (
            f.name,
            f"{_number(f.value)} {f.unit}",
            "" if f.baseline is None else f"{f.baseline_name} {_number(f.baseline)}",
            "" if f.ratio is None else f"{f.ratio:.3f}",
            "" if f.p50_ms is None else f"{f.p50_ms:.2f}",
            "" if f.p99_ms is None else f"{f.p99_ms:.2f}",
        )
        for f in figures
    ]
    header = ("figure", "value", "baseline (same run)", "ratio", "p50 ms", "p99 ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), flush=True)


@dataclass(frozen=True, slots=True)
class Server:
    """The PostgreSQL a bench runs on, and its scratch folder."""

    url: str
    work: Path
    #: the embedded server's data folder; None for the server of CHUKAN_DATABASE_URL
    data_dir: Path | None


@asynccontextmanager
async def database_server(prefix: str) -> AsyncIterator[Server]:
    """A scratch folder and a PostgreSQL: ``CHUKAN_DATABASE_URL``'s, or an embedded one."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    embedded = None
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if not url:
        embedded = db.EmbeddedPostgres(work / "pg")
        url = embedded.start()
    try:
        yield Server(url, work, None if embedded is None else work / "pg")
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON"
    )


def write_json(path: Path | None, figures: Sequence[Figure], **context: Any) -> None:
    """``{"figures": [...]}`` (plus ``machine`` and the run's parameters) to ``path``."""
    if path is None:
        return
    document = {
        "figures": [f.as_json() for f in figures],
        "machine": machine(),
        **context,
    }
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
