"""The 国保連 simulator's TOML configuration file → ``KokuhorenConfig``.

``chukan kokuhoren serve --config FILE.toml`` reads it (README, "Running each
server on its own").  The rules are the gateway's (:mod:`chukan.gateway.core.tomlconfig`):
unknown keys refused, secrets only as ``*_file`` / ``*_env``, paths relative to
the file.

Tables: ``[server]`` (host, port), ``[database]`` (url, password), ``[keys]``
(dir, passphrase), ``[admin]`` (token), ``[tls]`` (CA, server certificate and
key: the simulator calls no one, so it has no client certificate),
``[mailbox]`` (``max_file_bytes``, ``require_client_certificate``).
"""

from __future__ import annotations

from pathlib import Path

from chukan.gateway.core.tomlconfig import read_toml
from chukan.simulators.kokuhoren.config import KokuhorenConfig

#: ``KokuhorenConfig`` fields that are not ``[mailbox]`` settings.
NOT_MAILBOX = ("database_url", "key_dir", "key_passphrase", "admin_token", "host", "port", "tls")


def load_kokuhoren_config(path: Path) -> KokuhorenConfig:
    """Read and check ``path``; every problem is a ``ConfigFileError`` naming table and key."""
    root = read_toml(path)
    server = root.table("server")
    database = root.table("database")
    keys = root.table("keys")
    admin = root.table("admin")
    mailbox = root.table("mailbox")
    tls = root.tls(client=False)
    config = KokuhorenConfig(
        database_url=database.database_url(),
        key_dir=keys.path("dir"),
        key_passphrase=keys.secret("passphrase"),
        admin_token=admin.secret_text("token"),
        host=server.optional_text("host", "127.0.0.1") or "127.0.0.1",
        port=server.port("port", 0),
        tls=tls,
        **mailbox.dataclass_fields(KokuhorenConfig, skip=NOT_MAILBOX),
    )
    if config.require_client_certificate and tls is None:
        raise mailbox.error("require_client_certificate", "needs a [tls] table")
    root.finish()
    return config
