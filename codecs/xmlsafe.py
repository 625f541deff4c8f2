"""Hardened XML parsing shared by every codec (DESIGN §6).

libxml2 is asked never to resolve entities, load DTDs or touch the network,
and documents are bounded in size and depth *before* a tree is built, so a
hostile document costs at most ``max_bytes`` of parsing work.
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


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """Bounds for one document; defaults suit single items and envelopes."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


DEFAULT_LIMITS: Final = XmlLimits()


#: libxml2 options for every untrusted document, tree or stream: entities are never
#: resolved, DTDs never loaded, the network never touched, huge trees refused.
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
    "remove_pis": True,
}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**HARDENED_OPTIONS)


def check_prolog(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> None:
    """Refuse what must never reach libxml2: oversize, non-UTF-8, DTD markup."""
    if len(data) > limits.max_bytes:
        raise XmlLimitError(f"document of {len(data)} bytes exceeds {limits.max_bytes}")
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


def parse_xml(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> etree._Element:
    """Parse untrusted bytes into an element tree, or raise a :class:`XmlError`."""
    if not isinstance(data, bytes | bytearray):
        raise XmlError("XML must be given as bytes")
    check_prolog(bytes(data), limits)
    try:
        root = etree.fromstring(bytes(data), parser=_parser())
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg) if exc.msg else "not well-formed"
        if "depth" in message.lower() or "nesting" in message.lower():
            raise XmlLimitError(message) from None
        raise XmlError(message) from None
    except ValueError as exc:  # lxml raises ValueError for some malformed inputs
        raise XmlError(str(exc)) from None
    check_depth(root, limits.max_depth)
    return root
