"""Key ring rotation with an overlap window, and its encrypted serialisation (chukan.keys.ring)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.keys import (
    KeyFormatError,
    KeysError,
    UnknownKeyError,
    open_sealed,
    seal,
    verify_with,
)
from chukan.keys.errors import KeyRetiredError, NoActiveKeyError
from chukan.keys.ring import (
    DEFAULT_OVERLAP,
    KeyRing,
    RingKey,
    ring_from_bytes,
    ring_to_bytes,
)

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=90)  # the rotation
AAD = b"query:Q-1|permit:P-1|from:131016|to:hub"
PASSPHRASE = b"a long machine-generated passphrase"

# Generated once: rings are immutable, so tests can share them safely.
RING0 = KeyRing.generate("131016", now=T0)
RING1 = RING0.rotate(T1)


def test_generated_ring_has_one_active_key_of_each_kind() -> None:
    assert RING0.overlap == DEFAULT_OVERLAP == timedelta(days=7)
    enc = RING0.current_encryption(T0)
    sig = RING0.current_signing(T0)
    assert enc.key_id.startswith("131016.enc.")
    assert sig.key_id.startswith("131016.sig.")
    assert RING0.decryption_key(enc.key_id, T0) is enc


def test_rotation_retires_the_previous_keys_at_now() -> None:
    old_enc, new_enc = RING1.encryption_keys
    old_sig, new_sig = RING1.signing_keys
    assert old_enc.retired_at == old_sig.retired_at == T1
    assert new_enc.activated_at == new_sig.activated_at == T1
    assert new_enc.retired_at is None
    assert old_enc.pair is RING0.encryption_keys[0].pair
    assert RING0.encryption_keys[0].retired_at is None, "rotate returns a new ring"


def test_new_messages_use_the_new_keys() -> None:
    old = RING0.current_encryption(T0)
    new = RING1.current_encryption(T1)
    assert new.key_id != old.key_id
    sealed = seal(new.public, b"provision", AAD)
    assert sealed.key_id == new.key_id
    assert RING1.unseal(sealed, AAD, now=T1) == b"provision"
    assert RING1.current_signing(T1).key_id != RING0.current_signing(T0).key_id
    # Before the rotation instant the ring would still choose the old key.
    assert RING1.current_encryption(T1 - timedelta(seconds=1)).key_id == old.key_id


def test_old_key_decrypts_within_the_overlap_and_not_after() -> None:
    old = RING0.current_encryption(T0)
    sealed = seal(old.public, b"in flight during rotation", AAD)
    assert RING1.unseal(sealed, AAD, now=T1) == b"in flight during rotation"
    just_inside = T1 + DEFAULT_OVERLAP - timedelta(microseconds=1)
    assert RING1.unseal(sealed, AAD, now=just_inside) == b"in flight during rotation"
    assert RING1.decryption_key(old.key_id, just_inside) is old
    with pytest.raises(KeyRetiredError) as info:
        RING1.unseal(sealed, AAD, now=T1 + DEFAULT_OVERLAP)
    assert info.value.code == "key_retired"
    assert isinstance(info.value, KeysError)
    with pytest.raises(KeyRetiredError):
        RING1.decryption_key(old.key_id, T1 + timedelta(days=30))


def test_overlap_is_a_constructor_argument() -> None:
    ring = KeyRing.generate("131016", now=T0, overlap=timedelta(hours=1)).rotate(T1)
    old_id = ring.encryption_keys[0].key_id
    ring.decryption_key(old_id, T1 + timedelta(minutes=59))
    with pytest.raises(KeyRetiredError):
        ring.decryption_key(old_id, T1 + timedelta(hours=1))
    immediate = KeyRing.generate("131016", now=T0, overlap=timedelta(0)).rotate(T1)
    with pytest.raises(KeyRetiredError):
        immediate.decryption_key(immediate.encryption_keys[0].key_id, T1)


@settings(max_examples=50, deadline=None)
@given(offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)))
def test_retired_key_is_accepted_exactly_while_inside_the_window(offset: timedelta) -> None:
    old_id = RING1.encryption_keys[0].key_id
    if offset < DEFAULT_OVERLAP:
        assert RING1.decryption_key(old_id, T1 + offset).key_id == old_id
    else:
        with pytest.raises(KeyRetiredError):
            RING1.decryption_key(old_id, T1 + offset)
    # The current key is never refused, whatever the time after activation.
    new_id = RING1.encryption_keys[1].key_id
    assert RING1.decryption_key(new_id, T1 + offset).key_id == new_id


def test_unknown_key_ids_are_refused() -> None:
    other = KeyRing.generate("131016", now=T0)
    sealed = seal(other.current_encryption(T0).public, b"not for us", AAD)
    with pytest.raises(UnknownKeyError) as info:
        RING1.unseal(sealed, AAD, now=T1)
    assert info.value.code == "key_unknown"
    with pytest.raises(UnknownKeyError):
        RING1.decryption_key("131016.enc.0000000000000000", T1)
    # A signing key id is not a decryption key either.
    with pytest.raises(UnknownKeyError):
        RING1.decryption_key(RING1.signing_keys[0].key_id, T1)


def test_published_lists_active_and_retiring_keys_with_validity() -> None:
    at = T1 + timedelta(days=1)
    published = RING1.published(at)
    assert [(p.purpose, p.status) for p in published] == [
        ("enc", "active"),
        ("enc", "retiring"),
        ("sig", "active"),
        ("sig", "retiring"),
    ]
    active_enc, retiring_enc = published[0], published[1]
    assert active_enc.key_id == RING1.current_encryption(at).key_id
    assert active_enc.public == RING1.current_encryption(at).public
    assert active_enc.valid_from == T1
    assert active_enc.valid_until is None
    assert retiring_enc.valid_from == T0
    assert retiring_enc.valid_until == T1 + DEFAULT_OVERLAP
    assert {p.algorithm for p in published[2:]} == {"Ed25519"}
    after = RING1.published(T1 + DEFAULT_OVERLAP)
    assert [(p.purpose, p.status) for p in after] == [("enc", "active"), ("sig", "active")]
    assert not any(b"PRIVATE" in repr(p).encode() for p in published)


def test_signatures_from_before_rotation_verify_during_the_overlap() -> None:
    old_signer = RING0.current_signing(T0)
    signature = old_signer.sign(b"permit")
    trusted = RING1.verification_keys(T1 + timedelta(days=1))
    assert set(trusted) == {k.key_id for k in RING1.signing_keys}
    verify_with(trusted, old_signer.key_id, b"permit", signature)
    later = RING1.verification_keys(T1 + DEFAULT_OVERLAP)
    with pytest.raises(UnknownKeyError):
        verify_with(later, old_signer.key_id, b"permit", signature)


def test_prune_drops_expired_keys() -> None:
    assert RING1.prune(T1 + timedelta(days=1)) == RING1
    pruned = RING1.prune(T1 + DEFAULT_OVERLAP)
    assert [k.key_id for k in pruned.encryption_keys] == [RING1.encryption_keys[1].key_id]
    assert [k.key_id for k in pruned.signing_keys] == [RING1.signing_keys[1].key_id]
    with pytest.raises(UnknownKeyError):
        pruned.decryption_key(RING1.encryption_keys[0].key_id, T1 + DEFAULT_OVERLAP)


def test_no_active_key_is_an_error() -> None:
    pair = RING0.encryption_keys[0].pair
    retired = KeyRing(
        "131016",
        (RingKey(pair, T0, retired_at=T1),),
        (RingKey(RING0.signing_keys[0].pair, T0, retired_at=T1),),
    )
    with pytest.raises(NoActiveKeyError) as info:
        retired.current_encryption(T1)
    assert info.value.code == "key_none_active"
    with pytest.raises(NoActiveKeyError):
        retired.current_signing(T0 - timedelta(days=1))
    assert retired.current_signing(T0).key_id == RING0.signing_keys[0].key_id


def test_ring_refuses_inconsistent_construction_and_rotation() -> None:
    enc = RING0.encryption_keys[0]
    sig = RING0.signing_keys[0]
    with pytest.raises(ValueError, match="not a enc key of"):
        KeyRing("other", (enc,), (sig,))
    with pytest.raises(ValueError, match="not a sig key of"):
        KeyRing("131016", (enc,), (RingKey(enc.pair, T0),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        KeyRing("131016", (enc, enc), (sig,))
    with pytest.raises(ValueError, match="retires before"):
        RingKey(enc.pair, T1, retired_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        RingKey(enc.pair, datetime(2025, 4, 1))
    with pytest.raises(ValueError, match="negative"):
        KeyRing("131016", (enc,), (sig,), overlap=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="cannot be rotated"):
        RING0.rotate(T1, "999999")
    assert RING0.rotate(T1, "131016").owner == "131016"
    with pytest.raises(ValueError, match="activating after now"):
        RING1.rotate(T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        RING1.current_encryption(datetime(2025, 4, 1))


def test_rotating_twice_keeps_every_key_until_pruned() -> None:
    t2 = T1 + timedelta(days=3)
    ring = RING1.rotate(t2)
    assert [k.retired_at for k in ring.encryption_keys] == [T1, t2, None]
    assert ring.current_encryption(t2).key_id == ring.encryption_keys[2].key_id
    ring.decryption_key(ring.encryption_keys[1].key_id, t2 + timedelta(days=6))
    ring.decryption_key(ring.encryption_keys[0].key_id, T1 + timedelta(days=6))


# -- serialisation ------------------------------------------------------------------------


SERIALISED = ring_to_bytes(RING1, PASSPHRASE)


def test_serialisation_round_trips() -> None:
    loaded = ring_from_bytes(SERIALISED, PASSPHRASE)
    assert loaded.owner == RING1.owner
    assert loaded.overlap == RING1.overlap
    assert [(k.key_id, k.activated_at, k.retired_at) for k in loaded.encryption_keys] == [
        (k.key_id, k.activated_at, k.retired_at) for k in RING1.encryption_keys
    ]
    assert [(k.key_id, k.activated_at, k.retired_at) for k in loaded.signing_keys] == [
        (k.key_id, k.activated_at, k.retired_at) for k in RING1.signing_keys
    ]
    # The loaded private keys are the same keys, not just the same ids.
    sealed = seal(RING0.current_encryption(T0).public, b"before rotation", AAD)
    assert loaded.unseal(sealed, AAD, now=T1 + timedelta(days=1)) == b"before rotation"
    signature = loaded.current_signing(T1).sign(b"permit")
    RING1.current_signing(T1).public.verify(b"permit", signature)
    assert loaded.published(T1) == RING1.published(T1)


def test_serialisation_keeps_a_custom_overlap() -> None:
    ring = KeyRing.generate("sys-01", now=T0, overlap=timedelta(hours=36, microseconds=5))
    assert ring_from_bytes(ring_to_bytes(ring, PASSPHRASE), PASSPHRASE).overlap == ring.overlap


def test_wrong_or_empty_passphrase_is_a_key_format_error() -> None:
    with pytest.raises(KeyFormatError) as info:
        ring_from_bytes(SERIALISED, b"not the passphrase")
    assert info.value.code == "key_format"
    with pytest.raises(KeyFormatError):
        ring_from_bytes(SERIALISED, b"")
    with pytest.raises(KeyFormatError):
        ring_to_bytes(RING1, b"")


def test_serialised_ring_never_contains_plaintext_private_keys() -> None:
    assert b"BEGIN PRIVATE KEY" not in SERIALISED
    assert SERIALISED.count(b"BEGIN ENCRYPTED PRIVATE KEY") == 4
    privates = [k.pair.private_key for k in RING1.encryption_keys] + [
        k.pair.private_key for k in RING1.signing_keys
    ]
    for private in privates:
        raw = private.private_bytes_raw()
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for secret in (raw, der):
            for form in (
                secret,
                secret.hex().encode(),
                secret.hex().upper().encode(),
                base64.b64encode(secret),
                base64.urlsafe_b64encode(secret).rstrip(b"="),
            ):
                assert form not in SERIALISED
        assert PASSPHRASE not in SERIALISED


def test_edited_document_is_refused() -> None:
    document = json.loads(SERIALISED)
    document["keys"][0]["retired_at"] = (T1 + timedelta(days=3650)).isoformat()
    with pytest.raises(KeyFormatError, match="modified"):
        ring_from_bytes(json.dumps(document).encode(), PASSPHRASE)
    document = json.loads(SERIALISED)
    document["overlap_seconds"] = 10**9
    with pytest.raises(KeyFormatError, match="modified"):
        ring_from_bytes(json.dumps(document).encode(), PASSPHRASE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "something else"}',
        b'{"format": "chukan.keyring.v1"}',
        b'{"format": "chukan.keyring.v1", "mac": "00", "kdf": {"name": "scrypt",'
        b' "n": 1099511627776, "r": 8, "p": 1, "salt": "AAAA"}}',
        b'{"format": "chukan.keyring.v1", "mac": "00", "kdf": {"name": "pbkdf2", "n": 32768,'
        b' "r": 8, "p": 1, "salt": "AAAA"}}',
    ],
    ids=["empty", "text", "array", "other-format", "no-mac", "huge-scrypt", "other-kdf"],
)
def test_malformed_documents_are_key_format_errors(data: bytes) -> None:
    with pytest.raises(KeyFormatError):
        ring_from_bytes(data, PASSPHRASE)


def test_ring_repr_does_not_show_private_material() -> None:
    text = repr(RING1)
    for entry in RING1.encryption_keys:
        assert entry.pair.private_key.private_bytes_raw().hex() not in text
    assert "PRIVATE KEY" not in text


def test_open_sealed_with_ring_lookup_matches_unseal() -> None:
    sealed = seal(RING1.current_encryption(T1).public, b"x", AAD)
    assert open_sealed(lambda kid: RING1.decryption_key(kid, T1), sealed, AAD) == b"x"
