"""The gateway's TOML configuration file → :class:`~chukan.gateway.core.config.GatewayConfig`.

``chukan gateway serve --config FILE.toml`` reads it; README ("Running each
server on its own") shows a complete example.  The rules (unknown keys refused,
secrets only as ``*_file`` / ``*_env``, durations in seconds, paths relative to
the file) are those of :mod:`chukan.gateway.core.tomlconfig`.

Tables: ``[agency]``, ``[server]``, ``[database]``, ``[keys]``, ``[hub]``,
``[tls]``, ``[[systems]]``, ``[timing]``, ``[records]``, ``[staff]``
(``[staff.initial_admin]``), ``[ops]``, ``[kokuhoren]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

from chukan.gateway.core.config import GatewayConfig, KokuhorenLink, SystemCredential, Timing
from chukan.gateway.core.settings import InitialAdmin, OpsConfig, RecordsConfig, StaffConfig
from chukan.gateway.core.tomlconfig import FILE_SUFFIX, Table, read_toml
from chukan.keys import KeysError, b64d, public_encryption_key, public_signing_key

#: Key ids of a peer's keys given without one are derived as the peer derives them.
HUB_KEY_OWNER: Final = "hub"
KOKUHOREN_KEY_OWNER: Final = "kokuhoren"
SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and check ``path``; every problem is a ``ConfigFileError`` naming table and key."""
    root = read_toml(path)
    agency = root.table("agency")
    server = root.table("server")
    database = root.table("database")
    keys = root.table("keys")
    hub = root.table("hub")
    public_endpoint = server.optional_text("public_endpoint")
    if public_endpoint is not None:
        server.check_url("public_endpoint", public_endpoint)
    migration_url = None
    if database.has("migration"):
        migration_url = database.table("migration").database_url()
    staff = root.table("staff")
    try:
        config = GatewayConfig(
            agency_code=agency.text("code"),
            agency_name=agency.text("name"),
            insurer_number=agency.optional_text("insurer_number"),
            database_url=database.database_url(),
            migration_database_url=migration_url,
            hub_url=hub.url("url"),
            hub_key=hub.signing_key("signing_key", HUB_KEY_OWNER),
            enrolment_token=hub.secret_text("enrolment_token"),
            key_dir=keys.path("dir"),
            key_passphrase=keys.secret("passphrase"),
            systems=tuple(_system(table) for table in root.tables("systems")),
            host=server.optional_text("host", "127.0.0.1") or "127.0.0.1",
            port=server.port("port", 0),
            public_endpoint=None if public_endpoint is None else public_endpoint.rstrip("/"),
            reuse_port=server.flag("reuse_port", False),
            timing=Timing(**root.table("timing").dataclass_fields(Timing)),
            tls=root.tls(),
            kokuhoren=_kokuhoren(root.table("kokuhoren")) if root.has("kokuhoren") else None,
            records=RecordsConfig(**root.table("records").dataclass_fields(RecordsConfig)),
            staff=StaffConfig(
                **staff.dataclass_fields(StaffConfig, skip=("initial_admin",)),
                initial_admin=_initial_admin(staff),
            ),
            ops=OpsConfig(**root.table("ops").dataclass_fields(OpsConfig)),
        )
    except ValueError as exc:  # a value the config classes refuse (insurer number, …)
        raise root.error(None, str(exc)) from None
    root.finish()
    return config


def _system(table: Table) -> SystemCredential:
    """``[[systems]]``: ``id``, ``operations``, and ``token_sha256`` (none: certificate only)."""
    digest = table.optional_text("token_sha256", "") or ""
    if digest and not SHA256_HEX.match(digest):
        raise table.error("token_sha256", "must be 64 lowercase hex digits (SHA-256 of the token)")
    try:
        return SystemCredential(table.text("id"), digest, frozenset(table.texts("operations")))
    except ValueError as exc:
        raise table.error("operations", str(exc)) from None


def _initial_admin(staff: Table) -> InitialAdmin | None:
    if not staff.has("initial_admin"):
        return None
    admin = staff.table("initial_admin")
    return InitialAdmin(admin.text("username"), admin.text("password_hash"))


def _kokuhoren(table: Table) -> KokuhorenLink:
    """``[kokuhoren]``: the mailbox URL, this 保険者's token, the mailbox's public keys.

    The keys are ``keys_file`` (the JSON ``GET /mailbox/v1/keys`` answers) or
    ``signing_key`` and ``encryption_key`` (``KEY_ID=BASE64`` each).
    """
    url = table.url("url")
    token = table.secret_text("token")
    keys_file = table.optional_path("keys" + FILE_SUFFIX)
    if keys_file is None:
        signing = table.signing_key("signing_key", KOKUHOREN_KEY_OWNER)
        encryption = table.encryption_key("encryption_key", KOKUHOREN_KEY_OWNER)
        return KokuhorenLink(url, token, encryption, signing)
    try:
        document = json.loads(keys_file.read_text(encoding="utf-8"))
        signing_doc, encryption_doc = document["signing_key"], document["encryption_key"]
        signing = public_signing_key(signing_doc["key_id"], b64d(signing_doc["public"]))
        encryption = public_encryption_key(encryption_doc["key_id"], b64d(encryption_doc["public"]))
    except FileNotFoundError:
        raise table.error("keys_file", f"{keys_file}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, KeysError):
        raise table.error(
            "keys_file", f"{keys_file}: expected the JSON GET /mailbox/v1/keys answers"
        ) from None
    return KokuhorenLink(url, token, encryption, signing)
