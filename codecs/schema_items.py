"""Every item a gateway accepts, and the check each one passes before it is stored.

Two kinds of 特定個人情報名 are accepted, and only these:

* the 介護保険 items of :data:`chukan.codecs.items.ITEM_CODES`, decoded to typed values
  and stored in their canonical encoding (``encode_item``);
* items of other businesses that this project does not model as typed values
  (:data:`SCHEMA_ITEMS`, such as the 地方税 item the demo exchanges): each has an XSD
  in ``codecs/xsd/`` and is stored as the hardened parser read it — comments dropped,
  serialised again as UTF-8 with a declaration — once it validates.

Any other code is refused (:class:`ItemCodeUnsupportedError`): no XML is stored or
delivered that no schema has checked. Hostile markup (DTDs, processing instructions,
XInclude) is refused by :func:`chukan.codecs.xmlsafe.parse_xml` before any of this.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from lxml import etree

from .errors import ItemCodeUnsupportedError, XmlStructureError
from .item_schema import lxml_schema, schema_error, xmlschema_schema
from .items import ITEM_CODES, ITEM_LIMITS, decode_item, encode_item
from .xmlsafe import XmlLimits, parse_xml

LOCAL_TAX_NAMESPACE: Final = "urn:chukan:item:local-tax:1"


@dataclass(frozen=True, slots=True)
class SchemaItemSpec:
    """An item checked against its XSD only (no typed model)."""

    code: str
    #: 特定個人情報名 (Japanese name of the item).
    name: str
    #: Data set number.
    data_set: str
    #: File name in ``codecs/xsd/``.
    xsd_file: str
    namespace: str
    #: Local name of the root element.
    root_element: str


_SPECS: Final = (
    SchemaItemSpec(
        "TM00000000020001",
        "地方税関係情報（所得・課税）",
        "2001",
        "item_2001.xsd",
        LOCAL_TAX_NAMESPACE,
        "LocalTaxIncome",
    ),
)

#: 特定個人情報名 code → spec of the items accepted on their XSD alone.
SCHEMA_ITEMS: Final[Mapping[str, SchemaItemSpec]] = types.MappingProxyType(
    {spec.code: spec for spec in _SPECS}
)
assert not set(SCHEMA_ITEMS) & set(ITEM_CODES), "a code has one kind only"


def is_accepted_item_code(code: str) -> bool:
    """Whether items of ``code`` are accepted (it has a schema)."""
    return code in ITEM_CODES or code in SCHEMA_ITEMS


def accepted_item_codes() -> frozenset[str]:
    """Every 特定個人情報名 code whose items are accepted."""
    return frozenset(ITEM_CODES) | frozenset(SCHEMA_ITEMS)


def _unsupported() -> ItemCodeUnsupportedError:
    return ItemCodeUnsupportedError(
        "no schema for this 特定個人情報名 code: its items are not accepted",
        where="SpecificPersonalInformationCode",
    )


def validate_schema_item(
    spec: SchemaItemSpec, data: bytes, limits: XmlLimits = ITEM_LIMITS
) -> etree._Element:
    """Parse (hardened) and validate an item of ``spec``; the validated root element."""
    root = parse_xml(data, limits)
    qname = etree.QName(root)
    if qname.namespace != spec.namespace:
        raise XmlStructureError(f"the item root is not in namespace {spec.namespace}", where="/")
    if qname.localname != spec.root_element:
        raise XmlStructureError(
            f"the root element of {spec.code} must be {spec.root_element}", where="/"
        )
    schema = lxml_schema(spec.xsd_file)
    if not schema.validate(root):
        raise schema_error(schema, f"item {spec.code}", root)
    return root


def canonical_item_bytes(code: str, data: bytes, limits: XmlLimits = ITEM_LIMITS) -> bytes:
    """The bytes to store for an item of ``code`` received as ``data``, once checked.

    Raises :class:`ItemCodeUnsupportedError` for a code without a schema, an
    ``XmlError`` subclass for unacceptable XML and :class:`SchemaError` otherwise.
    """
    if code in ITEM_CODES:
        return encode_item(decode_item(code, data, limits))
    spec = SCHEMA_ITEMS.get(code) if isinstance(code, str) else None
    if spec is None:
        raise _unsupported()
    root = validate_schema_item(spec, data, limits)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def schema_item_xmlschema(code: str) -> Any:
    """The xmlschema schema of a schema-only item (same XSD file as libxml2's)."""
    spec = SCHEMA_ITEMS.get(code)
    if spec is None:
        raise _unsupported()
    return xmlschema_schema(spec.xsd_file)
