"""Hardened streaming XML input for bulk item imports (lxml ``iterparse``).

:func:`chukan.codecs.xmlsafe.parse_xml` needs the whole document in memory; a bulk
replica upload can be far larger than that. Here the bytes pass through
:class:`GuardedReader` on their way to libxml2, which refuses — before libxml2 sees
them — documents over the size limit, non-UTF-8 documents and any DTD or entity
markup, and the parser itself runs with entities, DTDs and network access off.
:func:`hardened_iterparse` refuses processing instructions and XInclude elements as
the parser reports them, wherever they are.

Errors come from the failing parse only: :func:`syntax_error` reads the exception's
own fields, never ``exc.error_log`` (for some failures lxml fills that with a copy of
the thread's global log, i.e. earlier parses of that thread), and an empty document
is named as such by the reader before libxml2 has to guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Final

from lxml import etree

from .errors import CodecError, XmlEncodingError, XmlError, XmlForbiddenError, XmlLimitError
from .xmlsafe import HARDENED_OPTIONS, XINCLUDE_TAG, error_name, forbidden_node

#: How many bytes of the document start are inspected before any is handed on.
_HEAD_BYTES: Final = 1024
#: Overlap kept between chunks, longer than any forbidden marker (``<!NOTATION``).
_CARRY: Final = 16
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_FORBIDDEN_MARKUP = re.compile(rb"<!(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)
_XML_WHITESPACE: Final = b" \t\r\n"


class GuardedReader:
    """A ``read()`` wrapper that enforces the byte limit, UTF-8 and no-DTD rules.

    Its exceptions propagate unchanged through lxml's iterparse. With ``part_bytes``
    it also refuses more than that many bytes since the last :meth:`mark` (the caller
    marks the start of each entry), to within one read of the parser (32 KiB).
    """

    def __init__(self, raw: BinaryIO, max_bytes: int, *, part_bytes: int | None = None) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._part_bytes = part_bytes
        self._mark = 0
        self._pending = b""
        self._head_checked = False
        self._carry = b""
        #: Whether everything handed on so far was XML whitespace.
        self._blank = True
        #: Bytes handed to the parser so far.
        self.consumed = 0

    def mark(self) -> None:
        """Start a new part: its bytes count from here."""
        self._mark = self.consumed

    def _check_head(self, head: bytes) -> None:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:4]:
            raise XmlEncodingError("only UTF-8 documents are accepted")
        declared = _DECLARATION.match(head)
        if declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"):
            raise XmlEncodingError("declared encoding is not UTF-8")

    def _raw_read(self, size: int) -> bytes:
        chunk = self._raw.read(size)
        if not isinstance(chunk, bytes | bytearray):
            raise XmlError("the XML source must yield bytes")
        return bytes(chunk)

    def read(self, size: int = -1) -> bytes:
        """Return at most ``size`` bytes (32 KiB when unbounded), checked."""
        if size is None or size < 0:
            size = 32 * 1024
        if not self._head_checked:
            head = self._pending
            while len(head) < _HEAD_BYTES:
                more = self._raw_read(_HEAD_BYTES - len(head))
                if not more:
                    break
                head += more
            self._check_head(head)
            self._head_checked = True
            self._pending = head
        if self._pending:
            chunk, self._pending = self._pending[:size], self._pending[size:]
        else:
            chunk = self._raw_read(size)
        if not chunk:
            if self._blank:
                raise XmlError("the document is empty", where="/")
            return b""
        if self._blank and chunk.strip(_XML_WHITESPACE):
            self._blank = False
        self.consumed += len(chunk)
        if self.consumed > self._max_bytes:
            raise XmlLimitError(f"document exceeds {self._max_bytes} bytes")
        if self._part_bytes is not None and self.consumed - self._mark > self._part_bytes + len(
            chunk
        ):
            raise XmlLimitError(f"one entry exceeds {self._part_bytes} bytes")
        if _FORBIDDEN_MARKUP.search(self._carry + chunk):
            raise XmlForbiddenError("DTDs and entity declarations are not accepted")
        self._carry = (self._carry + chunk)[-_CARRY:]
        return chunk


def hardened_iterparse(
    reader: GuardedReader, tags: tuple[str, ...] | None = None
) -> Iterator[tuple[str, Any]]:
    """``iterparse`` over ``reader`` with every dangerous libxml2 feature off.

    ``tags`` restricts start/end events to those elements (Clark notation). A
    processing instruction or an XInclude element anywhere in the document raises
    :class:`XmlForbiddenError` when the parser reaches it (its events are requested
    whatever ``tags`` says, and never yielded).
    """
    events = etree.iterparse(
        reader,
        events=("start", "end", "pi"),
        tag=None if tags is None else (*tags, XINCLUDE_TAG),
        recover=False,
        **HARDENED_OPTIONS,
    )
    for event, node in events:
        if event != "end":
            refusal = forbidden_node(node)
            if refusal is not None:
                raise refusal
        yield event, node


def syntax_error(exc: etree.XMLSyntaxError) -> CodecError:
    """A value-free codec error for a libxml2 syntax error (its text may quote data).

    Only this exception's own fields are read (see the module docstring).
    """
    type_name = error_name(exc)
    where = f"line {exc.lineno}" if exc.lineno else None
    message = str(exc.msg or "")
    lowered = message.lower()
    if "depth" in lowered or "huge" in lowered or "nesting" in lowered:
        return XmlLimitError(f"document exceeds the parser's limits [{type_name}]", where=where)
    if "encoding" in lowered or "utf-8" in lowered or type_name == "ERR_INVALID_ENCODING":
        return XmlEncodingError(f"bytes are not valid UTF-8 XML [{type_name}]", where=where)
    if "entity" in lowered or "doctype" in lowered or "dtd" in lowered:
        return XmlForbiddenError(f"entities and DTDs are not accepted [{type_name}]", where=where)
    return XmlError(f"XML is not well-formed [{type_name}]", where=where)
