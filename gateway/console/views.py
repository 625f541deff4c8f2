"""What the console's pages show, computed without a request: an item document as a
table of fields, statistics summed per dimension, and the geometry of SVG bar charts.

Pure functions, so that the unit tests check them without a server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from lxml import etree

from chukan.codecs.errors import CodecError
from chukan.codecs.items import ITEM_CODES, ITEM_LIMITS, XSI_NAMESPACE
from chukan.codecs.xmlsafe import parse_xml

_NIL: Final = f"{{{XSI_NAMESPACE}}}nil"

#: Japanese labels of the values the pages show.
OUTCOME_LABELS: Final[Mapping[str, str]] = {
    "provided": "提供",
    "refused": "不提供",
    "held": "保留(自動応答不可)",
    "failed": "失敗",
}
REVIEW_STATUS_LABELS: Final[Mapping[str, str]] = {
    "pending": "審査待ち",
    "approved": "承認済み",
    "refused": "拒否済み",
}
ROLE_LABELS: Final[Mapping[str, str]] = {
    "operator": "運用担当",
    "approver": "承認者",
    "auditor": "監査担当",
    "admin": "管理者",
}
RECORD_ROLE_LABELS: Final[Mapping[str, str]] = {"requester": "照会", "provider": "提供"}
OPERATION_OUTCOME_LABELS: Final[Mapping[str, str]] = {
    "ok": "成功",
    "refused": "拒否",
    "failed": "失敗",
}
JOB_STATUS_LABELS: Final[Mapping[str, str]] = {
    "pending": "待機中",
    "running": "実行中",
    "succeeded": "完了",
    "failed": "失敗",
}


def item_name(code: str) -> str:
    """特定個人情報名 of an item code, or the code itself when the catalog lacks it."""
    spec = ITEM_CODES.get(code)
    return spec.name if spec is not None else code


@dataclass(frozen=True, slots=True)
class Field:
    """One value of an item document: where it is (element names) and what it says."""

    path: str
    value: str


def item_fields(document: bytes | str) -> list[Field]:
    """The leaves of an item document, in document order, for a readable table.

    Parsed with the hardened parser (no DTD, no entities, size and depth limits);
    an empty value (``xsi:nil``) shows its ``ReasonOfNull``.  A document that does
    not parse gives one row saying so, never the raw XML.
    """
    data = document.encode("utf-8") if isinstance(document, str) else document
    try:
        root = parse_xml(data, ITEM_LIMITS)
    except (CodecError, etree.XMLSyntaxError):
        return [Field("(文書)", "解読できない文書です")]
    fields: list[Field] = []

    def walk(element: etree._Element, trail: tuple[str, ...]) -> None:
        children = [c for c in element if isinstance(c.tag, str)]
        name = etree.QName(element).localname
        here = (*trail, name)
        if element.get(_NIL) == "true":
            reason = element.get("ReasonOfNull") or ""
            fields.append(Field(" / ".join(here[1:]) or name, f"(値なし: {reason})"))
            return
        if not children:
            fields.append(Field(" / ".join(here[1:]) or name, (element.text or "").strip()))
            return
        for child in children:
            walk(child, here)

    walk(root, ())
    return fields


# -- statistics -----------------------------------------------------------------------------

#: The dimensions of the statistics page: (key, Japanese heading).
DIMENSIONS: Final = (
    ("procedure_code", "事務手続別"),
    ("item_code", "特定個人情報名別"),
    ("outcome", "結果別"),
    ("month", "月別"),
)


def totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    """Counts summed per procedure, item, outcome and month (``YYYY-MM`` of the day)."""
    sums: dict[str, Counter[str]] = {key: Counter() for key, _ in DIMENSIONS}
    for row in rows:
        count = int(row["count"])
        sums["procedure_code"][str(row["procedure_code"])] += count
        sums["item_code"][str(row["item_code"])] += count
        sums["outcome"][str(row["outcome"])] += count
        sums["month"][str(row["day"])[:7]] += count
    ordered: dict[str, list[tuple[str, int]]] = {}
    for key, counter in sums.items():
        pairs = sorted(counter.items()) if key == "month" else counter.most_common()
        ordered[key] = pairs
    return ordered


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    count: int
    y: int
    width: int


@dataclass(frozen=True, slots=True)
class Chart:
    """A horizontal bar chart: labels on the left, bars scaled to the largest count."""

    bars: list[Bar]
    width: int
    height: int
    label_width: int
    bar_height: int
    scale_width: int


CHART_WIDTH: Final = 640
LABEL_WIDTH: Final = 220
BAR_HEIGHT: Final = 22
BAR_GAP: Final = 8
COUNT_ROOM: Final = 70


def bar_chart(pairs: list[tuple[str, int]]) -> Chart:
    """The geometry of a bar chart of ``(label, count)``; the template draws it as SVG."""
    scale = CHART_WIDTH - LABEL_WIDTH - COUNT_ROOM
    largest = max((count for _, count in pairs), default=0)
    bars = [
        Bar(
            label=label,
            count=count,
            y=i * (BAR_HEIGHT + BAR_GAP),
            width=max(1, round(scale * count / largest)) if largest else 0,
        )
        for i, (label, count) in enumerate(pairs)
    ]
    height = max(1, len(bars)) * (BAR_HEIGHT + BAR_GAP)
    return Chart(bars, CHART_WIDTH, height, LABEL_WIDTH, BAR_HEIGHT, scale)


def chart_label(dimension: str, value: str) -> str:
    """A bar's label: items and outcomes by their Japanese names."""
    if dimension == "item_code":
        name = item_name(value)
        return f"{value} {name}" if name != value else value
    if dimension == "outcome":
        return OUTCOME_LABELS.get(value, value)
    return value


def group_by(
    rows: Iterable[Mapping[str, Any]], key: str
) -> list[tuple[Any, list[Mapping[str, Any]]]]:
    """``rows`` in groups of equal ``key`` (first-seen order), e.g. sessions per office."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return list(groups.items())
