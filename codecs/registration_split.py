"""Registration messages split by byte ranges: the bulk import's main process does no XML work.

:func:`split_registration` reads a message as bytes. It parses only the head (prolog, root,
``MessageHeader``, the ``MessageBody`` start tag) with the hardened parser and the checks of
:func:`~.registration.iter_registration`. It then cuts the body into slices at ``Record`` end
tags found by a byte search, each slice being whole entries. :func:`encode_record_slice`, run
in a worker process, parses one slice (wrapped in an element that declares the body's
namespaces) with the same hardened parser, validates every entry and every item in one call
against one schema, and checks each entry as :func:`~.registration.iter_registration_encoded`
does. Entries written plainly, with their items in canonical form, are then read by one
pattern each instead of element by element (see "entries read verbatim" below).

**Why this gives exactly the streaming parser's result.** A byte search cannot tell an end
tag from the same text in a comment, a CDATA section or a nested element. It does not need
to: every slice must parse on its own as whitespace and ``Record`` elements only, exactly as
many as the search counted. Then every cut lies between two top-level entries, so the body
is the concatenation of the slices and parses as they do. Whatever is not plainly so
raises :class:`~.errors.SplitUnsureError` (splitter) or :class:`~.errors.SliceRefusedError`
(worker): a cut inside a comment or a nested element, an entry near the size limit, more
than ``max_bytes``, anything odd in the head or after the body, forbidden markup, a limit
broken. The caller then decodes the whole
message again with the streaming parser, which refuses it (with the code it always gave) or
accepts it. Refusals cost at most twice the bounded work; ordinary messages never fall back.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, BinaryIO, Final, cast
from xml.sax.saxutils import quoteattr

from lxml import etree

from .errors import CodecError, SliceRefusedError, SplitUnsureError
from .item_schema import XSD_DIR, lxml_schema
from .item_stream import GuardedReader
from .items import (
    CANONICAL_DECLARATION,
    ITEM_CODES,
    ITEM_NAMESPACE,
    VERBATIM_DEPTH,
    verbatim_item_end,
)
from .registration import (
    BODY,
    DEFAULT_STREAM_LIMITS,
    HEADER,
    RECORD,
    REGISTRATION_NAMESPACE,
    REGISTRATION_XSD,
    ROOT,
    EncodedEntry,
    EntryRejection,
    MessageHeader,
    Segment,
    StreamLimits,
    StreamState,
    blank,
    decode_header,
    encode_record,
    on_part_start,
    on_root_start,
    over_budget,
)
from .xmlsafe import (
    HARDENED_OPTIONS,
    XINCLUDE_TAG,
    XmlLimits,
    check_markup,
    check_prolog,
    forbidden_node,
)

#: Entries this close to ``max_entry_bytes`` are left to the streaming parser, whose own
#: measure is exact only to within a few of its 32 KiB reads.
ENTRY_MARGIN: Final = 128 * 1024
#: Bytes read at a time.
READ_BYTES: Final = 256 * 1024
_WS: Final = rb"[ \t\r\n]*"
_NAME: Final = rb"[A-Za-z_][A-Za-z0-9_.\-]*"
_FIRST_RECORD: Final = re.compile(_WS + rb"<((?:" + _NAME + rb":)?Record)[ \t\r\n/>]")
_BODY_TAG: Final = re.compile(rb"<(?:" + _NAME + rb":)?MessageBody(?=[ \t\r\n/>])")
_BODY_START: Final = re.compile(
    rb"<((?:"
    + _NAME
    + rb":)?MessageBody)(?:[ \t\r\n]+"
    + _NAME
    + rb"(?::"
    + _NAME
    + rb")?"
    + _WS
    + rb"="
    + _WS
    + rb"(?:\"[^\"<]*\"|'[^'<]*'))*"
    + _WS
    + rb">"
)
_XML_DECLARATION: Final = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml[^<>]*\?>")
_SLICE_LOCAL: Final = "RecordSlice"
_SLICE: Final = f"{{{REGISTRATION_NAMESPACE}}}{_SLICE_LOCAL}"


@dataclass(frozen=True, slots=True)
class RecordSlice:
    """Consecutive entries of a message as one standalone document (see the module docstring)."""

    #: 1-based position of the slice's first entry in the message body.
    first_position: int
    #: Entries (``Record`` end tags) the splitter counted in the slice.
    count: int
    #: The slice wrapped in a ``RecordSlice`` element declaring the body's namespaces.
    data: bytes
    #: Bytes of the message read when the slice was cut (for progress reports).
    consumed: int


def _wrapper(nsmap: dict[str | None, str]) -> tuple[bytes, bytes]:
    """Start and end tag of a slice's wrapper: the body's in-scope namespaces, and its own
    element under a prefix the body does not use."""
    prefix = next(f"s{n}" for n in range(len(nsmap) + 1) if f"s{n}" not in nsmap)
    declarations = [f" xmlns:{prefix}={quoteattr(REGISTRATION_NAMESPACE, _ATTR_ENTITIES)}"]
    for name, uri in nsmap.items():
        attr = "xmlns" if name is None else f"xmlns:{name}"
        declarations.append(f" {attr}={quoteattr(uri, _ATTR_ENTITIES)}")
    tag = f"{prefix}:{_SLICE_LOCAL}"
    return f"<{tag}{''.join(declarations)}>".encode(), f"</{tag}>".encode()


_ATTR_ENTITIES: Final = {"\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


@dataclass(frozen=True, slots=True)
class _Head:
    header: MessageHeader
    nsmap: dict[str | None, str]
    root_name: bytes
    body_name: bytes
    #: Offset of the first byte after the body's start tag.
    body_offset: int


def _read_head(data: bytes, limits: StreamLimits) -> _Head:
    """Prolog, root, header and body start tag, checked as the streaming parser checks them.

    ``data`` holds at least the body's start tag. Anything unusual raises SplitUnsureError.
    """
    found = _BODY_TAG.search(data)
    if found is None:
        raise SplitUnsureError("no MessageBody start tag in the head")
    start = _BODY_START.match(data, found.start())
    if start is None:
        raise SplitUnsureError("the MessageBody start tag is not plain")
    head = data[: start.end()]
    # No comment, CDATA section, DTD or processing instruction (but the XML declaration):
    # then every "<" of the head starts a tag, and the first MessageBody tag is the body's.
    declaration = _XML_DECLARATION.match(head)
    if b"<!" in head or b"<?" in head[declaration.end() if declaration else 0 :]:
        raise SplitUnsureError("the head holds markup the splitter does not read")
    reader = GuardedReader(io.BytesIO(head), limits.max_bytes, part_bytes=limits.max_entry_bytes)
    parser = etree.XMLPullParser(
        events=("start", "end", "pi"),
        tag=(ROOT, HEADER, BODY, RECORD, XINCLUDE_TAG),
        recover=False,
        **HARDENED_OPTIONS,
    )
    state = StreamState()
    header: MessageHeader | None = None
    try:
        while chunk := reader.read(32 * 1024):
            parser.feed(chunk)
            for event, node in parser.read_events():
                element = cast(etree._Element, node)
                if event != "end" and forbidden_node(element) is not None:
                    raise SplitUnsureError("forbidden markup in the head")
                tag = element.tag
                if event == "start":
                    if state.root is None:
                        on_root_start(element)
                        state.root = element
                    elif tag in (HEADER, BODY):
                        on_part_start(element, state, reader)
                        if tag == BODY:
                            if header is None or state.root.prefix != element.prefix:
                                raise SplitUnsureError("unexpected head")
                            root_name = (
                                _ROOT_LOCAL
                                if state.root.prefix is None
                                else f"{state.root.prefix}:{_ROOT_LOCAL}"
                            )
                            return _Head(
                                header,
                                dict(element.nsmap),
                                root_name.encode(),
                                start.group(1),
                                start.end(),
                            )
                    else:
                        raise SplitUnsureError("unexpected element in the head")
                elif tag == HEADER:
                    state.in_header = False
                    header = decode_header(element)
    except (CodecError, etree.XMLSyntaxError, ValueError):
        raise SplitUnsureError("the head is refused") from None
    raise SplitUnsureError("the head ends before the body")


_ROOT_LOCAL: Final = ROOT.rpartition("}")[2]


def split_registration(
    stream: BinaryIO,
    limits: StreamLimits = DEFAULT_STREAM_LIMITS,
    *,
    batch_size: int = 1000,
    batch_bytes: int = 1024 * 1024,
) -> Iterator[MessageHeader | RecordSlice]:
    """The header, then slices of at most ``batch_size`` entries (and about ``batch_bytes``).

    Raises :class:`SplitUnsureError` whenever the message must be decoded by the streaming
    parser instead (see the module docstring); reads at most one entry's room beyond
    what it has vouched for.
    """
    room = limits.max_entry_bytes - ENTRY_MARGIN
    if room <= 0:
        raise SplitUnsureError("entries too small for the splitter's margin")
    data = b""
    total = 0
    while True:
        chunk = stream.read(READ_BYTES)
        if not isinstance(chunk, bytes):
            raise SplitUnsureError("the source does not yield bytes")
        total += len(chunk)
        data += chunk
        if _BODY_START.search(data) is not None or not chunk or len(data) > room:
            break
    if total > limits.max_bytes:
        raise SplitUnsureError("message over max_bytes")
    head = _read_head(data, limits)
    yield head.header
    opening, closing = _wrapper(head.nsmap)
    buffer = data[head.body_offset :]
    del data
    # Entries are cut at their end tag written as the first entry's start tag names it
    # (``</Record>``, ``</r:Record>``): one byte search per entry.  Entries that name it
    # otherwise are miscounted, and their slice falls back (see the module docstring).
    first = _FIRST_RECORD.match(buffer)
    if first is None:
        raise SplitUnsureError("the body does not start with a plain Record start tag")
    end_tag = b"</" + first.group(1) + b">"
    position = 1
    base = 0  # start of the slice being cut, in buffer
    count = 0  # entries in buffer[base:cut]
    cut = 0  # end of the last entry found
    scan = 0
    ended = False
    while True:
        found = buffer.find(end_tag, scan)
        if found >= 0:
            end = found + len(end_tag)
            if end - cut > room:
                raise SplitUnsureError("an entry near or over max_entry_bytes")
            cut = scan = end
            count += 1
            if count >= batch_size or cut - base >= batch_bytes:
                yield RecordSlice(position, count, opening + buffer[base:cut] + closing, total)
                position += count
                base = cut
                count = 0
            continue
        if len(buffer) - cut > room:
            raise SplitUnsureError("an entry near or over max_entry_bytes")
        if ended:
            break
        chunk = stream.read(READ_BYTES)
        if not isinstance(chunk, bytes):
            raise SplitUnsureError("the source does not yield bytes")
        total += len(chunk)
        if total > limits.max_bytes:
            raise SplitUnsureError("message over max_bytes")
        scan = max(cut, len(buffer) - len(end_tag)) - base
        buffer = buffer[base:] + chunk
        cut -= base
        base = 0
        ended = not chunk
    tail = re.compile(
        _WS
        + rb"</"
        + re.escape(head.body_name)
        + _WS
        + rb">"
        + _WS
        + rb"</"
        + re.escape(head.root_name)
        + _WS
        + rb">"
        + _WS
    )
    if tail.fullmatch(buffer, cut) is None or position + count == 1:
        raise SplitUnsureError("the body does not end as the splitter expects")
    if count:
        yield RecordSlice(position, count, opening + buffer[base:cut] + closing, total)


# ------------------------------------------------------------------ worker side

_local = threading.local()


def _items_schema_document() -> bytes:
    includes = "".join(
        f'<xs:include schemaLocation="{file}"/>'
        for file in sorted({spec.xsd_file for spec in ITEM_CODES.values()})
    )
    return (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="{ITEM_NAMESPACE}" elementFormDefault="qualified">'
        f"{includes}</xs:schema>"
    ).encode()


_ITEMS_XSD: Final = "slice_items.xsd"


class _Resolver(etree.Resolver):
    def resolve(  # type: ignore[override]  # lxml passes the context (not in its stubs)
        self, system_url: str, public_id: str, context: Any
    ) -> Any:
        if system_url.endswith(_ITEMS_XSD):
            return self.resolve_string(
                _items_schema_document(), context, base_url=str(XSD_DIR / _ITEMS_XSD)
            )
        return None


def slice_schema() -> etree.XMLSchema | None:
    """``registration.xsd`` with a ``RecordSlice`` of entries and every embedded item
    validated strictly against the item XSDs; ``None`` if it cannot be built (then each
    entry and item is validated on its own). Compiled once per thread."""
    if hasattr(_local, "schema"):
        schema: etree.XMLSchema | None = _local.schema
        return schema
    schema = None
    text = (XSD_DIR / REGISTRATION_XSD).read_text(encoding="utf-8")
    skip = 'processContents="skip"'
    if text.count(skip) == 1 and text.count("</xs:schema>") == 1:
        opening = text.index(">", text.index("<xs:schema")) + 1
        text = (
            text[:opening]
            + f'<xs:import namespace="{ITEM_NAMESPACE}" schemaLocation="{_ITEMS_XSD}"/>'
            + text[opening:].replace(skip, 'processContents="strict"')
        ).replace(
            "</xs:schema>",
            f'<xs:element name="{_SLICE_LOCAL}"><xs:complexType><xs:sequence>'
            '<xs:element ref="r:Record" maxOccurs="unbounded"/>'
            "</xs:sequence></xs:complexType></xs:element></xs:schema>",
        )
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True
        )
        parser.resolvers.add(_Resolver())
        try:
            document = etree.fromstring(text.encode(), parser, base_url=str(XSD_DIR / "slice.xsd"))
            schema = etree.XMLSchema(document)
        except (etree.XMLSchemaParseError, etree.XMLSyntaxError):
            schema = None
    _local.schema = schema
    return schema


_PARSER_OPTIONS: Final = {**HARDENED_OPTIONS, "remove_comments": False}


def encode_record_slice(
    data: bytes, first_position: int, expected: int, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> list[EncodedEntry | EntryRejection]:
    """Check the entries of one :class:`RecordSlice`: one result per entry, as
    :func:`~.registration.iter_registration_encoded` gives them.

    Raises :class:`SliceRefusedError` when the slice is not ``expected`` whole entries or
    holds anything the streaming parser would refuse.
    """
    # The same refusals as the streaming parser's reader and parser (DTDs and entity
    # declarations, UTF-8, processing instructions, XInclude), bounded by the slice size.
    try:
        check_prolog(data, XmlLimits(max_bytes=max(len(data), 1)))
        # Comments are dropped as the streaming parser drops them; without any, the
        # parser that keeps them is a little faster and gives the same tree.
        options = HARDENED_OPTIONS if b"<!--" in data else _PARSER_OPTIONS
        root = etree.fromstring(data, parser=etree.XMLParser(**options))
        check_markup(root)
    except (CodecError, etree.XMLSyntaxError, ValueError):
        raise SliceRefusedError("the slice does not parse as the streaming parser would") from None
    if root.tag != _SLICE or len(root.attrib) or not blank(root.text):
        raise SliceRefusedError("the slice is not whole entries")
    records = list(root)
    if len(records) != expected:
        raise SliceRefusedError("the slice holds another number of entries than counted")
    for record in records:
        if record.tag != RECORD or not blank(record.tail):
            raise SliceRefusedError("the slice holds something else than entries within limits")
    schema = slice_schema()
    validated = schema is not None and bool(schema.validate(root))
    results: list[EncodedEntry | EntryRejection] = []
    if validated:
        results.extend(_verbatim_records(data, root, limits))
    done = len(results)
    # Entries read verbatim are within the limits by their form (see _verbatim_records).
    too_big = _over_budget(limits)
    if any(too_big(record) for record in records[done:]):
        raise SliceRefusedError("the slice holds something else than entries within limits")
    results.extend(
        encode_record(record, position, validated=validated)
        for position, record in enumerate(records[done:], first_position + done)
    )
    return results


def _over_budget(limits: StreamLimits) -> etree.XPath:
    """:func:`~.registration.over_budget`, compiled once per thread."""
    key = (limits.max_depth, limits.max_entry_elements)
    cache: dict[tuple[int, int], etree.XPath] = _local.__dict__.setdefault("budgets", {})
    xpath = cache.get(key)
    if xpath is None:
        xpath = cache[key] = over_budget(*key)
    return xpath


# ------------------------------------------------------- entries read verbatim
#
# A validated slice whose entries are written plainly (no comment, CDATA, reference,
# attribute or prefix change in the envelope; each item exactly in its canonical form, see
# ``items.verbatim_item_end``) is read by one pattern per entry instead of element by
# element: the fields are the texts between the tags, the item's canonical bytes are its
# own bytes.  The patterns only admit what the tree path reads the same way (values of the
# forms registration.xsd fixes, without whitespace), and only entries the tree path would
# accept; at the first entry that does not match, the rest of the slice goes the tree way.

_RECORD_START: Final = re.compile(_WS + rb"<(?:(" + _NAME + rb"):)?Record>")
_DATE: Final = rb"([0-9]{4}-[0-9]{2}-[0-9]{2})"
_RECORD_FIELDS: Final = (
    (b"RecordIdentificationNumber", rb"([0-9A-Za-z_\-]{1,32})", False),
    (b"SegmentOfRegistrationDelete", rb"([12])", False),
    (b"IntegratedAddressNumber", rb"([0-9]{1,15})", False),
    (b"SpecificPersonalInformationCode", rb"(TM[0-9]{14})", False),
    (b"DataSetRecordKey", rb"([0-9A-Za-z_\-]{1,64})", False),
    (b"SPIMajorVersion", rb"([0-9]{1,3})", False),
    (b"PublicationDate", _DATE, False),
    (b"PublishedEndDate", _DATE, True),
    (b"AutomaticResponseDisabledFlag", rb"([01])", True),
)


@dataclass(frozen=True, slots=True)
class _RecordPatterns:
    head: re.Pattern[bytes]
    #: After an item: the container's and the entry's end tags.
    item_tail: re.Pattern[bytes]
    #: After the fields of a deletion: the entry's end tag.
    tail: re.Pattern[bytes]


_PATTERNS: Final[dict[bytes, _RecordPatterns]] = {}


def _record_patterns(prefix: bytes) -> _RecordPatterns:
    """The patterns of plainly written entries whose envelope elements use ``prefix``."""
    patterns = _PATTERNS.get(prefix)
    if patterns is None:
        p = re.escape(prefix + b":") if prefix else b""
        parts = [_WS, b"<", p, b"Record>", _WS]
        for name, value, optional in _RECORD_FIELDS:
            field = b"<" + p + name + b">" + value + b"</" + p + name + b">" + _WS
            parts.append(b"(?:" + field + b")?" if optional else field)
        parts.append(b"(?:(<" + p + b"SpecificPersonalInformation>)" + _WS + b")?")
        end = b"</" + p + b"Record>"
        patterns = _RecordPatterns(
            re.compile(b"".join(parts)),
            re.compile(_WS + b"</" + p + b"SpecificPersonalInformation>" + _WS + end),
            re.compile(end),
        )
        _PATTERNS[prefix] = patterns
    return patterns


#: How deep an entry read verbatim nests in its message (the Record at 3, then the item's
#: container and the item): never deeper than the streaming parser's limit allows.
_VERBATIM_ENTRY_DEPTH: Final = 4 + VERBATIM_DEPTH


def _verbatim_records(
    data: bytes, root: etree._Element, limits: StreamLimits
) -> list[EncodedEntry]:
    """The accepted entries at the start of a validated slice that are written plainly
    (see above), as :func:`~.registration.encode_record` gives them.

    They are within ``limits`` without the XPath of ``over_budget``: their depth is that of
    the patterns, and no more elements than ``<`` characters.
    """
    if limits.max_depth < _VERBATIM_ENTRY_DEPTH:
        return []
    start = data.find(b">") + 1  # the wrapper's start tag (its attribute values escape ">")
    found = _RECORD_START.match(data, start)
    if found is None:
        return []
    prefix = found.group(1) or b""
    if root.nsmap.get(prefix.decode("ascii") if prefix else None) != REGISTRATION_NAMESPACE:
        return []
    patterns = _record_patterns(prefix)
    entries: list[EncodedEntry] = []
    at = start
    while True:
        fields = patterns.head.match(data, at)
        if fields is None:
            return entries
        record_id, segment, atena, code, key, major, published, ended, flag, container = (
            fields.groups()
        )
        spec = ITEM_CODES.get(code.decode("ascii"))
        if spec is None or int(major) != spec.major_version:
            return entries
        try:
            publication = date.fromisoformat(published.decode("ascii"))
            end_date = None if ended is None else date.fromisoformat(ended.decode("ascii"))
        except ValueError:
            return entries
        if end_date is not None and end_date < publication:
            return entries
        content = None
        if segment == b"1":
            if container is None:
                return entries
            item_end = verbatim_item_end(spec.code, data, fields.end())
            if item_end < 0:
                return entries
            closed = patterns.item_tail.match(data, item_end)
            content = CANONICAL_DECLARATION + data[fields.end() : item_end]
        else:
            if container is not None:
                return entries
            closed = patterns.tail.match(data, fields.end())
        if closed is None or data.count(b"<", at, closed.end()) > limits.max_entry_elements:
            return entries
        entries.append(
            EncodedEntry(
                record_id=record_id.decode("ascii"),
                segment=Segment.REGISTRATION if segment == b"1" else Segment.DELETION,
                integrated_address_number=atena.decode("ascii"),
                item_code=spec.code,
                data_set_record_key=key.decode("ascii"),
                major_version=spec.major_version,
                publication_date=publication,
                published_end_date=end_date,
                content=content,
                manual_review=None if flag is None else flag == b"1",
            )
        )
        at = closed.end()


def warm_slices() -> None:
    """Compile the schemas a slice needs (process-pool initializer)."""
    slice_schema()
    lxml_schema(REGISTRATION_XSD)
    for spec in ITEM_CODES.values():
        lxml_schema(spec.xsd_file)


__all__ = [
    "RecordSlice",
    "SliceRefusedError",
    "SplitUnsureError",
    "encode_record_slice",
    "slice_schema",
    "split_registration",
    "warm_slices",
]
