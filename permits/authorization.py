"""The authorization list (照会許可照合リスト) and its lookups, as pure code.

The list says which requester agency may query which provider agency for which
特定個人情報 under which 事務手続き and legal basis (命令第2条の表 項).  The
hub checks it before issuing a permit, and every gateway keeps a signed copy to
check outgoing queries before they leave (DESIGN §3 flows 3–4).

Formats: UTF-8 CSV (for operators), XML validated by ``authorization_list.xsd``
(for distribution) and a signed XML document wrapping the list bytes with a
detached Ed25519 signature (what the hub distributes and gateways verify).
Every parse error names the 1-based data row and the field.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any, Final, cast

from lxml import etree

from chukan.codecs.catalog import (
    AGENCY_CODE_PATTERN,
    BUSINESS_CODE_PATTERN,
    ITEM_CODE_PATTERN,
    PROCEDURE_CODE_PATTERN,
)
from chukan.codecs.errors import CodecError
from chukan.codecs.xmlsafe import XmlLimits, parse_xml
from chukan.keys import SIGNATURE_ALGORITHM, PublicSigningKey, SignatureError, SigningKeyPair

from .errors import (
    AuthorizationListError,
    ListExpiredError,
    ListSignatureError,
    NotAuthorizedError,
)

LIST_NAMESPACE: Final = "urn:chukan:permits:authorization-list:1"
SIGNED_LIST_NAMESPACE: Final = "urn:chukan:permits:signed-authorization-list:1"
#: Prefix of the signed bytes, so a hub signature over a list can never pass for
#: a signature over anything else the same key signs (permits, checkpoints).
LIST_SIGNATURE_CONTEXT: Final = b"chukan.authorization-list.v1\x00"

CSV_COLUMNS: Final = (
    "requester",
    "provider",
    "business_code",
    "procedure_code",
    "item_code",
    "legal_basis",
    "valid_from",
    "valid_to",
    "note",
)
#: Upper bound of a list document; its base64 in the signed document stays below
#: libxml2's 10 MB text-node limit.
MAX_LIST_BYTES: Final = 6 * 1024 * 1024
MAX_SIGNED_LIST_BYTES: Final = MAX_LIST_BYTES * 4 // 3 + 4096
MAX_LEGAL_BASIS: Final = 999
MAX_VERSION: Final = 2**31 - 1
MAX_NOTE_CHARS: Final = 200
ED25519_SIGNATURE_BYTES: Final = 64
_MAX_KEY_ID_CHARS: Final = 200

_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UTC_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")
_LEGAL_BASIS_TEXT = re.compile(r"[1-9][0-9]{0,2}")
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,9}")
_B64URL_TEXT = re.compile(r"[A-Za-z0-9_-]*")
# Control characters, surrogates and non-characters break CSV/XML round trips; a
# leading formula character would make the note live in an operator's spreadsheet.
_NOTE_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NOTE_FORMULA_START = ("=", "+", "-", "@")

_CODE_RULES: Final[Mapping[str, tuple[re.Pattern[str], str]]] = {
    "requester": (AGENCY_CODE_PATTERN, "a 6-digit 団体コード or a 16-digit 機関コード"),
    "provider": (AGENCY_CODE_PATTERN, "a 6-digit 団体コード or a 16-digit 機関コード"),
    "business_code": (BUSINESS_CODE_PATTERN, "JM followed by 14 digits"),
    "procedure_code": (PROCEDURE_CODE_PATTERN, "JT followed by 14 digits"),
    "item_code": (ITEM_CODE_PATTERN, "TM followed by 14 digits"),
}


def code_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid agency/事務/手続き/item code or 項, or None if it is.

    Shared by list rows and permits so both refuse exactly the same shapes.
    """
    if name == "legal_basis":
        if type(value) is not int or not 1 <= value <= MAX_LEGAL_BASIS:
            return f"legal_basis must be an integer 項 number from 1 to {MAX_LEGAL_BASIS}"
        return None
    pattern, shape = _CODE_RULES[name]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        return f"{name} must be {shape}"
    return None


def decode_b64url_strict(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or None: no padding, no stray bits or bytes.

    ``base64`` alone skips foreign characters and ignores trailing bits, which
    would let several texts decode to the same bytes.
    """
    if _B64URL_TEXT.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        return None
    return raw


def format_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; fractions only when present."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def require_aware(name: str, moment: datetime) -> None:
    """Naive datetimes are a programming error: refuse them loudly, never guess a zone."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise TypeError(f"{name} must be a timezone-aware datetime")


# -- rows and the list ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorizationRow:
    """One row: ``requester`` may ask ``provider`` for ``item_code`` under this 手続き and 項.

    ``valid_to`` is the last day the row applies (inclusive); None means open-ended.
    """

    requester: str
    provider: str
    business_code: str
    procedure_code: str
    item_code: str
    legal_basis: int
    valid_from: date
    valid_to: date | None
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("requester", "provider", "business_code", "procedure_code", "item_code"):
            problem = code_problem(name, getattr(self, name))
            if problem is not None:
                raise AuthorizationListError(problem, field=name)
        problem = code_problem("legal_basis", self.legal_basis)
        if problem is not None:
            raise AuthorizationListError(problem, field="legal_basis")
        if self.requester == self.provider:
            raise AuthorizationListError(
                "requester and provider must be different agencies", field="provider"
            )
        if not isinstance(self.valid_from, date) or isinstance(self.valid_from, datetime):
            raise AuthorizationListError("valid_from must be a date", field="valid_from")
        if self.valid_to is not None:
            if not isinstance(self.valid_to, date) or isinstance(self.valid_to, datetime):
                raise AuthorizationListError("valid_to must be a date or empty", field="valid_to")
            if self.valid_to < self.valid_from:
                raise AuthorizationListError("valid_to is before valid_from", field="valid_to")
        if not isinstance(self.note, str):
            raise AuthorizationListError("note must be text", field="note")
        if len(self.note) > MAX_NOTE_CHARS:
            raise AuthorizationListError(
                f"note is longer than {MAX_NOTE_CHARS} characters", field="note"
            )
        if _NOTE_FORBIDDEN.search(self.note) or self.note.startswith(_NOTE_FORMULA_START):
            raise AuthorizationListError(
                "note must not contain control characters or start with = + - @", field="note"
            )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The lookup key: (requester, provider, procedure_code, item_code)."""
        return (self.requester, self.provider, self.procedure_code, self.item_code)

    def valid_on(self, day: date) -> bool:
        """Whether the row applies on ``day`` (both ends inclusive)."""
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)

    def overlaps(self, other: AuthorizationRow) -> bool:
        """Whether the validity periods of two rows share at least one day."""
        mine = self.valid_to or date.max
        theirs = other.valid_to or date.max
        return self.valid_from <= theirs and other.valid_from <= mine


_Key = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class AuthorizationList:
    """A versioned list with its validity; indexed once so each lookup is a dict hit.

    Identical duplicate rows, and rows of the same key whose validity periods
    overlap, are refused: a lookup must have at most one answer.
    """

    rows: tuple[AuthorizationRow, ...]
    version: int
    issued_at: datetime
    expires_at: datetime
    _index: dict[_Key, tuple[AuthorizationRow, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.version) is not int or not 1 <= self.version <= MAX_VERSION:
            raise AuthorizationListError(
                f"version must be an integer from 1 to {MAX_VERSION}", field="version"
            )
        for name in ("issued_at", "expires_at"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise AuthorizationListError(
                    f"{name} must be a timezone-aware datetime", field=name
                )
            object.__setattr__(self, name, moment.astimezone(UTC))
        if self.expires_at <= self.issued_at:
            raise AuthorizationListError("expires_at must be after issued_at", field="expires_at")
        rows = tuple(self.rows)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_index", _build_index(rows))

    def find(
        self, requester: str, provider: str, procedure_code: str, item_code: str, on: date
    ) -> AuthorizationRow | None:
        """The row authorizing this query on day ``on``, or None."""
        if isinstance(on, datetime) or not isinstance(on, date):
            raise TypeError("on must be a date (the caller decides the calendar day)")
        for row in self._index.get((requester, provider, procedure_code, item_code), ()):
            if row.valid_on(on):
                return row
        return None

    def check(
        self, requester: str, provider: str, procedure_code: str, item_code: str, on: date
    ) -> AuthorizationRow:
        """Like :meth:`find` but raises :class:`NotAuthorizedError` when nothing applies."""
        row = self.find(requester, provider, procedure_code, item_code, on)
        if row is None:
            raise NotAuthorizedError(
                f"{requester} may not query {provider} for {item_code} "
                f"under {procedure_code} on {on.isoformat()}"
            )
        return row

    def rows_for_provider(self, agency: str) -> tuple[AuthorizationRow, ...]:
        """Rows where ``agency`` provides (what others may ask it for)."""
        return tuple(row for row in self.rows if row.provider == agency)

    def rows_for_requester(self, agency: str) -> tuple[AuthorizationRow, ...]:
        """Rows where ``agency`` queries (what it may ask others for)."""
        return tuple(row for row in self.rows if row.requester == agency)

    def is_expired(self, now: datetime) -> bool:
        """A list at or past ``expires_at`` must no longer be used."""
        require_aware("now", now)
        return now >= self.expires_at


def _build_index(rows: tuple[AuthorizationRow, ...]) -> dict[_Key, tuple[AuthorizationRow, ...]]:
    positions: dict[_Key, list[tuple[int, AuthorizationRow]]] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, AuthorizationRow):
            raise AuthorizationListError("not an AuthorizationRow", row=number)
        same_key = positions.setdefault(row.key, [])
        for earlier_number, earlier in same_key:
            if earlier == row:
                raise AuthorizationListError(f"duplicates row {earlier_number}", row=number)
            if earlier.overlaps(row):
                raise AuthorizationListError(
                    f"validity overlaps row {earlier_number} with the same "
                    "requester, provider, procedure and item",
                    row=number,
                    field="valid_from",
                )
        same_key.append((number, row))
    return {key: tuple(row for _, row in entries) for key, entries in positions.items()}


# -- shared field parsing ---------------------------------------------------------------


def _parse_date(text: str, *, row: int, name: str) -> date:
    if _DATE_TEXT.fullmatch(text) is None:
        raise AuthorizationListError("must be a date YYYY-MM-DD", row=row, field=name)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise AuthorizationListError("is not a calendar date", row=row, field=name) from None


def _parse_utc(text: str | None, *, name: str) -> datetime:
    if text is None or _UTC_TEXT.fullmatch(text) is None:
        raise AuthorizationListError(
            "must be a UTC timestamp YYYY-MM-DDThh:mm:ss[.ffffff]Z", field=name
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise AuthorizationListError("is not a valid timestamp", field=name) from None


def _row_from_text(values: Mapping[str, str], *, row: int) -> AuthorizationRow:
    """Build a row from text fields (CSV cells or XML attributes), naming row and field."""
    basis_text = values["legal_basis"]
    if _LEGAL_BASIS_TEXT.fullmatch(basis_text) is None:
        raise AuthorizationListError(
            f"must be a 項 number from 1 to {MAX_LEGAL_BASIS}", row=row, field="legal_basis"
        )
    valid_to_text = values["valid_to"]
    try:
        return AuthorizationRow(
            requester=values["requester"],
            provider=values["provider"],
            business_code=values["business_code"],
            procedure_code=values["procedure_code"],
            item_code=values["item_code"],
            legal_basis=int(basis_text),
            valid_from=_parse_date(values["valid_from"], row=row, name="valid_from"),
            valid_to=(
                None
                if valid_to_text == ""
                else _parse_date(valid_to_text, row=row, name="valid_to")
            ),
            note=values["note"],
        )
    except AuthorizationListError as exc:
        if exc.row is not None:
            raise
        raise AuthorizationListError(exc.message, row=row, field=exc.field) from None


# -- CSV -------------------------------------------------------------------------------


def parse_list_csv(
    data: bytes, *, version: int, issued_at: datetime, expires_at: datetime
) -> AuthorizationList:
    """Read the operator's CSV (UTF-8, optional BOM, header row :data:`CSV_COLUMNS`)."""
    if not isinstance(data, bytes | bytearray):
        raise AuthorizationListError("the CSV must be given as bytes")
    if len(data) > MAX_LIST_BYTES:
        raise AuthorizationListError(f"the CSV is larger than {MAX_LIST_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthorizationListError(f"not UTF-8 at byte offset {exc.start}") from None
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    rows: list[AuthorizationRow] = []
    number = 0
    try:
        header = next(reader, None)
        if header is None:
            raise AuthorizationListError("the CSV is empty; a header row is required")
        if tuple(header) != CSV_COLUMNS:
            raise AuthorizationListError("the header row must be " + ",".join(CSV_COLUMNS))
        for number, record in enumerate(reader, start=1):
            if len(record) != len(CSV_COLUMNS):
                raise AuthorizationListError(
                    f"expected {len(CSV_COLUMNS)} fields, found {len(record)}", row=number
                )
            rows.append(_row_from_text(dict(zip(CSV_COLUMNS, record, strict=True)), row=number))
    except csv.Error as exc:
        raise AuthorizationListError(f"CSV syntax: {exc}", row=number + 1) from None
    return _make_list(rows, version=version, issued_at=issued_at, expires_at=expires_at)


def list_to_csv(lst: AuthorizationList) -> bytes:
    """Write the rows as UTF-8 CSV with the header; metadata travels separately."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in lst.rows:
        writer.writerow(_row_texts(row))
    return out.getvalue().encode("utf-8")


def _row_texts(row: AuthorizationRow) -> tuple[str, ...]:
    return (
        row.requester,
        row.provider,
        row.business_code,
        row.procedure_code,
        row.item_code,
        str(row.legal_basis),
        row.valid_from.isoformat(),
        "" if row.valid_to is None else row.valid_to.isoformat(),
        row.note,
    )


def _make_list(
    rows: Iterable[AuthorizationRow], *, version: int, issued_at: datetime, expires_at: datetime
) -> AuthorizationList:
    return AuthorizationList(
        rows=tuple(rows), version=version, issued_at=issued_at, expires_at=expires_at
    )


# -- XML -------------------------------------------------------------------------------

_XSD_PATH_ROW = re.compile(r"^/\*/\*(?:\[([0-9]+)\])?")
_XSD_ATTRIBUTE = re.compile(r"attribute '([a-z_]+)'")
_MAX_XSD_MESSAGE = 200


@functools.cache
def _schema() -> etree.XMLSchema:
    """Compile the XSD once, at first use (never on the hot path twice)."""
    xsd = resources.files("chukan.permits").joinpath("authorization_list.xsd").read_bytes()
    return etree.XMLSchema(parse_xml(xsd))


def _tag(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _default_namespace(namespace: str) -> Mapping[str, str]:
    # lxml takes None as the key of the default namespace; its stubs do not say so.
    return cast("Mapping[str, str]", {None: namespace})


def list_to_xml(lst: AuthorizationList) -> bytes:
    """Serialize the whole list (metadata and rows) as UTF-8 XML valid under the XSD."""
    root = etree.Element(
        _tag(LIST_NAMESPACE, "AuthorizationList"), nsmap=_default_namespace(LIST_NAMESPACE)
    )
    root.set("version", str(lst.version))
    root.set("issued_at", format_utc(lst.issued_at))
    root.set("expires_at", format_utc(lst.expires_at))
    for row in lst.rows:
        element = etree.SubElement(root, _tag(LIST_NAMESPACE, "Row"))
        for name, text in zip(CSV_COLUMNS, _row_texts(row), strict=True):
            if text or name not in ("valid_to", "note"):
                element.set(name, text)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def parse_list_xml(data: bytes) -> AuthorizationList:
    """Parse and validate an XML list (hardened parser, then XSD, then row rules)."""
    if not isinstance(data, bytes | bytearray):
        raise AuthorizationListError("the XML must be given as bytes")
    try:
        root = parse_xml(bytes(data), XmlLimits(max_bytes=MAX_LIST_BYTES, max_depth=8))
    except CodecError as exc:
        raise AuthorizationListError(f"XML refused: {exc}") from None
    schema = _schema()
    if not schema.validate(root):
        raise _schema_error(schema)
    rows = [
        _row_from_text(
            {name: element.get(name, "") for name in CSV_COLUMNS},
            row=number,
        )
        for number, element in enumerate(root, start=1)
    ]
    version = int(root.get("version", "0"))
    return _make_list(
        rows,
        version=version,
        issued_at=_parse_utc(root.get("issued_at"), name="issued_at"),
        expires_at=_parse_utc(root.get("expires_at"), name="expires_at"),
    )


def _schema_error(schema: etree.XMLSchema) -> AuthorizationListError:
    """Turn libxml2's first XSD complaint into an error naming row and field."""
    log: Any = schema.error_log  # the stubs leave _ErrorLog opaque
    entry = next(iter(log), None)
    if entry is None:  # pragma: no cover - libxml2 always logs a reason
        return AuthorizationListError("the XML does not match authorization_list.xsd")
    message = str(entry.message)
    where_row = _XSD_PATH_ROW.match(entry.path or "")
    row = None if where_row is None else int(where_row.group(1) or "1")
    attribute = _XSD_ATTRIBUTE.search(message)
    if len(message) > _MAX_XSD_MESSAGE:
        message = message[:_MAX_XSD_MESSAGE] + "…"
    return AuthorizationListError(
        f"does not match authorization_list.xsd: {message}",
        row=row,
        field=None if attribute is None else attribute.group(1),
    )


# -- signed distribution ---------------------------------------------------------------


def sign_list(lst: AuthorizationList, signer: SigningKeyPair) -> bytes:
    """Wrap the list XML with a detached Ed25519 signature for distribution by the hub.

    The list bytes travel base64url-encoded so that what is verified is exactly
    what was signed (no XML canonicalization involved)::

        <SignedAuthorizationList xmlns="urn:chukan:permits:signed-authorization-list:1">
          <Signature keyId="…" algorithm="Ed25519">base64url(signature)</Signature>
          <List>base64url(list XML bytes)</List>
        </SignedAuthorizationList>

    The signature covers :data:`LIST_SIGNATURE_CONTEXT` followed by the list bytes.
    """
    document = list_to_xml(lst)
    signature = signer.sign(LIST_SIGNATURE_CONTEXT + document)
    root = etree.Element(
        _tag(SIGNED_LIST_NAMESPACE, "SignedAuthorizationList"),
        nsmap=_default_namespace(SIGNED_LIST_NAMESPACE),
    )
    sig = etree.SubElement(root, _tag(SIGNED_LIST_NAMESPACE, "Signature"))
    sig.set("keyId", signer.key_id)
    sig.set("algorithm", SIGNATURE_ALGORITHM)
    sig.text = _b64e(signature)
    body = etree.SubElement(root, _tag(SIGNED_LIST_NAMESPACE, "List"))
    body.text = _b64e(document)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def verify_signed_list(
    data: bytes, trusted: Mapping[str, PublicSigningKey], *, now: datetime
) -> AuthorizationList:
    """Verify the hub's signature, then parse the list and refuse it once expired.

    Order: document shape, signature present, algorithm, key trusted, signature,
    list contents, expiry.  Refusing an older ``version`` than the one in use is
    the caller's job (it alone knows the current version).
    """
    require_aware("now", now)
    if not isinstance(data, bytes | bytearray):
        raise AuthorizationListError("the signed list must be given as bytes")
    try:
        root = parse_xml(bytes(data), XmlLimits(max_bytes=MAX_SIGNED_LIST_BYTES, max_depth=4))
    except CodecError as exc:
        raise AuthorizationListError(f"XML refused: {exc}") from None
    if root.tag == _tag(LIST_NAMESPACE, "AuthorizationList"):
        raise ListSignatureError("the list is not signed")
    key_id, signature, document = _signed_parts(root)
    try:
        key = trusted.get(key_id)
        if key is None:
            raise ListSignatureError(f"the list is signed by an untrusted key {key_id}")
        key.verify(LIST_SIGNATURE_CONTEXT + document, signature)
    except SignatureError:
        raise ListSignatureError(f"the signature does not verify under key {key_id}") from None
    lst = parse_list_xml(document)
    if now >= lst.expires_at:
        raise ListExpiredError(
            f"list version {lst.version} expired at {format_utc(lst.expires_at)}"
        )
    return lst


def _blank(text: str | None) -> bool:
    return text is None or text.strip() == ""


def _signed_parts(root: etree._Element) -> tuple[str, bytes, bytes]:
    """Pick apart the signed document, refusing anything but the exact expected shape."""
    if root.tag != _tag(SIGNED_LIST_NAMESPACE, "SignedAuthorizationList"):
        raise AuthorizationListError("the root element is not SignedAuthorizationList")
    if root.attrib or not _blank(root.text):
        raise AuthorizationListError("SignedAuthorizationList carries unexpected content")
    children = list(root)
    tags = [child.tag for child in children]
    if any(not _blank(child.tail) for child in children):
        raise AuthorizationListError("SignedAuthorizationList carries unexpected text")
    if tags == [_tag(SIGNED_LIST_NAMESPACE, "List")]:
        raise ListSignatureError("the list is not signed")
    if tags != [_tag(SIGNED_LIST_NAMESPACE, "Signature"), _tag(SIGNED_LIST_NAMESPACE, "List")]:
        raise AuthorizationListError("expected exactly a Signature element then a List element")
    sig, body = children
    if set(sig.attrib) != {"keyId", "algorithm"} or len(sig) or len(body) or body.attrib:
        raise AuthorizationListError("Signature or List has unexpected attributes or children")
    key_id = str(sig.get("keyId"))
    if not 1 <= len(key_id) <= _MAX_KEY_ID_CHARS or not key_id.isprintable():
        raise AuthorizationListError("keyId is empty, too long or not printable")
    if sig.get("algorithm") != SIGNATURE_ALGORITHM:
        raise ListSignatureError(f"signature algorithm must be {SIGNATURE_ALGORITHM}")
    signature = decode_b64url_strict((sig.text or "").strip())
    if signature is None or len(signature) != ED25519_SIGNATURE_BYTES:
        raise ListSignatureError("the signature is not a base64url Ed25519 signature")
    document = decode_b64url_strict((body.text or "").strip())
    if not document:
        raise AuthorizationListError("the List element is not base64url of a document")
    if len(document) > MAX_LIST_BYTES:
        raise AuthorizationListError(f"the list is larger than {MAX_LIST_BYTES} bytes")
    return key_id, signature, document


# -- the sample list -------------------------------------------------------------------


def load_sample_list(
    *, version: int = 1, issued_at: datetime, expires_at: datetime
) -> AuthorizationList:
    """千葉市's sample list: it provides under its 27 項 and queries under 131 and 132 (DESIGN §4).

    The file is generated by :mod:`chukan.permits.sample_list` from the rules (every
    city of 千葉県 for the 市町村長 rows) and the sourced table of 項; rows whose 項
    could not be confirmed against the 命令 carry ``[未確認]`` in their note.
    """
    data = (
        resources.files("chukan.permits")
        .joinpath("data")
        .joinpath("authorization_list.csv")
        .read_bytes()
    )
    return parse_list_csv(data, version=version, issued_at=issued_at, expires_at=expires_at)
