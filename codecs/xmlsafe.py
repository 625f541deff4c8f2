"""Hardened XML parsing shared by every codec (DESIGN §6).

libxml2 is asked never to resolve entities, load DTDs or touch the network,
and documents are bounded in size and depth *before* a tree is built, so a
hostile document costs at most ``max_bytes`` of parsing work.

Markup that asks a processor to do more than read the document is refused, never
silently dropped: DTDs (``DOCTYPE`` and declarations), processing instructions
(anywhere, also before or after the root) and XInclude elements. Nothing that
leaves here still carries them, so no later consumer can act on them.

Every error describes the parse that raised it and no other: it is built only from
the exception libxml2 raised for this parse (``msg``, ``code``, line), never from
``exc.error_log``, which lxml fills with a copy of the thread's *global* log when
the parser's own log is empty — the previous parses of that thread, possibly for
another caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypedDict

from lxml import etree

from .errors import XmlEncodingError, XmlError, XmlForbiddenError, XmlLimitError

DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH: Final = 64

_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_FORBIDDEN_MARKUP = re.compile(rb"<!(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)
_XML_WHITESPACE: Final = b" \t\r\n"

#: Elements of this namespace ask for other documents to be pulled in: always refused.
XINCLUDE_NAMESPACE: Final = "http://www.w3.org/2001/XInclude"
#: Every XInclude element, in lxml's tag-matching notation.
XINCLUDE_TAG: Final = f"{{{XINCLUDE_NAMESPACE}}}*"
#: libxml2 error code → name (``ERR_TAG_NAME_MISMATCH``), for value-free messages.
_ERROR_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in vars(etree.ErrorTypes).items()
    if name.isupper() and isinstance(value, int)
}


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """Bounds for one document; defaults suit single items and envelopes."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


DEFAULT_LIMITS: Final = XmlLimits()


#: libxml2 options for every untrusted document, tree or stream: entities are never
#: resolved, DTDs never loaded, the network never touched, huge trees refused.
#: Processing instructions are kept so that they can be seen and refused.
class HardenedOptions(TypedDict):
    """Keyword arguments shared by ``XMLParser`` and ``iterparse`` (typed for mypy)."""

    resolve_entities: bool
    no_network: bool
    load_dtd: bool
    dtd_validation: bool
    huge_tree: bool
    remove_comments: bool
    remove_pis: bool


HARDENED_OPTIONS: Final[HardenedOptions] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": False,
}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**HARDENED_OPTIONS)


def check_prolog(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> None:
    """Refuse what must never reach libxml2: oversize, empty, non-UTF-8, DTD markup."""
    if len(data) > limits.max_bytes:
        raise XmlLimitError(f"document of {len(data)} bytes exceeds {limits.max_bytes}")
    if not data.strip(_XML_WHITESPACE):
        raise XmlError("the document is empty", where="/")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[:4] in (
        b"\x00\x00\xfe\xff",
        b"\xff\xfe\x00\x00",
    ):
        raise XmlEncodingError("only UTF-8 documents are accepted")
    declared = _DECLARATION.match(data)
    if declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise XmlEncodingError(
            f"declared encoding {declared.group(1).decode('ascii')!r} is not UTF-8"
        )
    if _FORBIDDEN_MARKUP.search(data):
        raise XmlForbiddenError("DTDs and entity declarations are not accepted")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlEncodingError(f"bytes are not valid UTF-8 at offset {exc.start}") from None


def check_depth(root: etree._Element, max_depth: int) -> None:
    """Walk iteratively so a deep tree cannot exhaust the Python stack."""
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > max_depth:
            raise XmlLimitError(f"nesting deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in element)


def forbidden_node(node: etree._Element) -> XmlForbiddenError | None:
    """The refusal for one node reported by a parser, or ``None`` when it is harmless."""
    if isinstance(node, etree._ProcessingInstruction):
        return XmlForbiddenError("processing instructions are not accepted")
    tag = node.tag
    if isinstance(tag, str) and tag.startswith(f"{{{XINCLUDE_NAMESPACE}}}"):
        return XmlForbiddenError("XInclude elements are not accepted")
    return None


def check_markup(root: etree._Element) -> None:
    """Refuse a parsed document holding a DTD, a processing instruction or XInclude.

    The whole document is looked at: the subtree of ``root`` (one walk in libxml2,
    no Python object per ordinary element) and the nodes beside it (prolog, epilog).
    """
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", "") or getattr(docinfo, "internalDTD", None) is not None:
        raise XmlForbiddenError("DTDs and entity declarations are not accepted")
    found = next(root.iter(etree.PI, XINCLUDE_TAG), None)
    if found is None:
        found = next(
            (
                node
                for node in (*root.itersiblings(preceding=True), *root.itersiblings())
                if isinstance(node, etree._ProcessingInstruction)
            ),
            None,
        )
    if found is not None:
        refusal = forbidden_node(found)
        if refusal is not None:
            refusal.where = "/"
            raise refusal


def error_name(exc: etree.XMLSyntaxError) -> str:
    """libxml2's name for the error of *this* exception (never from ``exc.error_log``)."""
    code = getattr(exc, "code", 0)  # not in lxml-stubs
    if not isinstance(code, int):
        code = 0
    return _ERROR_NAMES.get(code, "ERR")


def parse_xml(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> etree._Element:
    """Parse untrusted bytes into an element tree, or raise a :class:`XmlError`.

    The error describes this document only (see the module docstring).
    """
    if not isinstance(data, bytes | bytearray):
        raise XmlError("XML must be given as bytes")
    check_prolog(bytes(data), limits)
    try:
        root = etree.fromstring(bytes(data), parser=_parser())
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg) if exc.msg else f"not well-formed [{error_name(exc)}]"
        if "depth" in message.lower() or "nesting" in message.lower():
            raise XmlLimitError(message) from None
        raise XmlError(message) from None
    except ValueError as exc:  # lxml raises ValueError for some malformed inputs
        raise XmlError(str(exc)) from None
    check_markup(root)
    check_depth(root, limits.max_depth)
    return root
