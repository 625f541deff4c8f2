"""Synthetic replica items for the demo, tests and benchmarks (never real data)."""

from __future__ import annotations

import datetime as dt
import random

from lxml import etree

LOCAL_TAX_NS = "urn:chukan:item:local-tax:1"
CERTIFICATION_NS = "urn:chukan:item:certification:draft"


def _serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def local_tax_item(rng: random.Random, today: dt.date) -> bytes:
    """地方税関係情報（所得・課税）as another municipality would provide it (項 131)."""
    root = etree.Element(f"{{{LOCAL_TAX_NS}}}LocalTaxIncome", nsmap={None: LOCAL_TAX_NS})  # type: ignore[dict-item]
    root.set("Version", "1")
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TaxYear").text = str(today.year - 1)
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TotalIncome").text = str(
        rng.randrange(800_000, 6_000_000, 1000)
    )
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TaxableStatus").text = rng.choice(["1", "2"])
    return _serialise(root)


def certification_item(rng: random.Random, today: dt.date) -> bytes:
    root = etree.Element(f"{{{CERTIFICATION_NS}}}Certification", nsmap={None: CERTIFICATION_NS})  # type: ignore[dict-item]
    root.set("Version", "1")
    etree.SubElement(root, f"{{{CERTIFICATION_NS}}}CareLevel").text = rng.choice(
        ["12", "13", "21", "22", "23", "24", "25"]
    )
    etree.SubElement(root, f"{{{CERTIFICATION_NS}}}ValidFrom").text = today.isoformat()
    return _serialise(root)
