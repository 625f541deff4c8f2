"""副本 registration messages in the shape of ``IF_DBM_20113_R01`` (DESIGN §3 flow 2, §5).

A message is a ``MessageHeader`` and a body list of ``Record`` entries; registrations
(SegmentOfRegistrationDelete ``1``) embed one item element, deletions (``2``) none.
The envelope (root, header, body layout) must be sound or the whole message is
refused with an exception. Each entry is then checked on its own — its fields against
``registration.xsd``, its item against the item's XSD, plus the rules XSD cannot say —
and a bad entry becomes an :class:`EntryRejection` naming its record id, so the core
system learns every problem of a batch at once (the gateway applies a batch whole or
not at all).

:func:`decode_registration` works on bytes in memory; :func:`iter_registration`
streams arbitrarily many entries through a hardened ``iterparse`` with constant
memory, yielding the header first and then one result per entry.
:func:`iter_registration_records` streams with the same checks but hands each entry
on as its own bytes (:class:`RawRecord`), for :func:`decode_record` to check in
another process: a bulk import splits the message once and validates in parallel.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, BinaryIO, Final, Generic, TypeAlias, TypeVar, cast

from lxml import etree

from .errors import CodecError, SchemaError, XmlForbiddenError, XmlLimitError, XmlStructureError
from .item_model import Item
from .item_schema import lxml_schema, schema_error, xmlschema_schema
from .item_stream import GuardedReader, hardened_iterparse, syntax_error
from .items import (
    ITEM_CODES,
    canonical_item_from_element,
    encode_item,
    item_code_of,
    item_from_element,
    item_to_element,
)
from .xmlsafe import HARDENED_OPTIONS, XmlLimits, check_markup, check_prolog, parse_xml

REGISTRATION_NAMESPACE: Final = "urn:chukan:dbm:IF_DBM_20113_R01:1"
MESSAGE_TYPE_ID: Final = "IF_DBM_20113_R01"
REGISTRATION_XSD: Final = "registration.xsd"
#: In-memory decoding: 32 MiB of message; deeper than root/body/record/item/group/leaf.
REGISTRATION_LIMITS: Final = XmlLimits(max_bytes=32 * 1024 * 1024, max_depth=16)

_NS = f"{{{REGISTRATION_NAMESPACE}}}"
#: The envelope's elements (Clark names); shared with :mod:`.registration_split`, whose
#: splitter reads a message's head with the streaming parser's own checks.
ROOT: Final = _NS + MESSAGE_TYPE_ID
HEADER: Final = _NS + "MessageHeader"
BODY: Final = _NS + "MessageBody"
RECORD: Final = _NS + "Record"
_ITEM_CONTAINER: Final = _NS + "SpecificPersonalInformation"
_RECORD_ID_FORM = re.compile(r"^[0-9A-Za-z_\-]{1,32}$")
_XML_WHITESPACE: Final = " \t\r\n"
_ROOT_WHERE: Final = "/" + MESSAGE_TYPE_ID
#: Entry-level locations are relative to the entry: ``/Record/...``.
_ITEM_WHERE: Final = "/Record/SpecificPersonalInformation"
_BODY_WHERE: Final = f"/{MESSAGE_TYPE_ID}/MessageBody"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds for :func:`iter_registration`; memory use depends on these, not on size.

    ``max_entry_bytes`` is measured in bytes handed to the parser while the entry is
    open, so it is exact to within one 32 KiB read.
    """

    max_bytes: int = 1024 * 1024 * 1024
    max_entry_bytes: int = 1024 * 1024
    max_entry_elements: int = 5_000
    max_depth: int = 16


DEFAULT_STREAM_LIMITS: Final = StreamLimits()


class MessageMode(enum.Enum):
    """MSGMode."""

    PRODUCTION = "0"  # 本番
    TEST = "1"  # テスト


class MessageResult(enum.Enum):
    """MSGResult; absent in requests, set in the gateway's answer."""

    ACCEPTED = "0"  # 受付
    REJECTED = "1"  # 形式エラーあり (entries named in the answer)
    SYSTEM_ERROR = "9"  # システムエラー


class Segment(enum.Enum):
    """SegmentOfRegistrationDelete: one list carries both operations."""

    REGISTRATION = "1"  # 登録: the entry embeds the item
    DELETION = "2"  # 削除: the entry has no item


class RejectionCode(enum.StrEnum):
    """Why an entry was rejected; the codec-error codes pass through unchanged."""

    SCHEMA_INVALID = "schema_invalid"  # entry fields or item content fail their XSD
    XML_STRUCTURE = "xml_structure"  # item root element or namespace is wrong
    ITEM_UNKNOWN = "item_unknown"  # SpecificPersonalInformationCode not in ITEM_CODES
    ITEM_MISSING = "item_missing"  # registration without an item
    ITEM_UNEXPECTED = "item_unexpected"  # deletion with an item
    VERSION_UNSUPPORTED = "version_unsupported"  # SPIMajorVersion is not the item's
    PERIOD_INVALID = "period_invalid"  # PublishedEndDate before PublicationDate


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """MessageHeader of ``IF_DBM_20113_R01``."""

    message_id: str
    mode: MessageMode
    source_system_id: str
    destination_system_id: str
    reception_number: str | None = None
    result: MessageResult | None = None
    message_type_id: str = MESSAGE_TYPE_ID


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """One accepted list entry; ``item`` is set exactly for registrations."""

    record_id: str
    segment: Segment
    #: 団体内統合宛名番号 (up to 15 digits, leading zeros kept).
    integrated_address_number: str
    #: 特定個人情報名 code (a key of ``ITEM_CODES``).
    item_code: str
    data_set_record_key: str
    major_version: int
    publication_date: date
    published_end_date: date | None = None
    item: Item | None = None
    #: AutomaticResponseDisabledFlag (自動応答不可フラグ): set the person's manual-review flag
    #: for this item with the entry (True/False); None: the flag stays as it is.
    manual_review: bool | None = None

    @property
    def item_xml(self) -> bytes | None:
        """The item's canonical UTF-8 bytes (``encode_item``), to store and digest.

        Computed on each access (a re-encoding and validation, some tens of µs): the
        same bytes whatever prefixes, spacing or lexical forms the sender used.
        """
        return None if self.item is None else encode_item(self.item)


@dataclass(frozen=True, slots=True)
class EncodedEntry:
    """An accepted entry whose item is already in canonical bytes (bulk import).

    The same checks as for a :class:`RegistrationEntry`; ``content`` is exactly what
    ``RegistrationEntry.item_xml`` would give, written without building the typed item.
    """

    record_id: str
    segment: Segment
    integrated_address_number: str
    item_code: str
    data_set_record_key: str
    major_version: int
    publication_date: date
    published_end_date: date | None = None
    content: bytes | None = None
    #: AutomaticResponseDisabledFlag, as in :class:`RegistrationEntry`.
    manual_review: bool | None = None


@dataclass(frozen=True, slots=True)
class EntryRejection:
    """One refused entry: its record id (when readable), a code and a value-free reason."""

    record_id: str | None
    code: str
    message: str
    #: 1-based position of the entry in the message body.
    position: int
    where: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrationMessage:
    """A decoded message: header, accepted entries and rejected ones (both in order)."""

    header: MessageHeader
    entries: tuple[RegistrationEntry, ...]
    rejected: tuple[EntryRejection, ...] = ()


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One entry of a message as standalone XML bytes, not yet checked (see decode_record)."""

    #: 1-based position of the entry in the message body.
    position: int
    data: bytes


#: What :func:`iter_registration` yields: the header first, then one per entry.
StreamItem: TypeAlias = MessageHeader | RegistrationEntry | EntryRejection
#: What :func:`iter_registration_records` yields: the header first, then one per entry.
RawStreamItem: TypeAlias = MessageHeader | RawRecord
#: What :func:`iter_registration_encoded` yields: the header first, then one per entry.
EncodedStreamItem: TypeAlias = MessageHeader | EncodedEntry | EntryRejection
_T = TypeVar("_T")


# ------------------------------------------------------------- decoding parts


class _Fields:
    """The child elements of a header or entry by local name (the XSD makes them unique)."""

    __slots__ = ("_children",)

    def __init__(self, parent: etree._Element) -> None:
        self._children = {child.tag: child for child in parent.iterchildren("*")}

    def raw(self, local: str) -> str | None:
        child = self._children.get(_NS + local)
        return None if child is None else (child.text or "")

    def text(self, local: str) -> str:
        return (self.raw(local) or "").strip(_XML_WHITESPACE)

    def element(self, local: str) -> etree._Element | None:
        return self._children.get(_NS + local)


def _readable_record_id(fields: _Fields) -> str | None:
    text = fields.raw("RecordIdentificationNumber")
    return text if text is not None and _RECORD_ID_FORM.match(text) else None


def _reject(
    record_id: str | None, code: str, message: str, position: int, where: str | None
) -> EntryRejection:
    return EntryRejection(record_id, str(code), message, position, where)


_I = TypeVar("_I")


@dataclass(frozen=True, slots=True)
class _Checked(Generic[_I]):
    """The fields of an entry that passed every check, its item as ``item_of`` made it."""

    fields: _Fields
    record_id: str
    segment: Segment
    item_code: str
    major_version: int
    publication_date: date
    published_end_date: date | None
    item: _I | None
    manual_review: bool | None = None


def _check_record(
    record: etree._Element,
    position: int,
    item_of: Callable[[str, etree._Element], _I],
    *,
    validated: bool = False,
) -> _Checked[_I] | EntryRejection:
    """Check one entry on its own; every problem becomes a rejection, never an exception.

    ``item_of(code, element)`` validates the embedded item and returns its value (raising
    a :class:`CodecError` for a bad one): the typed item, or its canonical bytes.
    ``validated``: the entry already passed ``registration.xsd`` (a whole slice was
    validated at once, see :mod:`.registration_split`), so it is not validated again.
    """
    fields = _Fields(record)
    if not validated:
        schema = lxml_schema(REGISTRATION_XSD)
        if not schema.validate(record):
            error = schema_error(schema, "registration entry", record)
            return _reject(
                _readable_record_id(fields), error.code, error.message, position, error.where
            )
    record_id = fields.raw("RecordIdentificationNumber") or ""  # the schema fixed its form

    segment = Segment(fields.text("SegmentOfRegistrationDelete"))
    code = fields.text("SpecificPersonalInformationCode")
    publication = date.fromisoformat(fields.text("PublicationDate"))
    end_text = fields.raw("PublishedEndDate")
    published_end = None if end_text is None else date.fromisoformat(end_text.strip())
    major_version = int(fields.text("SPIMajorVersion"))
    flag = fields.raw("AutomaticResponseDisabledFlag")
    manual_review = None if flag is None else flag.strip(_XML_WHITESPACE) == "1"
    container = fields.element("SpecificPersonalInformation")

    spec = ITEM_CODES.get(code)
    if spec is None:
        return _reject(
            record_id,
            RejectionCode.ITEM_UNKNOWN,
            "unknown 特定個人情報名 code",
            position,
            "/Record/SpecificPersonalInformationCode",
        )
    if major_version != spec.major_version:
        return _reject(
            record_id,
            RejectionCode.VERSION_UNSUPPORTED,
            f"SPIMajorVersion of {code} must be {spec.major_version}",
            position,
            "/Record/SPIMajorVersion",
        )
    if published_end is not None and published_end < publication:
        return _reject(
            record_id,
            RejectionCode.PERIOD_INVALID,
            "PublishedEndDate is before PublicationDate",
            position,
            "/Record/PublishedEndDate",
        )
    item: _I | None = None
    if segment is Segment.REGISTRATION:
        if container is None:
            return _reject(
                record_id,
                RejectionCode.ITEM_MISSING,
                "a registration must embed its item",
                position,
                _ITEM_WHERE,
            )
        embedded = next(container.iterchildren("*"))
        try:
            item = item_of(code, embedded)
        except CodecError as exc:
            return _reject(
                record_id,
                exc.code,
                exc.message,
                position,
                _ITEM_WHERE + ("" if exc.where in (None, "/") else str(exc.where)),
            )
    elif container is not None:
        return _reject(
            record_id,
            RejectionCode.ITEM_UNEXPECTED,
            "a deletion must not embed an item",
            position,
            _ITEM_WHERE,
        )
    return _Checked(
        fields,
        record_id,
        segment,
        code,
        major_version,
        publication,
        published_end,
        item,
        manual_review,
    )


def _decode_record(record: etree._Element, position: int) -> RegistrationEntry | EntryRejection:
    """Check one entry on its own, its item as a typed value."""
    checked = _check_record(record, position, item_from_element)
    if isinstance(checked, EntryRejection):
        return checked
    return RegistrationEntry(
        record_id=checked.record_id,
        segment=checked.segment,
        integrated_address_number=checked.fields.text("IntegratedAddressNumber"),
        item_code=checked.item_code,
        data_set_record_key=checked.fields.text("DataSetRecordKey"),
        major_version=checked.major_version,
        publication_date=checked.publication_date,
        published_end_date=checked.published_end_date,
        item=checked.item,
        manual_review=checked.manual_review,
    )


def _structure(message: str, where: str) -> XmlStructureError:
    return XmlStructureError(message, where=where)


def _check_plain(element: etree._Element, where: str) -> None:
    """Envelope elements carry neither attributes nor character data."""
    if len(element.attrib):
        raise _structure("envelope elements take no attributes", where)
    if not blank(element.text):
        raise _structure("character data is not allowed here", where)


# ------------------------------------ shared with registration_split
#
# Its splitter reads a message's head and its workers check a slice's entries with these,
# so that the split import refuses and accepts exactly what the streaming parser does.


def encode_record(
    record: etree._Element, position: int, *, validated: bool = False
) -> EncodedEntry | EntryRejection:
    """Check one entry on its own, its item as canonical bytes (no typed value is built).

    Shared: :mod:`.registration_split`'s workers check a slice's entries with it.
    ``validated``: the entry and its item already passed ``registration.xsd`` with the item
    XSDs (a whole slice at once), so neither is validated again.
    """
    item_of = _validated_item if validated else canonical_item_from_element
    checked = _check_record(record, position, item_of, validated=validated)
    if isinstance(checked, EntryRejection):
        return checked
    return EncodedEntry(
        record_id=checked.record_id,
        segment=checked.segment,
        integrated_address_number=checked.fields.text("IntegratedAddressNumber"),
        item_code=checked.item_code,
        data_set_record_key=checked.fields.text("DataSetRecordKey"),
        major_version=checked.major_version,
        publication_date=checked.publication_date,
        published_end_date=checked.published_end_date,
        content=checked.item,
        manual_review=checked.manual_review,
    )


def blank(text: str | None) -> bool:
    """No text or only XML whitespace (shared: the splitter holds the envelope to the same rule)."""
    return text is None or not text.strip(_XML_WHITESPACE)


def _validated_item(code: str, element: etree._Element) -> bytes:
    """The canonical bytes of an item its XSD already validated."""
    return canonical_item_from_element(code, element, validated=True)


def decode_header(element: etree._Element) -> MessageHeader:
    """The header, checked against ``registration.xsd`` (shared: the splitter decodes the head
    with it)."""
    schema = lxml_schema(REGISTRATION_XSD)
    if not schema.validate(element):
        raise schema_error(schema, "message header", element)
    fields = _Fields(element)
    reception = fields.raw("ReceptionNumber")
    result = fields.raw("MSGResult")
    return MessageHeader(
        message_id=fields.text("MSGID"),
        message_type_id=fields.text("MSGTypeID"),
        mode=MessageMode(fields.text("MSGMode")),
        source_system_id=fields.text("SourceSystemID"),
        destination_system_id=fields.text("DestinationSystemID"),
        reception_number=reception,
        result=None if result is None else MessageResult(result),
    )


def over_budget(max_depth: int, max_elements: int) -> etree.XPath:
    """True for an entry (at depth 3) deeper than ``max_depth`` or with too many elements.

    Shared: a slice's entries are held to the streaming parser's limits with it.

    One XPath evaluated in libxml2, so no Python object per element; compiled once per
    stream (XPath objects are not shared between threads).
    """
    steps = max(max_depth - 2, 1)
    deeper = "/".join(["*"] * steps)
    return etree.XPath(f"count(descendant::*) > {int(max_elements)} or boolean({deeper})")


class StreamState:
    """Where the stream is in the envelope (shared: the splitter reads the head with it)."""

    __slots__ = ("body", "in_body", "in_header", "position", "root")

    def __init__(self) -> None:
        self.root: etree._Element | None = None
        self.body: etree._Element | None = None
        self.in_header = False
        self.in_body = False
        self.position = 0


def on_root_start(element: etree._Element) -> None:
    """Check the root element as it starts (shared: the splitter checks the head with it)."""
    if element.getparent() is not None or element.tag != ROOT:
        raise _structure(f"the root element must be {MESSAGE_TYPE_ID} in its namespace", "/")
    if getattr(element.getroottree().docinfo, "doctype", ""):
        raise XmlForbiddenError("DTDs and entity declarations are not accepted")
    if len(element.attrib):
        raise _structure("envelope elements take no attributes", _ROOT_WHERE)


def on_part_start(element: etree._Element, state: StreamState, reader: GuardedReader) -> None:
    """Check the header or the body as it starts (shared: the splitter checks the head with it)."""
    # iterparse builds the tree ahead of the events it reports, so only what precedes
    # ``element`` (parent text, previous siblings and their tails) is looked at here.
    root = state.root
    if root is None or element.getparent() is not root:
        raise _structure("the message must hold MessageHeader then MessageBody", _ROOT_WHERE)
    previous = element.getprevious()
    if not blank(root.text) or (previous is not None and not blank(previous.tail)):
        raise _structure("character data is not allowed here", _ROOT_WHERE)
    if element.tag == HEADER and previous is None:
        state.in_header = True
        reader.mark()
    elif (
        element.tag == BODY
        and previous is not None
        and previous.tag == HEADER
        and previous.getprevious() is None
    ):
        state.in_body = True
        state.body = element
        if len(element.attrib):
            raise _structure("envelope elements take no attributes", _BODY_WHERE)
    else:
        raise _structure("the message must hold MessageHeader then MessageBody", _ROOT_WHERE)


# ----------------------------------------------------------- whole message


def decode_registration(
    data: bytes, limits: XmlLimits = REGISTRATION_LIMITS
) -> RegistrationMessage:
    """Decode a whole message; a broken envelope raises, bad entries are listed.

    Raises an ``XmlError`` subclass for unacceptable XML or envelope layout and
    :class:`SchemaError` for an invalid header.
    """
    root = parse_xml(data, limits)
    if root.tag != ROOT:
        raise _structure(f"the root element must be {MESSAGE_TYPE_ID} in its namespace", "/")
    _check_plain(root, _ROOT_WHERE)
    parts = list(root.iterchildren("*"))
    if [part.tag for part in parts] != [HEADER, BODY] or any(
        not blank(part.tail) for part in parts
    ):
        raise _structure("the message must hold MessageHeader then MessageBody", _ROOT_WHERE)
    header = decode_header(parts[0])
    body = parts[1]
    _check_plain(body, _BODY_WHERE)
    entries: list[RegistrationEntry] = []
    rejected: list[EntryRejection] = []
    position = 0
    for record in body.iterchildren("*"):
        position += 1
        if record.tag != RECORD or not blank(record.tail):
            raise _structure(
                "MessageBody may only hold Record elements", f"{_BODY_WHERE}/*[{position}]"
            )
        result = _decode_record(record, position)
        if isinstance(result, RegistrationEntry):
            entries.append(result)
        else:
            rejected.append(result)
    if position == 0:
        raise _structure("MessageBody holds no Record", _BODY_WHERE)
    return RegistrationMessage(header, tuple(entries), tuple(rejected))


# ---------------------------------------------------------------- streaming


def iter_registration(
    source: BinaryIO | str | os.PathLike[str], limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> Generator[StreamItem, None, None]:
    """Stream a message: the :class:`MessageHeader`, then one result per entry.

    Memory stays bounded by ``limits`` however many entries there are: each entry is
    decoded and then cleared from the tree. A broken envelope, a limit breach or
    hostile markup raises (possibly after some entries were yielded — callers that
    apply batches whole must treat that as a refusal of the batch).
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield from _stream(stream, limits, _decode_record)
    else:
        yield from _stream(source, limits, _decode_record)


def iter_registration_records(
    source: BinaryIO | str | os.PathLike[str], limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> Generator[RawStreamItem, None, None]:
    """Stream a message like :func:`iter_registration`, entries left undecoded.

    The envelope, the limits and hostile markup are checked exactly as there; each
    entry is yielded as a :class:`RawRecord` (its element serialised with the
    namespace declarations it needs) for :func:`decode_record`, which gives the same
    result :func:`iter_registration` would have given for it.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield from _stream(stream, limits, _raw_record)
    else:
        yield from _stream(source, limits, _raw_record)


def _raw_record(record: etree._Element, position: int) -> RawRecord:
    return RawRecord(position, etree.tostring(record, encoding="UTF-8", with_tail=False))


def decode_record(
    data: bytes, position: int, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> RegistrationEntry | EntryRejection:
    """Check one entry given as its own XML (a :class:`RawRecord`'s ``data``).

    Entry problems become an :class:`EntryRejection` as in :func:`iter_registration`;
    bytes that are not one ``Record`` element of the message namespace raise.
    """
    xml_limits = XmlLimits(max_bytes=2 * limits.max_entry_bytes, max_depth=limits.max_depth)
    root = parse_xml(data, xml_limits)
    if root.tag != RECORD:
        raise _structure("an entry must be one Record element in the message namespace", "/")
    return _decode_record(root, position)


def iter_registration_encoded(
    source: BinaryIO, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> Generator[EncodedStreamItem, None, None]:
    """Stream a message like :func:`iter_registration`, items as canonical bytes.

    The same checks and results entry by entry, an :class:`EncodedEntry` where
    :func:`iter_registration` gives a :class:`RegistrationEntry` (for a bulk import,
    which stores the canonical bytes and never needs the typed item).
    """
    yield from _stream(source, limits, encode_record)


_BATCH_START: Final = b"<RecordBatch>"
_BATCH_END: Final = b"</RecordBatch>"


def record_batch(records: Iterable[bytes]) -> bytes:
    """Entries split off a message (:class:`RawRecord` data) as one document for
    :func:`encode_record_batch`: parsed once there, not once per entry."""
    return b"".join((_BATCH_START, *records, _BATCH_END))


def _parse_batch(data: bytes, max_depth: int) -> etree._Element:
    """:func:`parse_xml` for a batch document, its depth checked by one XPath in libxml2
    instead of a walk over every element in Python."""
    check_prolog(data, XmlLimits(max_bytes=max(len(data), 1)))
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(**HARDENED_OPTIONS))
    except etree.XMLSyntaxError as exc:
        raise syntax_error(exc) from None
    check_markup(root)
    if _too_deep(max_depth)(root):
        raise XmlLimitError(f"nesting deeper than {max_depth} levels", where="/")
    return root


def _too_deep(max_depth: int) -> etree.XPath:
    """True for a tree with an element deeper than ``max_depth`` (the root is at 1)."""
    return etree.XPath("boolean(" + "/".join(["*"] * max(max_depth, 1)) + ")")


def encode_record_batch(
    data: bytes, first_position: int, limits: StreamLimits = DEFAULT_STREAM_LIMITS
) -> list[EncodedEntry | EntryRejection]:
    """Check consecutive entries given as one :func:`record_batch` document.

    One result per entry, as :func:`decode_record` would give for each (with the item as
    canonical bytes); ``first_position`` is the position of the first entry in the
    message. Bytes that are not such a batch of ``Record`` elements raise. The batch
    document is parsed hardened like any other, bounded by the entries' limits.
    """
    root = _parse_batch(data, limits.max_depth + 1)
    if root.tag != "RecordBatch" or len(root.attrib) or not blank(root.text):
        raise _structure("a batch must be one RecordBatch element of Record elements", "/")
    results: list[EncodedEntry | EntryRejection] = []
    position = first_position
    for record in root.iterchildren():
        if record.tag != RECORD or not blank(record.tail):
            raise _structure("an entry must be one Record element in the message namespace", "/")
        results.append(encode_record(record, position))
        position += 1
    return results


#: Only envelope elements produce events; an entry's inside is looked at when it ends.
_STREAM_TAGS: Final = (ROOT, HEADER, BODY, RECORD)


def _stream(
    stream: BinaryIO,
    limits: StreamLimits,
    on_record: Callable[[etree._Element, int], _T],
) -> Iterator[MessageHeader | _T]:
    # The reader refuses any stretch of more than max_entry_bytes between two marks;
    # marks are set at the header and at every entry start, so each part is bounded
    # while it is read, before its element count and depth are checked at its end.
    reader = GuardedReader(stream, limits.max_bytes, part_bytes=limits.max_entry_bytes)
    state = StreamState()
    too_big = over_budget(limits.max_depth, limits.max_entry_elements)
    try:
        for event, element in hardened_iterparse(reader, tags=_STREAM_TAGS):
            tag = element.tag
            if event == "start":
                if tag == RECORD:
                    _on_record_start(element, state, reader)
                elif state.root is None:
                    on_root_start(element)
                    state.root = element
                else:
                    on_part_start(element, state, reader)
            elif tag == RECORD:
                if too_big(element):
                    raise _budget_error(element, state.position, limits)
                result = on_record(element, state.position)
                element.clear(keep_tail=True)
                yield result
            elif tag == HEADER:
                state.in_header = False
                header = decode_header(element)
                element.clear(keep_tail=True)
                yield header
            elif tag == BODY:
                _end_of_body(element, state)
            else:
                _end_of_root(element, state)
    except etree.XMLSyntaxError as exc:
        raise syntax_error(exc) from None
    if state.root is None:
        raise _structure(f"the root element must be {MESSAGE_TYPE_ID} in its namespace", "/")


def _budget_error(record: etree._Element, position: int, limits: StreamLimits) -> XmlLimitError:
    where = f"{_BODY_WHERE}/Record[{position}]"
    if over_budget(limits.max_depth, 2**62)(record):  # error path only
        return XmlLimitError(f"nesting deeper than {limits.max_depth} levels", where=where)
    return XmlLimitError(f"entry holds more than {limits.max_entry_elements} elements", where=where)


def _on_record_start(element: etree._Element, state: StreamState, reader: GuardedReader) -> None:
    state.position += 1
    body = state.body
    if not state.in_body or body is None or element.getparent() is not body:
        raise _structure("Record is only allowed in MessageBody", _BODY_WHERE)
    if not blank(body.text):
        raise _structure("character data is not allowed here", _BODY_WHERE)
    # Entries already decoded (and cleared) are dropped here, once their tails are known;
    # anything else before this entry is not allowed in the body.
    previous = element.getprevious()
    while previous is not None:
        if previous.tag != RECORD:
            raise _structure("MessageBody may only hold Record elements", _BODY_WHERE)
        if not blank(previous.tail):
            raise _structure("character data is not allowed here", _BODY_WHERE)
        del body[0]
        previous = element.getprevious()
    reader.mark()


def _end_of_body(body: etree._Element, state: StreamState) -> None:
    state.in_body = False
    for child in body:  # the last entry, or anything after it
        if child.tag != RECORD:
            raise _structure("MessageBody may only hold Record elements", _BODY_WHERE)
        if not blank(child.tail):
            raise _structure("character data is not allowed here", _BODY_WHERE)
    if state.position == 0:
        raise _structure("MessageBody holds no Record", _BODY_WHERE)


def _end_of_root(root: etree._Element, state: StreamState) -> None:
    if [child.tag for child in root.iterchildren()] != [HEADER, BODY]:
        raise _structure("the message must hold MessageHeader then MessageBody", _ROOT_WHERE)
    if not blank(root[-1].tail):
        raise _structure("character data is not allowed here", _ROOT_WHERE)


# ------------------------------------------------------------------ encoding


def _sub(parent: etree._Element, local: str, text: str) -> None:
    etree.SubElement(parent, _NS + local).text = text


def _record_element(body: etree._Element, entry: RegistrationEntry, where: str) -> None:
    if not isinstance(cast(object, entry), RegistrationEntry):
        raise SchemaError("expected a RegistrationEntry", where=where)
    if entry.segment is Segment.REGISTRATION and entry.item is None:
        raise SchemaError("a registration must carry its item", where=where)
    if entry.segment is Segment.DELETION and entry.item is not None:
        raise SchemaError("a deletion must not carry an item", where=where)
    if entry.item is not None and item_code_of(entry.item) != entry.item_code:
        raise SchemaError(
            "the item does not match SpecificPersonalInformationCode",
            where=where + "/SpecificPersonalInformation",
        )
    record = etree.SubElement(body, RECORD)
    _sub(record, "RecordIdentificationNumber", entry.record_id)
    _sub(record, "SegmentOfRegistrationDelete", entry.segment.value)
    _sub(record, "IntegratedAddressNumber", entry.integrated_address_number)
    _sub(record, "SpecificPersonalInformationCode", entry.item_code)
    _sub(record, "DataSetRecordKey", entry.data_set_record_key)
    _sub(record, "SPIMajorVersion", str(entry.major_version))
    _sub(record, "PublicationDate", entry.publication_date.isoformat())
    if entry.published_end_date is not None:
        _sub(record, "PublishedEndDate", entry.published_end_date.isoformat())
    if entry.manual_review is not None:
        if not isinstance(cast(object, entry.manual_review), bool):
            raise SchemaError("manual_review must be a bool or None", where=where)
        _sub(record, "AutomaticResponseDisabledFlag", "1" if entry.manual_review else "0")
    if entry.item is not None:
        container = etree.SubElement(record, _ITEM_CONTAINER)
        try:
            container.append(item_to_element(entry.item))
        except CodecError as exc:
            exc.where = f"{where}/SpecificPersonalInformation{exc.where or ''}"
            raise


def encode_registration(message: RegistrationMessage) -> bytes:
    """Encode header and entries as UTF-8 XML (``rejected`` is not part of the wire form).

    The output is validated against ``registration.xsd`` and every item against its
    own XSD; anything invalid raises :class:`SchemaError` instead of being written.
    """
    return encode_registration_parts(message.header, message.entries)


def encode_registration_parts(header: MessageHeader, entries: Iterable[RegistrationEntry]) -> bytes:
    """Like :func:`encode_registration`, from a header and any iterable of entries."""
    root = etree.Element(ROOT, nsmap={"r": REGISTRATION_NAMESPACE})
    head = etree.SubElement(root, HEADER)
    _sub(head, "MSGID", header.message_id)
    _sub(head, "MSGTypeID", header.message_type_id)
    _sub(head, "MSGMode", header.mode.value)
    _sub(head, "SourceSystemID", header.source_system_id)
    _sub(head, "DestinationSystemID", header.destination_system_id)
    if header.reception_number is not None:
        _sub(head, "ReceptionNumber", header.reception_number)
    if header.result is not None:
        _sub(head, "MSGResult", header.result.value)
    body = etree.SubElement(root, BODY)
    for position, entry in enumerate(entries, start=1):
        _record_element(body, entry, f"/{MESSAGE_TYPE_ID}/MessageBody/Record[{position}]")
    schema = lxml_schema(REGISTRATION_XSD)
    if not schema.validate(root):
        raise schema_error(schema, "registration message", root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def registration_xmlschema() -> Any:
    """The xmlschema schema of the message (same XSD file as the libxml2 validator)."""
    return xmlschema_schema(REGISTRATION_XSD)
