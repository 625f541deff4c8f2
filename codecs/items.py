"""Codec of the 介護保険 information items (副本 XML in the data standard layout).

``decode_item`` parses untrusted bytes through :mod:`chukan.codecs.xmlsafe`, checks
the root element, validates with libxml2 against the item's XSD, enforces the
``xsi:nil`` ⇔ ``ReasonOfNull`` pairing that XSD 1.0 cannot express, and maps the tree
to the typed dataclasses of :mod:`chukan.codecs.item_model`. ``encode_item`` builds
the tree back and validates its own output, so nothing invalid leaves this module.

Encoding is deterministic (fixed prefixes ``k`` and ``xsi``, no indentation, fields
in schema order): ``encode_item(decode_item(code, data))`` is the canonical form of an
item, the bytes that are stored and digested whatever spelling the sender used.

All item XSDs share one target namespace, :data:`ITEM_NAMESPACE`, and the types of
``xsd/common.xsd`` (one namespace because the kinds share those types and the root
element plus the 特定個人情報名 code already name the kind). The table
:data:`ITEM_CODES` lists every item: 特定個人情報名 code → spec. The same XSD files
feed libxml2 (every validation here) and xmlschema (:func:`item_xmlschema`, for
typed inspection and tooling); the unit tests check that both agree.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import date
from typing import Any, Final, cast

from lxml import etree

from . import item_model as m
from .errors import ItemUnknownError, SchemaError, XmlStructureError
from .item_model import Item, Nil, ReasonOfNull, YearMonth
from .item_schema import element_path, lxml_schema, schema_error, xmlschema_schema
from .xmlsafe import XmlLimits, parse_xml

ITEM_NAMESPACE: Final = "urn:chukan:kaigo:item:1"
XSI_NAMESPACE: Final = "http://www.w3.org/2001/XMLSchema-instance"
#: Value of every ``Version`` attribute in this layout (fixed by the XSDs).
LAYOUT_VERSION: Final = "1"
#: Items are small and shallow (root, group, leaf): 4 MiB and 8 levels is generous.
ITEM_LIMITS: Final = XmlLimits(max_bytes=4 * 1024 * 1024, max_depth=8)

_XSI_NIL: Final = f"{{{XSI_NAMESPACE}}}nil"
_NSMAP: Final = {"k": ITEM_NAMESPACE, "xsi": XSI_NAMESPACE}
_XML_WHITESPACE: Final = " \t\r\n"


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One information item: its code, Japanese name, data set and XSD."""

    code: str
    #: 特定個人情報名 (Japanese name of the item).
    name: str
    #: Data set number in the core system (DESIGN §5).
    data_set: str
    #: File name in ``codecs/xsd/``.
    xsd_file: str
    item_type: type[Item]
    #: Major version of the layout (``SPIMajorVersion`` in registration messages).
    major_version: int = 1

    @property
    def root_element(self) -> str:
        """Local name of the item's root element."""
        return self.item_type.__name__


_SPECS: Final = (
    ItemSpec(
        "TM00000000010101", "被保険者資格情報", "0101", "item_0101.xsd", m.InsuredQualification
    ),
    ItemSpec("TM00000000010102", "住所地特例情報", "0102", "item_0102.xsd", m.AddressException),
    ItemSpec(
        "TM00000000010201",
        "受給者基本情報・要介護認定",
        "0201",
        "item_0201.xsd",
        m.CareCertification,
    ),
    ItemSpec("TM00000000010202", "負担割合情報", "0202", "item_0202.xsd", m.BurdenRatio),
    ItemSpec("TM00000000010300", "給付情報", "0300", "item_0300.xsd", m.Benefit),
    ItemSpec(
        "TM00000000010400",
        "介護予防・日常生活支援総合事業情報",
        "0400",
        "item_0400.xsd",
        m.ComprehensiveProgram,
    ),
    ItemSpec(
        "TM00000000010500",
        "賦課情報（保険料賦課根拠）",
        "0500",
        "item_0500.xsd",
        m.PremiumAssessment,
    ),
)

#: 特定個人情報名 code → item spec; the only list of items the codec accepts.
ITEM_CODES: Final[Mapping[str, ItemSpec]] = types.MappingProxyType(
    {spec.code: spec for spec in _SPECS}
)
_SPEC_BY_TYPE: Final[Mapping[type[Any], ItemSpec]] = {spec.item_type: spec for spec in _SPECS}


def item_spec(code: str) -> ItemSpec:
    """The spec for ``code``, or :class:`ItemUnknownError`."""
    spec = ITEM_CODES.get(code) if isinstance(code, str) else None
    if spec is None:
        raise ItemUnknownError(
            "unknown 特定個人情報名 code", where="SpecificPersonalInformationCode"
        )
    return spec


# ------------------------------------------------------------- value mapping


@dataclass(frozen=True, slots=True)
class _Converter:
    """Lexical form ⇔ typed value for one leaf type (the XSD has checked the form)."""

    python_type: type[Any]
    parse: Callable[[str], Any]
    format: Callable[[Any], str]


def _parse_year_month(text: str) -> YearMonth:
    year, month = text.strip(_XML_WHITESPACE).split("-")
    return YearMonth(int(year), int(month))


def _parse_int(text: str) -> int:
    return int(text.strip(_XML_WHITESPACE))


def _format_int(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("bool is not an integer value")
    return str(value)


def _format_year(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("bool is not a year")
    return f"{value:04d}"


_STRING = _Converter(str, str, str)
_INTEGER = _Converter(int, _parse_int, _format_int)
_CONVERTERS: Final[dict[Any, _Converter]] = {
    date: _Converter(
        date, lambda text: date.fromisoformat(text.strip(_XML_WHITESPACE)), date.isoformat
    ),
    YearMonth: _Converter(YearMonth, _parse_year_month, str),
    m.FiscalYear: _Converter(int, _parse_int, _format_year),
    m.Yen: _INTEGER,
    m.Units: _INTEGER,
    m.HistoryNumber: _INTEGER,
    m.ObligorCode: _STRING,
    m.PensionCode: _STRING,
    m.InsuredNumber: _STRING,
    m.InsurerNumber: _STRING,
    m.ProviderNumber: _STRING,
    m.ServiceTypeCode: _STRING,
    m.SpecificDiseaseCode: _STRING,
    m.IncomeCategoryCode: _STRING,
}


def _converter(tp: Any) -> _Converter:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp
        return _Converter(enum_type, enum_type, lambda value: str(value.value))
    converter = _CONVERTERS.get(tp)
    if converter is None:
        raise TypeError(f"no XML mapping for field type {tp!r}")
    return converter


@dataclass(frozen=True, slots=True)
class _Leaf:
    attr: str
    element: str
    nillable: bool
    converter: _Converter
    #: Lexical forms written back exactly as read (a code list's values): no conversion.
    verbatim: frozenset[str] = frozenset()
    #: A field added after the item's first layout (``item_model.Optional``): the element
    #: may be absent (``None``), and is then not written.
    optional: bool = False


def _verbatim(converter: _Converter) -> frozenset[str]:
    """The texts ``converter`` reads and writes unchanged without calling it: the values of
    a code list (``Enum(text)`` finds exactly the member whose value is ``text``)."""
    kind = converter.python_type
    if not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        return frozenset()
    return frozenset(
        member.value
        for member in kind
        if isinstance(member.value, str) and converter.format(member) == member.value
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one dataclass (item root or repeating group) maps to its element."""

    cls: type[Any]
    element: str
    leaves: tuple[_Leaf, ...]
    groups: tuple[tuple[str, _Layout], ...]  # (field name, group layout)
    has_updated: bool

    def member(self, local: str) -> _Leaf | tuple[str, _Layout] | None:
        for leaf in self.leaves:
            if leaf.element == local:
                return leaf
        for attr, group in self.groups:
            if group.element == local:
                return attr, group
        return None


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _layout(cls: type[Any]) -> _Layout:
    """Derive the element mapping of ``cls`` from its type hints (see item_model)."""
    hints = typing.get_type_hints(cls)
    leaves: list[_Leaf] = []
    groups: list[tuple[str, _Layout]] = []
    has_updated = False
    for spec_field in fields(cls):
        tp = hints[spec_field.name]
        if spec_field.name == "updated":
            has_updated = True
            continue
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and isinstance(args[0], type) and is_dataclass(args[0]):
            groups.append((spec_field.name, _layout(args[0])))
            continue
        nillable = Nil in args
        optional = type(None) in args
        if nillable and optional:
            raise TypeError(f"{cls.__name__}.{spec_field.name}: an added field is never nillable")
        base = next(arg for arg in args if arg is not Nil and arg is not type(None)) if args else tp
        converter = _converter(base)
        leaves.append(
            _Leaf(
                spec_field.name,
                _pascal(spec_field.name),
                nillable,
                converter,
                _verbatim(converter),
                optional,
            )
        )
    return _Layout(cls, cls.__name__, tuple(leaves), tuple(groups), has_updated)


_LAYOUTS: Final[Mapping[type[Any], _Layout]] = {
    spec.item_type: _layout(spec.item_type) for spec in _SPECS
}


# ------------------------------------------------------------------ checking


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def check_nil_pairing(root: etree._Element) -> None:
    """Require ``ReasonOfNull`` exactly on nil elements (XSD 1.0 has no xs:assert)."""
    for element in root.iter("*"):
        nil = element.get(_XSI_NIL)
        reason = element.get("ReasonOfNull")
        if nil is not None and nil.strip(_XML_WHITESPACE) in ("true", "1"):
            if reason is None:
                raise SchemaError(
                    "a nil value must carry ReasonOfNull", where=element_path(element, root)
                )
        elif reason is not None:
            raise SchemaError(
                "ReasonOfNull is only allowed on a nil value",
                where=element_path(element, root) + "/@ReasonOfNull",
            )


def _check_root(spec: ItemSpec, root: etree._Element) -> None:
    if not isinstance(root.tag, str):
        raise XmlStructureError("the item has no root element", where="/")
    qname = etree.QName(root)
    if qname.namespace != ITEM_NAMESPACE:
        raise XmlStructureError(f"the item root is not in namespace {ITEM_NAMESPACE}", where="/")
    if qname.localname != spec.root_element:
        raise XmlStructureError(
            f"the root element of {spec.code} must be {spec.root_element}", where="/"
        )


def validate_item_element(code: str, root: etree._Element) -> ItemSpec:
    """Check an already parsed item element against its XSD and the nil rule."""
    spec = item_spec(code)
    _check_root(spec, root)
    schema = lxml_schema(spec.xsd_file)
    if not schema.validate(root):
        raise schema_error(schema, f"item {spec.code}", root)
    check_nil_pairing(root)
    return spec


def validate_item_fast(code: str, data: bytes, limits: XmlLimits = ITEM_LIMITS) -> None:
    """Format check for bulk import: hardened parse plus libxml2 validation, no mapping.

    Raises a :class:`CodecError` subclass; returns nothing when the item is valid.
    """
    item_spec(code)
    validate_item_element(code, parse_xml(data, limits))


# ------------------------------------------------------------------ decoding


def _leaf_value(leaf: _Leaf, element: etree._Element, top: etree._Element) -> Any:
    nil = element.get(_XSI_NIL)
    if nil is not None and nil.strip(_XML_WHITESPACE) in ("true", "1"):
        return Nil(ReasonOfNull(element.get("ReasonOfNull")))
    try:
        return leaf.converter.parse(element.text or "")
    except (ValueError, TypeError):
        raise SchemaError(
            "value does not match its type", where=element_path(element, top)
        ) from None


def _from_element(layout: _Layout, element: etree._Element, top: etree._Element) -> Any:
    values: dict[str, Any] = {attr: [] for attr, _ in layout.groups}
    if layout.has_updated:
        values["updated"] = date.fromisoformat(
            (element.get("TimeAndDateOfUpdate") or "").strip(_XML_WHITESPACE)
        )
    for child in element.iterchildren("*"):
        member = layout.member(_local(child))
        if member is None:  # the schema admits no such element; defensive only
            raise SchemaError("unexpected element", where=element_path(child, top))
        if isinstance(member, _Leaf):
            values[member.attr] = _leaf_value(member, child, top)
        else:
            attr, group = member
            values[attr].append(_from_element(group, child, top))
    for attr, _ in layout.groups:
        values[attr] = tuple(values[attr])
    return layout.cls(**values)


def item_from_element(code: str, root: etree._Element) -> Item:
    """Validate a parsed item element and map it to its typed value."""
    spec = validate_item_element(code, root)
    item: Item = _from_element(_LAYOUTS[spec.item_type], root, root)
    return item


def decode_item(code: str, data: bytes, limits: XmlLimits = ITEM_LIMITS) -> Item:
    """Decode untrusted item bytes for 特定個人情報名 ``code`` into a typed value.

    Raises :class:`ItemUnknownError` for an unknown code, an ``XmlError`` subclass for
    unacceptable XML, and :class:`SchemaError` (``where`` = location) otherwise.
    """
    item_spec(code)
    return item_from_element(code, parse_xml(data, limits))


# ------------------------------------------------------------------ encoding


def _leaf_element(parent: etree._Element, leaf: _Leaf, value: Any, where: str) -> None:
    element = etree.SubElement(parent, f"{{{ITEM_NAMESPACE}}}{leaf.element}")
    element.set("Version", LAYOUT_VERSION)
    if isinstance(value, Nil):
        if not isinstance(cast(object, value.reason), ReasonOfNull):
            raise SchemaError("ReasonOfNull must be a ReasonOfNull", where=where)
        element.set(_XSI_NIL, "true")
        element.set("ReasonOfNull", value.reason.value)
        return
    if not isinstance(value, leaf.converter.python_type):
        raise SchemaError(f"expected a {leaf.converter.python_type.__name__} value", where=where)
    try:
        element.text = leaf.converter.format(value)
    except (ValueError, TypeError):
        raise SchemaError("value cannot be written", where=where) from None


def _fill(element: etree._Element, layout: _Layout, value: Any, where: str) -> None:
    if type(value) is not layout.cls:
        raise SchemaError(f"expected a {layout.cls.__name__} value", where=where)
    element.set("Version", LAYOUT_VERSION)
    if layout.has_updated:
        updated = value.updated
        if not isinstance(updated, date):
            raise SchemaError("expected a date value", where=where + "/@TimeAndDateOfUpdate")
        element.set("TimeAndDateOfUpdate", updated.isoformat())
    for leaf in layout.leaves:
        leaf_value = getattr(value, leaf.attr)
        if leaf.optional and leaf_value is None:
            continue
        _leaf_element(element, leaf, leaf_value, f"{where}/{leaf.element}")
    for attr, group in layout.groups:
        records = getattr(value, attr)
        if not isinstance(records, tuple | list):
            raise SchemaError("expected a tuple of groups", where=f"{where}/{group.element}")
        for index, record in enumerate(records, start=1):
            child = etree.SubElement(element, f"{{{ITEM_NAMESPACE}}}{group.element}")
            _fill(child, group, record, f"{where}/{group.element}[{index}]")


def item_to_element(item: Item) -> etree._Element:
    """Build and validate the element tree of ``item`` (for embedding in messages)."""
    spec = _SPEC_BY_TYPE.get(type(item))
    if spec is None:
        raise ItemUnknownError("value is not an information item", where="/")
    layout = _LAYOUTS[spec.item_type]
    root = etree.Element(f"{{{ITEM_NAMESPACE}}}{layout.element}", nsmap=_NSMAP)
    _fill(root, layout, item, f"/{layout.element}")
    schema = lxml_schema(spec.xsd_file)
    if not schema.validate(root):
        raise schema_error(schema, f"item {spec.code}", root)
    return root


def encode_item(item: Item) -> bytes:
    """Encode ``item`` as UTF-8 XML with a declaration; the canonical stored form."""
    return etree.tostring(item_to_element(item), xml_declaration=True, encoding="UTF-8")


# ------------------------------------------------------- canonical bytes, directly


_ITEM_PREFIX: Final = f"{{{ITEM_NAMESPACE}}}"
_ROOT_DECLARATIONS: Final = f' xmlns:k="{ITEM_NAMESPACE}" xmlns:xsi="{XSI_NAMESPACE}"'
_DECLARATION: Final = "<?xml version='1.0' encoding='UTF-8'?>\n"
#: What libxml2 escapes in character data (``\r`` too, so that it survives a re-parse).
_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_NEEDS_ESCAPE: Final = re.compile("[&<>\r]")
_REASONS: Final = frozenset(reason.value for reason in ReasonOfNull)


#: Per layout (item root or group): its own members by child tag.
_MEMBERS: Final[dict[int, dict[str, _Leaf | tuple[str, _Layout]]]] = {}


def _own_members(layout: _Layout) -> dict[str, _Leaf | tuple[str, _Layout]]:
    members = _MEMBERS.get(id(layout))
    if members is None:
        members = {}
        for leaf in layout.leaves:
            members.setdefault(_ITEM_PREFIX + leaf.element, leaf)
        for attr, group in layout.groups:
            members.setdefault(_ITEM_PREFIX + group.element, (attr, group))
        _MEMBERS[id(layout)] = members
    return members


def _canonical_leaf(leaf: _Leaf, element: etree._Element) -> str | None:
    """One leaf as :func:`_leaf_element` writes the value :func:`_leaf_value` reads; None
    when the nil rule is broken."""
    nil = element.get(_XSI_NIL)
    reason = element.get("ReasonOfNull")
    if nil is not None and nil.strip(_XML_WHITESPACE) in ("true", "1"):
        if reason is None:  # the nil rule (check_nil_pairing) is broken
            return None
        if reason not in _REASONS:
            reason = ReasonOfNull(reason).value
        return f'<k:{leaf.element} Version="1" xsi:nil="true" ReasonOfNull="{reason}"/>'
    if reason is not None:
        return None
    converter = leaf.converter
    text = element.text or ""
    if converter is not _STRING and text not in leaf.verbatim:  # strings are written as read
        text = converter.format(converter.parse(text))
    if _NEEDS_ESCAPE.search(text):
        text = text.translate(_TEXT_ESCAPES)
    return f'<k:{leaf.element} Version="1">{text}</k:{leaf.element}>'


def _canonical_group(layout: _Layout, element: etree._Element, root: bool = False) -> str | None:
    """One element as :func:`_fill` writes the value :func:`_from_element` reads; None
    when something is not as expected (then only the reference path may judge)."""
    if element.get(_XSI_NIL) is not None or element.get("ReasonOfNull") is not None:
        return None
    members = _own_members(layout)
    leaves: dict[str, str] = {}
    groups: dict[str, list[str]] = {attr: [] for attr, _ in layout.groups}
    for child in element.iterchildren("*"):
        member = members.get(child.tag)
        if type(member) is _Leaf:
            leaf = _canonical_leaf(member, child)
            if leaf is None or member.attr in leaves:
                return None
            leaves[member.attr] = leaf
        elif member is not None:
            attr, group = cast(tuple[str, _Layout], member)
            text = _canonical_group(group, child)
            if text is None:
                return None
            groups[attr].append(text)
        else:
            return None
    if any(leaf.attr not in leaves for leaf in layout.leaves if not leaf.optional):
        return None
    tag = "k:" + layout.element
    head = f'<{tag}{_ROOT_DECLARATIONS if root else ""} Version="1"'
    if layout.has_updated:
        updated = date.fromisoformat(
            (element.get("TimeAndDateOfUpdate") or "").strip(_XML_WHITESPACE)
        )
        head += f' TimeAndDateOfUpdate="{updated.isoformat()}"'
    parts = [head, ">"]
    parts.extend(leaves[leaf.attr] for leaf in layout.leaves if leaf.attr in leaves)
    for attr, _ in layout.groups:
        parts.extend(groups[attr])
    parts.append(f"</{tag}>")
    return "".join(parts)


def canonical_item_from_element(
    code: str, root: etree._Element, *, validated: bool = False
) -> bytes:
    """``encode_item(item_from_element(code, root))``, without building the typed value.

    The same checks run (the root, the item's XSD, the nil rule, every value through its
    converter); the canonical bytes are written directly from the validated element, in
    the order and form :func:`encode_item` writes them (the unit tests compare the two on
    every kind of item and spelling). Anything the direct writer does not expect — the nil
    rule broken, a value that does not convert, a member the layout lacks — is left to the
    reference path, which raises its own error (or, should it accept, whose bytes are
    returned).

    ``validated``: the item already passed its XSD (a bulk import validates a whole slice of
    entries at once, see :mod:`.registration_split`), so it is not validated again; its root
    is still checked, as that schema accepts any item's root.
    """
    spec = item_spec(code)
    _check_root(spec, root)
    if not validated:
        schema = lxml_schema(spec.xsd_file)
        if not schema.validate(root):
            raise schema_error(schema, f"item {spec.code}", root)
    try:
        text = _canonical_group(_LAYOUTS[spec.item_type], root, root=True)
    except (ValueError, TypeError):
        text = None
    if text is None:
        return encode_item(item_from_element(code, root))
    return (_DECLARATION + text).encode("utf-8")


def item_code_of(item: Item) -> str:
    """The 特定個人情報名 code of a typed item value."""
    spec = _SPEC_BY_TYPE.get(type(item))
    if spec is None:
        raise ItemUnknownError("value is not an information item", where="/")
    return spec.code


def item_xmlschema(code: str) -> Any:
    """The xmlschema schema of ``code`` (same XSD file as the libxml2 validator).

    For typed inspection and tooling (``to_dict``, component walks); compiled once.
    """
    return xmlschema_schema(item_spec(code).xsd_file)


# ------------------------------------------- canonical bytes, verbatim from the input
#
# An item a sender wrote exactly as encode_item writes it (the usual case: senders encode
# with the same layout) is its own canonical form.  The patterns below describe exactly
# the bytes _canonical_group writes (root declarations, ``Version="1"``, members in layout
# order, each value in its canonical lexical form, no whitespace, comment or reference
# but the four escapes the writer uses), so that for any bytes they match, parsing and
# writing again gives the same bytes.  Anything else (another prefix, indentation, a
# padded value, a CDATA section...) does not match and goes the element-by-element way.

#: A text as _canonical_leaf writes a string: not empty, only the escapes it writes.
_STRING_BYTES: Final = rb"(?=[^<])[^<&>\r]*(?:&(?:amp|lt|gt|#13);[^<&>\r]*)*"
#: Years with a 29 February (0000 is ruled out where it is used).
_LEAP_YEAR: Final = rb"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
#: Exactly the dates date.isoformat writes (years 0001–9999, each month its own days).
_DATE_BYTES: Final = (
    rb"(?!0000)(?:[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    rb"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)|" + _LEAP_YEAR + rb"-02-29)"
)
_INTEGER_BYTES: Final = rb"(?:0|-?[1-9][0-9]{0,17})"


def _value_bytes(leaf: _Leaf) -> bytes | None:
    """The canonical lexical forms of one leaf's values, or None (no verbatim path)."""
    converter = leaf.converter
    if converter is _STRING:
        return _STRING_BYTES
    if converter is _INTEGER:
        return _INTEGER_BYTES
    if converter.format is _format_year:
        return rb"[0-9]{4}"
    if converter is _CONVERTERS[date]:
        return _DATE_BYTES
    if converter is _CONVERTERS[YearMonth]:
        return rb"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])"  # YearMonth: 0001-01 to 9999-12
    kind = converter.python_type
    if isinstance(kind, type) and issubclass(kind, enum.Enum) and leaf.verbatim:
        return b"(?:" + b"|".join(re.escape(v.encode()) for v in sorted(leaf.verbatim)) + b")"
    return None


_REASON_BYTES: Final = b"(?:" + b"|".join(re.escape(r.encode()) for r in sorted(_REASONS)) + b")"


def _leaf_bytes(leaf: _Leaf) -> bytes | None:
    value = _value_bytes(leaf)
    if value is None:
        return None
    name = leaf.element.encode()
    written = b"<k:" + name + b' Version="1">' + value + b"</k:" + name + b">"
    if leaf.nillable:
        nil = b"<k:" + name + b' Version="1" xsi:nil="true" ReasonOfNull="' + _REASON_BYTES + b'"/>'
        written = b"(?:" + written + b"|" + nil + b")"
    return b"(?:" + written + b")?" if leaf.optional else written


def _group_bytes(layout: _Layout, root: bool = False) -> bytes | None:
    parts = [b"<k:", layout.element.encode()]
    if root:
        parts.append(_ROOT_DECLARATIONS.encode())
    parts.append(b' Version="1"')
    if layout.has_updated:
        parts.append(b' TimeAndDateOfUpdate="' + _DATE_BYTES + b'"')
    parts.append(b">(?=<k:)")  # never an element without members (the writer's own form)
    for leaf in layout.leaves:
        written = _leaf_bytes(leaf)
        if written is None:
            return None
        parts.append(written)
    for _, group in layout.groups:
        written = _group_bytes(group)
        if written is None:
            return None
        parts.append(b"(?:" + written + b")*")
    parts.append(b"</k:" + layout.element.encode() + b">")
    return b"".join(parts)


def _verbatim_pattern(spec: ItemSpec) -> re.Pattern[bytes] | None:
    written = _group_bytes(_LAYOUTS[spec.item_type], root=True)
    return None if written is None else re.compile(written)


_VERBATIM: Final[Mapping[str, re.Pattern[bytes] | None]] = {
    spec.code: _verbatim_pattern(spec) for spec in _SPECS
}


def _depth(layout: _Layout) -> int:
    return 1 + max((1 if layout.leaves else 0, *(_depth(group) for _, group in layout.groups)))


#: The deepest an item read verbatim nests (its root at 1): the patterns admit no more.
VERBATIM_DEPTH: Final = max(_depth(layout) for layout in _LAYOUTS.values())
#: What canonical bytes start with (the declaration encode_item writes).
CANONICAL_DECLARATION: Final = _DECLARATION.encode()


def verbatim_item_end(code: str, data: bytes, start: int) -> int:
    """Where the item at ``data[start:]`` ends when it is written exactly in its canonical
    form (then ``CANONICAL_DECLARATION + data[start:end]`` is what
    :func:`canonical_item_from_element` gives for it), else -1.

    Only for an item its XSD has validated, with the parsed document ``data`` (the
    patterns check the form, not what the XSD checks); any doubt gives -1.
    """
    pattern = _VERBATIM.get(code)
    if pattern is None:
        return -1
    found = pattern.match(data, start)
    if found is None:
        return -1
    return found.end()


def canonical_item_verbatim(code: str, data: bytes) -> bytes | None:
    """The canonical bytes of a validated item whose XML (without declaration) ``data``
    is already canonical, else None (see :func:`verbatim_item_end`)."""
    if verbatim_item_end(code, data, 0) != len(data):
        return None
    return CANONICAL_DECLARATION + data
