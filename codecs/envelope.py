"""Network envelopes between gateways and the hub (DESIGN §5), as pure functions.

A message is ``<Message><Header/><Body>…one typed body…</Body></Message>`` in
the namespace ``urn:chukan:network:1``, validated against ``xsd/envelope.xsd``
(compiled once).  :func:`body_digest_bytes` gives the canonical (C14N 2.0)
bytes of the body, which the hub binds into a permit: a permit cannot be
moved onto another request body.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final, Literal, cast

from lxml import etree

from chukan.keys import ENCRYPTION_ALGORITHM, KeysError, Sealed, b64d, b64e

from .errors import SchemaError, XmlStructureError
from .xmlsafe import XmlLimits, parse_xml

NS: Final = "urn:chukan:network:1"
HUB: Final = "HUB"
ENVELOPE_LIMITS: Final = XmlLimits(max_bytes=8 * 1024 * 1024, max_depth=16)
_Q = "{" + NS + "}"
_NSMAP: Final = cast("dict[str, str]", {None: NS})  # lxml-stubs lack the default-namespace key


@cache
def _schema() -> etree.XMLSchema:
    source = resources.files("chukan.codecs").joinpath("xsd/envelope.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source))


def new_message_id() -> str:
    """128 random bits: message ids double as replay-protection keys."""
    return secrets.token_urlsafe(16)


# -- typed bodies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcquisitionRequest:
    """J-LIS: 個人番号 → single-use 取得番号.  The number is never stored or logged."""

    individual_number: str

    def __repr__(self) -> str:  # keep the 個人番号 out of tracebacks and logs
        return "AcquisitionRequest(individual_number=<redacted>)"


@dataclass(frozen=True, slots=True)
class AcquisitionResponse:
    acquisition_number: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ResidentCodeRequest:
    """J-LIS: 住民票コード → single-use 処理通番 (answered by an :class:`AcquisitionResponse`).

    The 処理通番 then takes the 取得番号's place in :class:`CodeRequest`.  The 個人番号,
    when given, only lets the simulated J-LIS link the two (its 本人確認情報 hold both);
    neither value is stored or logged.
    """

    resident_code: str
    individual_number: str | None = None

    def __repr__(self) -> str:  # keep the 住民票コード and 個人番号 out of logs
        return "ResidentCodeRequest(<redacted>)"


@dataclass(frozen=True, slots=True)
class CodeRequest:
    """取得番号 (or 処理通番) → this agency's 符号."""

    acquisition_number: str


@dataclass(frozen=True, slots=True)
class PersonNotice:
    """Agency → hub: one of its 符号 is ended (unregistered) or merged into another."""

    notice_id: str
    kind: Literal["unregistered", "merged"]
    person_code: str
    successor_code: str | None = None


@dataclass(frozen=True, slots=True)
class PersonNoticeReceipt:
    """Hub → agency: the notice is applied (the same receipt for a repeated notice)."""

    notice_id: str
    kind: Literal["unregistered", "merged"]
    person_code: str
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CodeResponse:
    person_code: str


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """情報照会: requester → hub, naming the person by the requester's own 符号."""

    query_id: str
    requester_person_code: str
    provider: str
    business_code: str
    procedure_code: str
    item_code: str
    reference_date: dt.date | None = None
    #: 不開示: every side records the query with the non-disclosure flag.
    non_disclosure: bool = False


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """Hub → provider, with the provider's 符号 and the requester's encryption key."""

    query_id: str
    requester: str
    provider_person_code: str
    business_code: str
    procedure_code: str
    item_code: str
    legal_basis: int
    requester_key_id: str
    requester_key: bytes
    reference_date: dt.date | None = None
    non_disclosure: bool = False


@dataclass(frozen=True, slots=True)
class ProvisionAnswer:
    """Provider → requester (through the hub): a sealed item or a refusal reason."""

    query_id: str
    permit_id: str
    outcome: Literal["provided", "refused"]
    reason_code: str | None = None
    payload: Sealed | None = None


@dataclass(frozen=True, slots=True)
class QueryRefusal:
    """Hub → requester when the query cannot be routed or the provider refused the permit."""

    query_id: str
    reason_code: str
    message: str
    permit_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConclusionRequest:
    """Requester → hub: the conclusion of one of its queries, to recover a lost delivery."""

    query_id: str


Body = (
    AcquisitionRequest
    | AcquisitionResponse
    | ResidentCodeRequest
    | CodeRequest
    | CodeResponse
    | PersonNotice
    | PersonNoticeReceipt
    | QueryRequest
    | ProvisionRequest
    | ProvisionAnswer
    | QueryRefusal
    | ConclusionRequest
)


@dataclass(frozen=True, slots=True)
class Header:
    message_id: str
    message_type: str
    sender: str
    receiver: str
    created: dt.datetime
    permit: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    header: Header
    body: Body
    #: Canonical bytes of the ``Body`` element, for permit body digests.
    body_c14n: bytes


# -- encoding -------------------------------------------------------------------------


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _Q + name)
    if text is not None:
        element.text = text
    return element


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fill_body(parent: etree._Element, body: Body) -> None:
    element = _sub(parent, type(body).__name__)
    match body:
        case AcquisitionRequest():
            _sub(element, "IndividualNumber", body.individual_number)
        case AcquisitionResponse():
            _sub(element, "AcquisitionNumber", body.acquisition_number)
            _sub(element, "ExpiresAt", _timestamp(body.expires_at))
        case ResidentCodeRequest():
            _sub(element, "ResidentCode", body.resident_code)
            if body.individual_number is not None:
                _sub(element, "IndividualNumber", body.individual_number)
        case CodeRequest():
            _sub(element, "AcquisitionNumber", body.acquisition_number)
        case CodeResponse():
            _sub(element, "PersonCode", body.person_code)
        case PersonNotice():
            _sub(element, "NoticeId", body.notice_id)
            _sub(element, "Kind", body.kind)
            _sub(element, "PersonCode", body.person_code)
            if body.successor_code is not None:
                _sub(element, "SuccessorCode", body.successor_code)
        case PersonNoticeReceipt():
            _sub(element, "NoticeId", body.notice_id)
            _sub(element, "Kind", body.kind)
            _sub(element, "PersonCode", body.person_code)
            _sub(element, "ReceivedAt", _timestamp(body.received_at))
        case QueryRequest():
            _sub(element, "QueryId", body.query_id)
            _sub(element, "RequesterPersonCode", body.requester_person_code)
            _sub(element, "Provider", body.provider)
            _sub(element, "BusinessCode", body.business_code)
            _sub(element, "ProcedureCode", body.procedure_code)
            _sub(element, "ItemCode", body.item_code)
            if body.reference_date is not None:
                _sub(element, "ReferenceDate", body.reference_date.isoformat())
            if body.non_disclosure:
                _sub(element, "NonDisclosure", "true")
        case ProvisionRequest():
            _sub(element, "QueryId", body.query_id)
            _sub(element, "Requester", body.requester)
            _sub(element, "ProviderPersonCode", body.provider_person_code)
            _sub(element, "BusinessCode", body.business_code)
            _sub(element, "ProcedureCode", body.procedure_code)
            _sub(element, "ItemCode", body.item_code)
            _sub(element, "LegalBasis", str(body.legal_basis))
            if body.reference_date is not None:
                _sub(element, "ReferenceDate", body.reference_date.isoformat())
            _sub(element, "RequesterKey", b64e(body.requester_key)).set(
                "keyId", body.requester_key_id
            )
            if body.non_disclosure:
                _sub(element, "NonDisclosure", "true")
        case ProvisionAnswer():
            _sub(element, "QueryId", body.query_id)
            _sub(element, "PermitId", body.permit_id)
            _sub(element, "Outcome", body.outcome)
            if body.reason_code is not None:
                _sub(element, "ReasonCode", body.reason_code)
            if body.payload is not None:
                sealed = _sub(element, "EncryptedPayload")
                sealed.set("algorithm", body.payload.algorithm)
                sealed.set("keyId", body.payload.key_id)
                _sub(sealed, "EphemeralKey", b64e(body.payload.ephemeral_public))
                _sub(sealed, "Nonce", b64e(body.payload.nonce))
                _sub(sealed, "CipherText", b64e(body.payload.ciphertext))
        case QueryRefusal():
            _sub(element, "QueryId", body.query_id)
            if body.permit_id is not None:
                _sub(element, "PermitId", body.permit_id)
            _sub(element, "ReasonCode", body.reason_code)
            _sub(element, "Message", body.message[:500])
        case ConclusionRequest():
            _sub(element, "QueryId", body.query_id)


def build_body(body: Body) -> etree._Element:
    """The ``Body`` element alone, so the hub can digest it before issuing a permit."""
    element = etree.Element(_Q + "Body", nsmap=_NSMAP)
    _fill_body(element, body)
    return element


def body_digest_bytes(body_element: etree._Element) -> bytes:
    """Canonical bytes of a ``Body`` element: identical on both ends of the wire."""
    return etree.tostring(body_element, method="c14n", exclusive=True)


def encode_body_c14n(body: Body) -> bytes:
    return body_digest_bytes(build_body(body))


def encode_message(header: Header, body: Body) -> bytes:
    """Serialise a message; validated against the XSD so we never emit what we refuse."""
    if header.message_type != type(body).__name__:
        raise XmlStructureError("header message type does not match the body")
    root = etree.Element(_Q + "Message", nsmap=_NSMAP)
    root.set("version", "1")
    head = _sub(root, "Header")
    _sub(head, "MessageId", header.message_id)
    _sub(head, "MessageType", header.message_type)
    _sub(head, "Sender", header.sender)
    _sub(head, "Receiver", header.receiver)
    _sub(head, "Created", _timestamp(header.created))
    if header.permit is not None:
        _sub(head, "Permit", header.permit)
    root.append(build_body(body))
    _validate(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# -- decoding -------------------------------------------------------------------------


def _validate(root: etree._Element) -> None:
    schema = _schema()
    if not schema.validate(root):
        error: Any = getattr(schema.error_log, "last_error", None)  # missing from lxml-stubs
        where = error.path if error is not None else None
        message = error.message if error is not None else "invalid"
        raise SchemaError(f"envelope does not match its schema: {message}", where=where)


def _text(parent: etree._Element, name: str) -> str:
    child = parent.find(_Q + name)
    if child is None or child.text is None:
        raise XmlStructureError(f"missing element {name}")
    return child.text


def _optional(parent: etree._Element, name: str) -> str | None:
    child = parent.find(_Q + name)
    return None if child is None else (child.text or "")


def _datetime(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise XmlStructureError("timestamps must carry a time zone")
    return value


def _date(text: str | None) -> dt.date | None:
    return None if text is None else dt.date.fromisoformat(text)


def _decode_body(element: etree._Element) -> Body:
    kind = etree.QName(element).localname
    if kind == "AcquisitionRequest":
        return AcquisitionRequest(_text(element, "IndividualNumber"))
    if kind == "AcquisitionResponse":
        return AcquisitionResponse(
            _text(element, "AcquisitionNumber"), _datetime(_text(element, "ExpiresAt"))
        )
    if kind == "ResidentCodeRequest":
        return ResidentCodeRequest(
            _text(element, "ResidentCode"), _optional(element, "IndividualNumber")
        )
    if kind == "CodeRequest":
        return CodeRequest(_text(element, "AcquisitionNumber"))
    if kind in ("PersonNotice", "PersonNoticeReceipt"):
        notice_kind = _text(element, "Kind")
        assert notice_kind in ("unregistered", "merged")  # guaranteed by the schema
        literal: Literal["unregistered", "merged"] = (
            "merged" if notice_kind == "merged" else "unregistered"
        )
        if kind == "PersonNotice":
            successor = _optional(element, "SuccessorCode")
            if (literal == "merged") != (successor is not None):
                raise XmlStructureError("a merge notice, and only one, names the successor 符号")
            return PersonNotice(
                _text(element, "NoticeId"), literal, _text(element, "PersonCode"), successor
            )
        return PersonNoticeReceipt(
            _text(element, "NoticeId"),
            literal,
            _text(element, "PersonCode"),
            _datetime(_text(element, "ReceivedAt")),
        )
    if kind == "CodeResponse":
        return CodeResponse(_text(element, "PersonCode"))
    if kind == "QueryRequest":
        return QueryRequest(
            query_id=_text(element, "QueryId"),
            requester_person_code=_text(element, "RequesterPersonCode"),
            provider=_text(element, "Provider"),
            business_code=_text(element, "BusinessCode"),
            procedure_code=_text(element, "ProcedureCode"),
            item_code=_text(element, "ItemCode"),
            reference_date=_date(_optional(element, "ReferenceDate")),
            non_disclosure=_optional(element, "NonDisclosure") in ("true", "1"),
        )
    if kind == "ProvisionRequest":
        key = element.find(_Q + "RequesterKey")
        assert key is not None  # guaranteed by the schema
        return ProvisionRequest(
            query_id=_text(element, "QueryId"),
            requester=_text(element, "Requester"),
            provider_person_code=_text(element, "ProviderPersonCode"),
            business_code=_text(element, "BusinessCode"),
            procedure_code=_text(element, "ProcedureCode"),
            item_code=_text(element, "ItemCode"),
            legal_basis=int(_text(element, "LegalBasis")),
            reference_date=_date(_optional(element, "ReferenceDate")),
            requester_key_id=key.get("keyId", ""),
            requester_key=b64d(key.text or ""),
            non_disclosure=_optional(element, "NonDisclosure") in ("true", "1"),
        )
    if kind == "ProvisionAnswer":
        outcome = _text(element, "Outcome")
        assert outcome in ("provided", "refused")  # guaranteed by the schema
        payload: Sealed | None = None
        sealed = element.find(_Q + "EncryptedPayload")
        if sealed is not None:
            payload = Sealed(
                algorithm=sealed.get("algorithm", ""),
                key_id=sealed.get("keyId", ""),
                ephemeral_public=b64d(_text(sealed, "EphemeralKey")),
                nonce=b64d(_text(sealed, "Nonce")),
                ciphertext=b64d(_text(sealed, "CipherText")),
            )
        if outcome == "provided" and payload is None:
            raise XmlStructureError("a provided answer must carry an encrypted payload")
        return ProvisionAnswer(
            query_id=_text(element, "QueryId"),
            permit_id=_text(element, "PermitId"),
            outcome="provided" if outcome == "provided" else "refused",
            reason_code=_optional(element, "ReasonCode"),
            payload=payload,
        )
    if kind == "ConclusionRequest":
        return ConclusionRequest(_text(element, "QueryId"))
    if kind == "QueryRefusal":
        return QueryRefusal(
            query_id=_text(element, "QueryId"),
            permit_id=_optional(element, "PermitId"),
            reason_code=_text(element, "ReasonCode"),
            message=_optional(element, "Message") or "",
        )
    raise XmlStructureError(f"unknown body {kind}")


def decode_message(data: bytes) -> Envelope:
    """Parse, validate and type a message received from the network."""
    root = parse_xml(data, ENVELOPE_LIMITS)
    if root.tag != _Q + "Message":
        raise XmlStructureError("not a chukan network message (root or namespace)")
    _validate(root)
    head = root.find(_Q + "Header")
    body_element = root.find(_Q + "Body")
    assert head is not None  # guaranteed by the schema
    assert body_element is not None
    try:
        header = Header(
            message_id=_text(head, "MessageId"),
            message_type=_text(head, "MessageType"),
            sender=_text(head, "Sender"),
            receiver=_text(head, "Receiver"),
            created=_datetime(_text(head, "Created")),
            permit=_optional(head, "Permit"),
        )
        body = _decode_body(body_element[0])
    except (ValueError, KeysError) as exc:
        raise XmlStructureError(f"malformed value: {exc}") from None
    if header.message_type != type(body).__name__:
        raise XmlStructureError("header message type does not match the body")
    return Envelope(header, body, body_digest_bytes(body_element))


__all__ = [
    "ENCRYPTION_ALGORITHM",
    "HUB",
    "NS",
    "AcquisitionRequest",
    "AcquisitionResponse",
    "Body",
    "CodeRequest",
    "CodeResponse",
    "ConclusionRequest",
    "Envelope",
    "Header",
    "PersonNotice",
    "PersonNoticeReceipt",
    "ProvisionAnswer",
    "ProvisionRequest",
    "QueryRefusal",
    "QueryRequest",
    "ResidentCodeRequest",
    "body_digest_bytes",
    "build_body",
    "decode_message",
    "encode_body_c14n",
    "encode_message",
    "new_message_id",
]


def answer_aad(query_id: str, permit_id: str, provider: str, requester: str) -> bytes:
    """Associated data binding a sealed answer to its query, permit and parties."""
    return f"chukan-answer|{query_id}|{permit_id}|{provider}|{requester}".encode()
