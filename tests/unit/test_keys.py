"""chukan.keys: hybrid encryption and signatures, including every failure path."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.keys import (
    ENCRYPTION_ALGORITHM,
    AlgorithmError,
    DecryptionError,
    KeyFormatError,
    Sealed,
    SignatureError,
    UnknownKeyError,
    b64d,
    b64e,
    generate_encryption_key,
    generate_signing_key,
    load_encryption_key,
    load_signing_key,
    open_sealed,
    private_key_to_pem,
    public_encryption_key,
    public_signing_key,
    seal,
    verify_with,
)

RECIPIENT = generate_encryption_key("121002")
OTHER = generate_encryption_key("122041")
PASSPHRASE = b"0123456789abcdef-test-only"


def _with_field(sealed: Sealed, field: str, value: bytes) -> Sealed:
    if field == "ciphertext":
        return dataclasses.replace(sealed, ciphertext=value)
    if field == "nonce":
        return dataclasses.replace(sealed, nonce=value)
    return dataclasses.replace(sealed, ephemeral_public=value)


def test_seal_and_open_round_trip() -> None:
    sealed = seal(RECIPIENT.public, b"<Item>secret</Item>", b"query-1")
    assert sealed.algorithm == ENCRYPTION_ALGORITHM
    assert sealed.key_id == RECIPIENT.key_id
    assert b"secret" not in sealed.ciphertext
    assert open_sealed({RECIPIENT.key_id: RECIPIENT}, sealed, b"query-1") == b"<Item>secret</Item>"


def test_every_seal_is_fresh() -> None:
    one = seal(RECIPIENT.public, b"same", b"")
    two = seal(RECIPIENT.public, b"same", b"")
    assert one.ciphertext != two.ciphertext
    assert one.ephemeral_public != two.ephemeral_public


def test_wrong_key_is_refused() -> None:
    sealed = seal(RECIPIENT.public, b"payload", b"aad")
    # The other agency's key under the expected key id: authentication fails.
    impostor = dataclasses.replace(OTHER, key_id=RECIPIENT.key_id)
    with pytest.raises(DecryptionError):
        open_sealed({RECIPIENT.key_id: impostor}, sealed, b"aad")


def test_unknown_key_id_is_refused() -> None:
    sealed = seal(RECIPIENT.public, b"payload", b"aad")
    with pytest.raises(UnknownKeyError):
        open_sealed({OTHER.key_id: OTHER}, sealed, b"aad")
    with pytest.raises(UnknownKeyError):
        open_sealed(lambda _key_id: None, sealed, b"aad")


def test_other_context_is_refused() -> None:
    sealed = seal(RECIPIENT.public, b"payload", b"query-1|permit-1")
    with pytest.raises(DecryptionError):
        open_sealed({RECIPIENT.key_id: RECIPIENT}, sealed, b"query-2|permit-1")


def test_unknown_algorithm_is_refused() -> None:
    sealed = dataclasses.replace(seal(RECIPIENT.public, b"x", b""), algorithm="RSA1_5")
    with pytest.raises(AlgorithmError):
        open_sealed({RECIPIENT.key_id: RECIPIENT}, sealed, b"")


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=512),
    field=st.sampled_from(["ciphertext", "nonce", "ephemeral_public"]),
    data=st.data(),
)
def test_any_tampered_byte_is_refused(payload: bytes, field: str, data: st.DataObject) -> None:
    sealed = seal(RECIPIENT.public, payload, b"aad")
    value = bytearray(getattr(sealed, field))
    index = data.draw(st.integers(0, len(value) - 1))
    value[index] ^= data.draw(st.integers(1, 255))
    tampered = _with_field(sealed, field, bytes(value))
    with pytest.raises(DecryptionError):
        open_sealed({RECIPIENT.key_id: RECIPIENT}, tampered, b"aad")


def test_truncated_fields_are_refused() -> None:
    sealed = seal(RECIPIENT.public, b"payload", b"")
    for field, value in (("nonce", sealed.nonce[:-1]), ("ephemeral_public", b"\x00" * 31)):
        with pytest.raises(DecryptionError):
            open_sealed({RECIPIENT.key_id: RECIPIENT}, _with_field(sealed, field, value), b"")


def test_low_order_ephemeral_key_is_refused() -> None:
    sealed = dataclasses.replace(seal(RECIPIENT.public, b"x", b""), ephemeral_public=b"\x00" * 32)
    with pytest.raises(DecryptionError):
        open_sealed({RECIPIENT.key_id: RECIPIENT}, sealed, b"")


def test_signatures_verify_and_fail_closed() -> None:
    signer = generate_signing_key("hub")
    other = generate_signing_key("hub")
    signature = signer.sign(b"message")
    signer.public.verify(b"message", signature)
    with pytest.raises(SignatureError):
        signer.public.verify(b"messagE", signature)
    with pytest.raises(SignatureError):
        other.public.verify(b"message", signature)
    with pytest.raises(SignatureError):
        signer.public.verify(b"message", signature[:-1])
    trusted = {signer.key_id: signer.public}
    assert verify_with(trusted, signer.key_id, b"message", signature) == signer.public
    with pytest.raises(UnknownKeyError):
        verify_with(trusted, other.key_id, b"message", other.sign(b"message"))


def test_key_ids_name_owner_purpose_and_differ() -> None:
    assert RECIPIENT.key_id.startswith("121002.enc.")
    assert generate_signing_key("hub").key_id.startswith("hub.sig.")
    assert RECIPIENT.key_id != generate_encryption_key("121002").key_id


def test_private_keys_at_rest_need_the_passphrase() -> None:
    signer = generate_signing_key("121002")
    pem = private_key_to_pem(signer.private_key, PASSPHRASE)
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert load_signing_key("121002", pem, PASSPHRASE).key_id == signer.key_id
    with pytest.raises(KeyFormatError):
        load_signing_key("121002", pem, b"wrong passphrase 123456")
    with pytest.raises(KeyFormatError):
        load_encryption_key("121002", pem, PASSPHRASE)  # a signing key is not an X25519 key
    enc_pem = private_key_to_pem(RECIPIENT.private_key, PASSPHRASE)
    assert load_encryption_key("121002", enc_pem, PASSPHRASE).key_id == RECIPIENT.key_id
    with pytest.raises(KeyFormatError):
        private_key_to_pem(signer.private_key, b"short")


def test_public_keys_from_transport_are_checked() -> None:
    assert public_encryption_key("k", RECIPIENT.public.raw).raw == RECIPIENT.public.raw
    with pytest.raises(KeyFormatError):
        public_encryption_key("k", b"\x01" * 31)
    with pytest.raises(KeyFormatError):
        public_signing_key("k", b"\x01" * 33)


@given(st.binary(max_size=100))
def test_base64url_round_trip(data: bytes) -> None:
    assert b64d(b64e(data)) == data
    assert "=" not in b64e(data)


def test_base64url_refuses_non_ascii() -> None:
    with pytest.raises(KeyFormatError):
        b64d("ü")
