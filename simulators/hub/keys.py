"""The hub's registry of agencies' public keys, with rotation (DESIGN §6).

An agency publishes its current signing and encryption keys and, with a key
ring, every key still valid: active ones and retiring ones until the end of
their overlap (``valid_until``).  Keys it no longer lists are closed at once.
Signatures are checked only under keys valid now, and senders seal only to the
agency's current encryption key (``agencies.encryption_key``).

Every key id must be the one :func:`chukan.keys.key_id_for` derives from the
agency code, the purpose and the public key, so a key id names exactly one key
of exactly one agency.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chukan.gateway.core import db
from chukan.gateway.core.errors import ForbiddenError, ValidationError
from chukan.gateway.core.web import require_str
from chukan.keys import (
    PublicEncryptionKey,
    PublicSigningKey,
    b64d,
    key_id_for,
    public_encryption_key,
    public_signing_key,
)

MAX_PUBLISHED_KEYS = 32


@dataclass(frozen=True, slots=True)
class RegistryKey:
    key_id: str
    purpose: str
    raw: bytes
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None


def _when(entry: Mapping[str, Any], name: str) -> dt.datetime | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be an ISO 8601 timestamp")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{name} must be an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ValidationError(f"{name} must carry a time zone")
    return moment


def _checked_id(code: str, purpose: str, key_id: str, raw: bytes) -> None:
    if key_id != key_id_for(code, purpose, raw):
        raise ValidationError(f"key id {key_id} is not the id of that {purpose} key of {code}")


def parse_key(code: str, entry: object, purpose: str | None = None) -> RegistryKey:
    """One published key, checked: shape, key bytes, id derived from agency, purpose and key."""
    if not isinstance(entry, Mapping):
        raise ValidationError("each key must be an object")
    kind = purpose or entry.get("purpose")
    if kind not in ("sig", "enc"):
        raise ValidationError("key purpose must be sig or enc")
    key_id = require_str(entry, "key_id")
    raw = b64d(require_str(entry, "public"))
    public: PublicSigningKey | PublicEncryptionKey = (
        public_signing_key(key_id, raw) if kind == "sig" else public_encryption_key(key_id, raw)
    )
    _checked_id(code, kind, key_id, public.raw)
    return RegistryKey(key_id, kind, raw, _when(entry, "valid_from"), _when(entry, "valid_until"))


def parse_published(code: str, data: Mapping[str, Any]) -> list[RegistryKey] | None:
    """The optional ``keys`` list of an enrolment; None when the agency sent none."""
    entries = data.get("keys")
    if entries is None:
        return None
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_PUBLISHED_KEYS:
        raise ValidationError(f"keys must be a list of 1 to {MAX_PUBLISHED_KEYS} keys")
    keys = [parse_key(code, entry) for entry in entries]
    if len({k.key_id for k in keys}) != len(keys):
        raise ValidationError("keys must not repeat")
    return keys


async def store_keys(
    conn: db.Conn,
    code: str,
    current: Sequence[RegistryKey],
    published: Sequence[RegistryKey] | None,
) -> None:
    """Record the agency's keys; with a published list, close every key it no longer lists."""
    listed = list(published or ())
    for key in current:
        if not any(k.key_id == key.key_id for k in listed):
            if published is not None:
                raise ValidationError(f"current key {key.key_id} is missing from keys")
            listed.append(key)
    for key in listed:
        owner = await conn.fetchval(
            "SELECT agency_code FROM agency_keys WHERE key_id = $1", key.key_id
        )
        if owner is not None and owner != code:
            raise ForbiddenError("that key id belongs to another agency")
        await conn.execute(
            """INSERT INTO agency_keys (key_id, agency_code, purpose, public_key,
                                        valid_from, valid_until)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (key_id) DO UPDATE SET
                   valid_from = COALESCE(EXCLUDED.valid_from, agency_keys.valid_from),
                   valid_until = EXCLUDED.valid_until""",
            key.key_id,
            code,
            key.purpose,
            key.raw,
            key.valid_from,
            key.valid_until,
        )
    if published is not None:
        await conn.execute(
            """UPDATE agency_keys SET valid_until = now()
               WHERE agency_code = $1 AND NOT (key_id = ANY($2::text[]))
                 AND (valid_until IS NULL OR valid_until > now())""",
            code,
            [k.key_id for k in listed],
        )
