"""What the console's pages compute without a server: item documents as fields (never raw
XML, hostile XML refused), statistics sums and the SVG bar geometry."""

from __future__ import annotations

import datetime as dt
import random

from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import care_certification
from chukan.gateway.console import views


def test_an_item_document_becomes_a_table_of_its_leaves() -> None:
    item = care_certification(random.Random(7), dt.date(2025, 4, 1))
    fields = views.item_fields(encode_item(item))
    by_path = {f.path: f.value for f in fields}
    assert by_path["InsuredNumber"] == item.insured_number
    assert any(p.startswith("CertificationRecord / ") for p in by_path)
    assert all("<" not in f.value for f in fields)


def test_an_empty_value_shows_its_reason() -> None:
    document = (
        b'<k:Root xmlns:k="urn:chukan:kaigo:item:1" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        b'<k:LossDate xsi:nil="true" ReasonOfNull="NotApplicable"/><k:Name>x</k:Name></k:Root>'
    )
    assert [(f.path, f.value) for f in views.item_fields(document)] == [
        ("LossDate", "(値なし: NotApplicable)"),
        ("Name", "x"),
    ]


def test_hostile_or_broken_documents_show_no_content() -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<r><a>&x;</a></r>"
    )
    for document in (xxe, b"<r><a>unclosed</r>", b""):
        assert views.item_fields(document) == [views.Field("(文書)", "解読できない文書です")]


def test_statistics_are_summed_per_dimension_and_month() -> None:
    rows = [
        {"day": "2025-04-30", "procedure_code": "P1", "item_code": "I1", "outcome": "provided",
         "count": 3},
        {"day": "2025-05-01", "procedure_code": "P1", "item_code": "I2", "outcome": "refused",
         "count": 1},
        {"day": "2025-05-02", "procedure_code": "P2", "item_code": "I1", "outcome": "provided",
         "count": 2},
    ]  # fmt: skip
    sums = views.totals(rows)
    assert sums["procedure_code"] == [("P1", 4), ("P2", 2)]
    assert sums["item_code"] == [("I1", 5), ("I2", 1)]
    assert sums["outcome"] == [("provided", 5), ("refused", 1)]
    assert sums["month"] == [("2025-04", 3), ("2025-05", 3)]


def test_bars_scale_to_the_largest_count() -> None:
    chart = views.bar_chart([("a", 10), ("b", 5), ("c", 0)])
    widths = [bar.width for bar in chart.bars]
    assert widths[0] == chart.scale_width and widths[1] == chart.scale_width // 2
    assert widths[2] == 1  # a zero still shows where its bar would be
    assert [bar.y for bar in chart.bars] == sorted({bar.y for bar in chart.bars})
    assert views.bar_chart([]).bars == []
    assert views.chart_label("outcome", "held") == "保留(自動応答不可)"
