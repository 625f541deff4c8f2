"""Permits (情報提供許可証): encoding, verification order and hostile tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.codecs import catalog
from chukan.keys import SigningKeyPair, b64d, b64e, generate_signing_key
from chukan.permits import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_PERMIT_LIFETIME,
    MAX_TOKEN_CHARS,
    AuthorizationRow,
    Permit,
    PermitAudienceError,
    PermitBodyMismatchError,
    PermitError,
    PermitExpiredError,
    PermitMalformedError,
    PermitNotYetValidError,
    PermitReplayedError,
    PermitsError,
    PermitSignatureError,
    PermitUnknownKeyError,
    body_digest,
    encode_permit,
    issue_permit,
    new_permit_id,
    peek_permit_id,
    verify_permit,
)

HUB = generate_signing_key("hub")
OTHER = generate_signing_key("other")
TRUSTED = {HUB.key_id: HUB.public}
NOW = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
BODY = b"<Query>some request body</Query>"
ROW = AuthorizationRow(
    requester=catalog.FUNABASHI_CITY,
    provider=catalog.CHIBA_CITY,
    business_code=catalog.LTC_BUSINESS,
    procedure_code=catalog.LTC_CERTIFICATION_PROCEDURE,
    item_code=catalog.CERTIFICATION.code,
    legal_basis=132,
    valid_from=date(2017, 11, 13),
    valid_to=None,
)
PERMIT = issue_permit(
    ROW, query_id="q-0001", provider_person_code="FUGO-chiba-0001", body=BODY, now=NOW
)
TOKEN = encode_permit(PERMIT, HUB)


def _verify(
    token: str,
    *,
    trusted: Mapping[str, Any] = TRUSTED,
    audience: str = catalog.CHIBA_CITY,
    now: datetime = NOW,
    body: bytes = BODY,
) -> Permit:
    return verify_permit(token, trusted, audience=audience, now=now, body=body)


def _payload() -> dict[str, Any]:
    """The decoded payload of :data:`TOKEN`, to alter and re-sign."""
    result: dict[str, Any] = json.loads(b64d(TOKEN.split(".")[1]))
    return result


def _sign_raw(payload: bytes, signer: SigningKeyPair = HUB, version: str = "v1") -> str:
    """A token around arbitrary payload bytes, correctly signed: only the shape is wrong."""
    signing_input = f"{version}.{b64e(payload)}"
    return f"{signing_input}.{b64e(signer.sign(signing_input.encode('ascii')))}"


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# -- round trip -----------------------------------------------------------------------


def test_round_trip() -> None:
    permit = _verify(TOKEN)
    assert permit == PERMIT
    assert permit.provider == catalog.CHIBA_CITY
    assert permit.provider_person_code == "FUGO-chiba-0001"
    assert permit.expires_at - permit.issued_at == DEFAULT_PERMIT_LIFETIME


def test_token_shape() -> None:
    version, payload, signature = TOKEN.split(".")
    assert version == "v1"
    decoded = b64d(payload)
    assert decoded == _canonical(json.loads(decoded))
    data = json.loads(decoded)
    assert data["alg"] == "Ed25519"
    assert data["kid"] == HUB.key_id
    assert data["issued_at"] == "2025-04-01T10:00:00Z"
    assert data["expires_at"] == "2025-04-01T10:05:00Z"
    assert data["body_digest"] == hashlib.sha256(BODY).hexdigest()
    assert len(b64d(signature)) == 64


def test_body_digest_and_permit_ids() -> None:
    assert body_digest(b"") == hashlib.sha256(b"").hexdigest()
    ids = {new_permit_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(b64d(i)) == 16 and len(i) == 22 for i in ids)


def test_repr_hides_the_person_code() -> None:
    assert "FUGO" not in repr(PERMIT)


def test_issue_truncates_to_seconds_and_accepts_custom_lifetime() -> None:
    permit = issue_permit(
        ROW,
        query_id="q",
        provider_person_code="x",
        body=b"",
        now=NOW + timedelta(microseconds=999_999),
        lifetime=timedelta(seconds=90),
        permit_id="A" * 22,
    )
    assert permit.issued_at == NOW
    assert permit.expires_at == NOW + timedelta(seconds=90)
    assert permit.permit_id == "A" * 22
    with pytest.raises(ValueError, match="lifetime"):
        issue_permit(
            ROW,
            query_id="q",
            provider_person_code="x",
            body=b"",
            now=NOW,
            lifetime=-1 * DEFAULT_PERMIT_LIFETIME,
        )
    with pytest.raises(TypeError):
        issue_permit(
            ROW, query_id="q", provider_person_code="x", body=b"", now=datetime(2025, 1, 1)
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("permit_id", "short"),
        ("permit_id", "has space in it ......"),
        ("query_id", ""),
        ("query_id", "x" * 129),
        ("provider_person_code", "符号"),
        ("requester", "12"),
        ("item_code", "TM1"),
        ("legal_basis", 0),
        ("legal_basis", True),
        ("body_digest", "A" * 64),
        ("issued_at", datetime(2025, 1, 1)),
        ("expires_at", NOW),
    ],
)
def test_permit_values_are_checked(name: str, value: object) -> None:
    changes: dict[str, Any] = {name: value}
    with pytest.raises(PermitMalformedError):
        replace(PERMIT, **changes)


# -- verification order and each refusal ------------------------------------------------


def test_forged_with_hub_key_id() -> None:
    impostor = SigningKeyPair(HUB.key_id, OTHER.private_key)
    with pytest.raises(PermitSignatureError) as info:
        _verify(encode_permit(PERMIT, impostor))
    assert info.value.code == "permit_signature_invalid"


def test_unknown_key() -> None:
    with pytest.raises(PermitUnknownKeyError) as info:
        _verify(encode_permit(PERMIT, OTHER))
    assert info.value.code == "permit_key_unknown"


def test_rotated_keys_both_verify() -> None:
    trusted = {HUB.key_id: HUB.public, OTHER.key_id: OTHER.public}
    assert _verify(encode_permit(PERMIT, OTHER), trusted=trusted) == PERMIT
    assert _verify(TOKEN, trusted=trusted) == PERMIT


@pytest.mark.parametrize("alg", ["none", "HS256", "ed25519", ""])
def test_other_algorithms_are_refused(alg: str) -> None:
    payload = {**_payload(), "alg": alg}
    with pytest.raises(PermitSignatureError):
        _verify(_sign_raw(_canonical(payload)))


def test_expiry_with_skew() -> None:
    edge = PERMIT.expires_at + DEFAULT_CLOCK_SKEW
    assert _verify(TOKEN, now=edge - timedelta(microseconds=1)) == PERMIT
    with pytest.raises(PermitExpiredError) as info:
        _verify(TOKEN, now=edge)
    assert info.value.code == "permit_expired"


def test_not_yet_valid_with_skew() -> None:
    edge = PERMIT.issued_at - DEFAULT_CLOCK_SKEW
    assert _verify(TOKEN, now=edge) == PERMIT
    with pytest.raises(PermitNotYetValidError) as info:
        _verify(TOKEN, now=edge - timedelta(microseconds=1))
    assert info.value.code == "permit_not_yet_valid"


def test_custom_skew() -> None:
    later = PERMIT.expires_at + timedelta(seconds=5)
    verify_permit(
        TOKEN, TRUSTED, audience="121002", now=later, body=BODY, skew=timedelta(seconds=10)
    )
    with pytest.raises(PermitExpiredError):
        verify_permit(
            TOKEN, TRUSTED, audience="121002", now=later, body=BODY, skew=timedelta(seconds=0)
        )
    with pytest.raises(ValueError, match="skew"):
        verify_permit(
            TOKEN, TRUSTED, audience="121002", now=NOW, body=BODY, skew=-DEFAULT_CLOCK_SKEW
        )


def test_audience_mismatch() -> None:
    with pytest.raises(PermitAudienceError) as info:
        _verify(TOKEN, audience=catalog.FUNABASHI_CITY)
    assert info.value.code == "permit_audience"


def test_body_mismatch() -> None:
    with pytest.raises(PermitBodyMismatchError) as info:
        _verify(TOKEN, body=BODY + b" ")
    assert info.value.code == "permit_body_mismatch"


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        _verify(TOKEN, now=datetime(2025, 4, 1, 10))


def test_order_signature_before_audience_and_time() -> None:
    forged = encode_permit(PERMIT, SigningKeyPair(HUB.key_id, OTHER.private_key))
    with pytest.raises(PermitSignatureError):
        _verify(forged, audience="999999", now=NOW + timedelta(days=1), body=b"")
    with pytest.raises(PermitAudienceError):
        _verify(TOKEN, audience="999999", now=NOW + timedelta(days=1), body=b"")
    with pytest.raises(PermitExpiredError):
        _verify(TOKEN, now=NOW + timedelta(days=1), body=b"")


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_to_the_token_is_refused(position: int, byte: int) -> None:
    raw = bytearray(TOKEN.encode("ascii"))
    index = position % len(raw)
    if raw[index] == byte:
        byte ^= 0x01
    raw[index] = byte
    with pytest.raises(PermitsError) as info:
        _verify(raw.decode("latin-1"))
    assert isinstance(info.value, PermitError)


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_to_the_body_is_refused(position: int, byte: int) -> None:
    body = bytearray(BODY)
    index = position % len(body)
    if body[index] == byte:
        byte ^= 0x01
    body[index] = byte
    with pytest.raises(PermitBodyMismatchError):
        _verify(TOKEN, body=bytes(body))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r"v1\.[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,90}"))
def test_arbitrary_text_is_refused_cleanly(token: str) -> None:
    with pytest.raises(PermitMalformedError):
        _verify(token)


# -- malformed tokens --------------------------------------------------------------------


def _standard_alphabet(token: str) -> str:
    """The token in the standard base64 alphabet.

    A random token has no ``-`` or ``_`` about one time in fifteen (the signature
    is 86 random characters); then one ``+`` stands in, so the case always differs.
    """
    converted = token.replace("-", "+").replace("_", "/")
    return converted if converted != token else token[:-1] + "+"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("v1." + "A" * MAX_TOKEN_CHARS + "." + "A" * 86, id="huge"),
        pytest.param(TOKEN + "." + TOKEN.split(".")[2], id="extra-part"),
        pytest.param(".".join(TOKEN.split(".")[:2]), id="two-parts"),
        pytest.param(TOKEN.replace("v1.", "v2.", 1), id="other-version"),
        pytest.param(TOKEN.replace("v1.", "V1.", 1), id="version-case"),
        pytest.param(TOKEN + "=", id="padded"),
        pytest.param(TOKEN[:-1] + "あ", id="non-ascii"),
        pytest.param(" " + TOKEN, id="leading-space"),
        pytest.param(TOKEN + "\n", id="trailing-newline"),
        pytest.param(_standard_alphabet(TOKEN), id="standard-base64"),
        pytest.param(TOKEN[:-2], id="short-signature"),
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(PermitMalformedError) as info:
        _verify(token)
    assert info.value.code == "permit_malformed"


@pytest.mark.parametrize("token", [None, b"v1.a.b", 42])
def test_non_text_tokens(token: object) -> None:
    with pytest.raises(PermitMalformedError):
        _verify(token)  # type: ignore[arg-type]


def _signed_payload(payload: bytes) -> str:
    token = _sign_raw(payload)
    assert len(token) <= MAX_TOKEN_CHARS
    return token


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_canonical({**_payload(), "extra": "x"}), id="extra-key"),
        pytest.param(
            _canonical({k: v for k, v in _payload().items() if k != "body_digest"}),
            id="missing-key",
        ),
        pytest.param(
            _canonical(_payload())[:-1] + b',"requester":"122041"}',
            id="duplicate-key",
        ),
        pytest.param(
            b'{"alg":"Ed25519","alg":"Ed25519"' + _canonical(_payload())[16:],
            id="duplicate-alg",
        ),
        pytest.param(_canonical({**_payload(), "legal_basis": "132"}), id="basis-as-text"),
        pytest.param(_canonical({**_payload(), "legal_basis": True}), id="basis-as-bool"),
        pytest.param(_canonical({**_payload(), "legal_basis": 132.0}), id="basis-as-float"),
        pytest.param(_canonical({**_payload(), "legal_basis": 0}), id="basis-zero"),
        pytest.param(_canonical({**_payload(), "requester": 122041}), id="agency-as-number"),
        pytest.param(_canonical({**_payload(), "kid": None}), id="kid-null"),
        pytest.param(_canonical({**_payload(), "query_id": ["q"]}), id="list-value"),
        pytest.param(_canonical({**_payload(), "permit_id": {"a": 1}}), id="object-value"),
        pytest.param(
            _canonical({**_payload(), "issued_at": "2025-04-01T10:00:00+00:00"}),
            id="offset-time",
        ),
        pytest.param(
            _canonical({**_payload(), "issued_at": "2025-04-01T10:00:00.5Z"}), id="fraction"
        ),
        pytest.param(_canonical({**_payload(), "issued_at": "2025-02-30T10:00:00Z"}), id="no-day"),
        pytest.param(
            _canonical({**_payload(), "expires_at": _payload()["issued_at"]}), id="zero-lifetime"
        ),
        pytest.param(_canonical({**_payload(), "body_digest": "0" * 63}), id="short-digest"),
        pytest.param(
            _canonical({**_payload(), "provider_person_code": "\u00e9"}), id="escaped-non-ascii"
        ),
        pytest.param(json.dumps(_payload(), sort_keys=True).encode(), id="non-canonical-spaces"),
        pytest.param(json.dumps(_payload()).encode(), id="non-canonical-order"),
        pytest.param(
            json.dumps(_payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            .replace('"Ed25519"', '"Ed\\u0032\\u0035519"')
            .encode(),
            id="needless-escapes",
        ),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"[" * 1400 + b"]" * 1400, id="deep"),
        pytest.param(b"\xff\xfe", id="not-ascii"),
        pytest.param(b"", id="empty-payload"),
        pytest.param(_canonical(_payload()) + b" ", id="trailing-space"),
    ],
)
def test_malformed_payloads_even_when_signed(payload: bytes) -> None:
    with pytest.raises(PermitMalformedError):
        _verify(_signed_payload(payload))


def test_error_codes_are_stable() -> None:
    expected = {
        PermitMalformedError: "permit_malformed",
        PermitSignatureError: "permit_signature_invalid",
        PermitUnknownKeyError: "permit_key_unknown",
        PermitExpiredError: "permit_expired",
        PermitNotYetValidError: "permit_not_yet_valid",
        PermitAudienceError: "permit_audience",
        PermitBodyMismatchError: "permit_body_mismatch",
        PermitReplayedError: "permit_replayed",
    }
    for cls, code in expected.items():
        assert cls.code == code
        assert issubclass(cls, PermitError)
        assert issubclass(cls, PermitsError)


def test_peek_names_the_permit_without_trusting_it() -> None:
    """A provider names a permit it refuses; peeking verifies nothing and never raises."""
    forged = encode_permit(PERMIT, OTHER)
    assert peek_permit_id(TOKEN) == PERMIT.permit_id
    assert peek_permit_id(forged) == PERMIT.permit_id  # named, still refused by verify
    assert peek_permit_id("") is None
    assert peek_permit_id("not.a.permit") is None
    assert peek_permit_id(TOKEN[:-3]) is None
