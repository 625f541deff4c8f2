"""Permits (情報提供許可証): the hub's signed, short-lived statement that one query is allowed.

A permit binds requester, provider, 事務/手続き, item, 項, the provider's 符号 for
the person and the SHA-256 of the request body it travels with; the provider
gateway verifies it before answering (DESIGN §3 flow 4).  Replay protection
needs state and lives in the gateway; :class:`PermitReplayedError` is its error.

Token: ``v1.<b64url(payload)>.<b64url(signature)>`` where the payload is
canonical JSON (sorted keys, no spaces, ASCII only) including ``kid`` and
``alg`` and the signature is Ed25519 over the ASCII of ``v1.<b64url(payload)>``.
Only the canonical encoding is accepted, so one permit has exactly one token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from chukan.keys import SIGNATURE_ALGORITHM, PublicSigningKey, SignatureError, SigningKeyPair

from .authorization import AuthorizationRow, code_problem, decode_b64url_strict, require_aware
from .errors import (
    DuplicateJsonKeyError,
    PermitAudienceError,
    PermitBodyMismatchError,
    PermitExpiredError,
    PermitMalformedError,
    PermitNotYetValidError,
    PermitSignatureError,
    PermitUnknownKeyError,
)

PERMIT_FORMAT: Final = "v1"
MAX_TOKEN_CHARS: Final = 4096
DEFAULT_CLOCK_SKEW: Final = timedelta(seconds=30)
DEFAULT_PERMIT_LIFETIME: Final = timedelta(minutes=5)
ED25519_SIGNATURE_BYTES: Final = 64

_PERMIT_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
_OPAQUE_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")

# Payload keys and the exact JSON type of each; anything else is refused.
_PAYLOAD_TYPES: Final[Mapping[str, type]] = {
    "alg": str,
    "kid": str,
    "permit_id": str,
    "query_id": str,
    "requester": str,
    "provider": str,
    "business_code": str,
    "procedure_code": str,
    "item_code": str,
    "legal_basis": int,
    "provider_person_code": str,
    "issued_at": str,
    "expires_at": str,
    "body_digest": str,
}


def body_digest(body: bytes) -> str:
    """Hex SHA-256 of the request body, binding a permit to exactly one message."""
    return hashlib.sha256(body).hexdigest()


def new_permit_id() -> str:
    """A random 128-bit id, URL-safe, for records and replay detection."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Permit:
    """One hub-issued 情報提供許可証; times are UTC, truncated to whole seconds.

    ``provider_person_code`` is the provider's 符号 for the person: kept out of
    ``repr`` so that a logged permit never carries it.
    """

    permit_id: str
    query_id: str
    requester: str
    provider: str
    business_code: str
    procedure_code: str
    item_code: str
    legal_basis: int
    provider_person_code: str = field(repr=False)
    issued_at: datetime
    expires_at: datetime
    body_digest: str

    def __post_init__(self) -> None:
        if not isinstance(self.permit_id, str) or _PERMIT_ID.fullmatch(self.permit_id) is None:
            raise PermitMalformedError("permit_id must be 16–128 base64url characters")
        for name in ("query_id", "provider_person_code"):
            value = getattr(self, name)
            if not isinstance(value, str) or _OPAQUE_ID.fullmatch(value) is None:
                raise PermitMalformedError(f"{name} must be 1–128 printable ASCII characters")
        for name in (
            "requester",
            "provider",
            "business_code",
            "procedure_code",
            "item_code",
            "legal_basis",
        ):
            problem = code_problem(name, getattr(self, name))
            if problem is not None:
                raise PermitMalformedError(problem)
        if not isinstance(self.body_digest, str) or _DIGEST.fullmatch(self.body_digest) is None:
            raise PermitMalformedError("body_digest must be 64 lower-case hex digits")
        for name in ("issued_at", "expires_at"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise PermitMalformedError(f"{name} must be a timezone-aware datetime")
            object.__setattr__(self, name, moment.astimezone(UTC).replace(microsecond=0))
        if self.expires_at <= self.issued_at:
            raise PermitMalformedError("expires_at must be after issued_at")


def issue_permit(
    row: AuthorizationRow,
    *,
    query_id: str,
    provider_person_code: str,
    body: bytes,
    now: datetime,
    lifetime: timedelta = DEFAULT_PERMIT_LIFETIME,
    permit_id: str | None = None,
) -> Permit:
    """Build the permit for one query the list authorizes (the row the hub matched)."""
    require_aware("now", now)
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
    issued = now.astimezone(UTC).replace(microsecond=0)
    return Permit(
        permit_id=new_permit_id() if permit_id is None else permit_id,
        query_id=query_id,
        requester=row.requester,
        provider=row.provider,
        business_code=row.business_code,
        procedure_code=row.procedure_code,
        item_code=row.item_code,
        legal_basis=row.legal_basis,
        provider_person_code=provider_person_code,
        issued_at=issued,
        expires_at=issued + lifetime,
        body_digest=body_digest(body),
    )


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(payload: Mapping[str, object]) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _payload(permit: Permit, key_id: str) -> dict[str, object]:
    return {
        "alg": SIGNATURE_ALGORITHM,
        "kid": key_id,
        "permit_id": permit.permit_id,
        "query_id": permit.query_id,
        "requester": permit.requester,
        "provider": permit.provider,
        "business_code": permit.business_code,
        "procedure_code": permit.procedure_code,
        "item_code": permit.item_code,
        "legal_basis": permit.legal_basis,
        "provider_person_code": permit.provider_person_code,
        "issued_at": _format_time(permit.issued_at),
        "expires_at": _format_time(permit.expires_at),
        "body_digest": permit.body_digest,
    }


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_permit(permit: Permit, signer: SigningKeyPair) -> str:
    """Sign ``permit`` with the hub's key into a compact ``v1.<payload>.<signature>`` token."""
    if _OPAQUE_ID.fullmatch(signer.key_id) is None:
        raise PermitMalformedError("the signing key id must be 1–128 printable ASCII characters")
    signing_input = f"{PERMIT_FORMAT}.{_b64e(_canonical(_payload(permit, signer.key_id)))}"
    token = f"{signing_input}.{_b64e(signer.sign(signing_input.encode('ascii')))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise PermitMalformedError(f"the token would exceed {MAX_TOKEN_CHARS} characters")
    return token


# -- verification ----------------------------------------------------------------------


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateJsonKeyError("a JSON object repeats a key", where=key)
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"JSON constant {name} is not accepted")


def _decode_token(token: object) -> tuple[bytes, dict[str, Any], bytes]:
    """Split and decode a token, checking only its shape: (signing input, payload, signature)."""
    if not isinstance(token, str):
        raise PermitMalformedError("the permit must be text")
    if not token:
        raise PermitMalformedError("the permit is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise PermitMalformedError(f"the permit is longer than {MAX_TOKEN_CHARS} characters")
    if not token.isascii():
        raise PermitMalformedError("the permit contains non-ASCII characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise PermitMalformedError("the permit must have exactly three dot-separated parts")
    version, payload_text, signature_text = parts
    if version != PERMIT_FORMAT:
        raise PermitMalformedError(f"unsupported permit version (expected {PERMIT_FORMAT})")
    raw = decode_b64url_strict(payload_text)
    signature = decode_b64url_strict(signature_text)
    if raw is None or signature is None:
        raise PermitMalformedError("the permit parts are not canonical base64url")
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise PermitMalformedError("the signature part has the wrong length")
    try:
        payload = json.loads(
            raw.decode("ascii"),
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
        )
    except DuplicateJsonKeyError:
        raise PermitMalformedError("the payload repeats a key") from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise PermitMalformedError("the payload is not ASCII JSON") from None
    if not isinstance(payload, dict):
        raise PermitMalformedError("the payload is not a JSON object")
    if set(payload) != set(_PAYLOAD_TYPES):
        raise PermitMalformedError("the payload does not have exactly the expected keys")
    for key, expected in _PAYLOAD_TYPES.items():
        if type(payload[key]) is not expected:
            raise PermitMalformedError(f"payload key {key} has the wrong type")
    if _canonical(payload) != raw:
        raise PermitMalformedError("the payload is not canonical JSON")
    return f"{version}.{payload_text}".encode("ascii"), payload, signature


def _parse_time(payload: Mapping[str, Any], key: str) -> datetime:
    text = payload[key]
    if _TIMESTAMP.fullmatch(text) is None:
        raise PermitMalformedError(f"{key} must be YYYY-MM-DDThh:mm:ssZ")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise PermitMalformedError(f"{key} is not a valid timestamp") from None


def _permit_from(payload: Mapping[str, Any]) -> Permit:
    return Permit(
        permit_id=payload["permit_id"],
        query_id=payload["query_id"],
        requester=payload["requester"],
        provider=payload["provider"],
        business_code=payload["business_code"],
        procedure_code=payload["procedure_code"],
        item_code=payload["item_code"],
        legal_basis=payload["legal_basis"],
        provider_person_code=payload["provider_person_code"],
        issued_at=_parse_time(payload, "issued_at"),
        expires_at=_parse_time(payload, "expires_at"),
        body_digest=payload["body_digest"],
    )


def peek_permit_id(token: str) -> str | None:
    """The id a well-formed token names, *unverified*: only to name it in a refusal.

    A provider that refuses a permit (expired, replayed, not for it) answers with
    a signed refusal naming the permit, so that the hub can match it to its record.
    """
    try:
        _, payload, _ = _decode_token(token)
    except PermitMalformedError:
        return None
    permit_id = payload["permit_id"]
    return permit_id if isinstance(permit_id, str) else None


def verify_permit(
    token: str,
    trusted: Mapping[str, PublicSigningKey],
    *,
    audience: str,
    now: datetime,
    body: bytes,
    skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> Permit:
    """Return the permit if the hub signed it for ``audience``, now, and for this ``body``.

    Checks, in order: shape, algorithm, trusted key id, signature, audience,
    not-yet-valid and expiry (each with ``skew``), body digest.  Every refusal is
    a :class:`~chukan.permits.errors.PermitError` subclass.  Single use is the
    caller's check (a replay store keyed by ``permit_id``).
    """
    require_aware("now", now)
    if skew < timedelta(0):
        raise ValueError("skew must not be negative")
    signing_input, payload, signature = _decode_token(token)
    permit = _permit_from(payload)
    if payload["alg"] != SIGNATURE_ALGORITHM:
        raise PermitSignatureError(f"permit algorithm must be {SIGNATURE_ALGORITHM}")
    key_id: str = payload["kid"]
    key = trusted.get(key_id)
    if key is None:
        raise PermitUnknownKeyError("the permit names a key that is not trusted")
    try:
        key.verify(signing_input, signature)
    except SignatureError:
        raise PermitSignatureError("the permit signature does not verify") from None
    if permit.provider != audience:
        raise PermitAudienceError(f"the permit is for provider {permit.provider}, not {audience}")
    if now < permit.issued_at - skew:
        raise PermitNotYetValidError("the permit is issued in the future")
    if now >= permit.expires_at + skew:
        raise PermitExpiredError("the permit has expired")
    if not hmac.compare_digest(body_digest(body), permit.body_digest):
        raise PermitBodyMismatchError("the request body is not the one the permit was issued for")
    return permit
