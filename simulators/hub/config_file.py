"""The hub's TOML configuration file → :class:`~chukan.simulators.hub.config.HubConfig`.

``chukan hub serve --config FILE.toml`` reads it (README, "Running each server
on its own").  The rules are the gateway's (:mod:`chukan.gateway.core.tomlconfig`):
unknown keys refused, secrets only as ``*_file`` / ``*_env``, durations in
seconds, paths relative to the file.

Tables: ``[server]`` (host, port), ``[database]`` (url, password), ``[keys]``
(dir, passphrase), ``[admin]`` (token), ``[tls]``, ``[timing]`` (the
``HubConfig`` durations and delivery settings), ``[records]`` (checkpoint_every,
checkpoint_interval, checkpoint_poll: the hub's record checkpoints; witness_file: the
JSON lines file each checkpoint is appended to, default in the key folder).  The
authorization list is not configured here: the hub starts with the newest version it
published before (or the sample list) and operators publish new ones through its admin
API.
"""

from __future__ import annotations

from pathlib import Path

from chukan.gateway.core.tomlconfig import read_toml
from chukan.simulators.hub.config import HubConfig

#: ``HubConfig`` fields of the ``[records]`` table.
RECORDS = ("checkpoint_every", "checkpoint_interval", "checkpoint_poll", "witness_file")

#: ``HubConfig`` fields that are not ``[timing]`` settings.
NOT_TIMING = (
    "database_url",
    "key_dir",
    "key_passphrase",
    "admin_token",
    "host",
    "port",
    "authorization_list",
    "tls",
    *RECORDS,
)


def load_hub_config(path: Path) -> HubConfig:
    """Read and check ``path``; every problem is a ``ConfigFileError`` naming table and key."""
    root = read_toml(path)
    server = root.table("server")
    database = root.table("database")
    keys = root.table("keys")
    admin = root.table("admin")
    records = root.table("records")
    config = HubConfig(
        database_url=database.database_url(),
        key_dir=keys.path("dir"),
        key_passphrase=keys.secret("passphrase"),
        admin_token=admin.secret_text("token"),
        host=server.optional_text("host", "127.0.0.1") or "127.0.0.1",
        port=server.port("port", 0),
        tls=root.tls(),
        witness_file=records.optional_path("witness_file"),
        **records.dataclass_fields(HubConfig, skip=("witness_file",)),
        **root.table("timing").dataclass_fields(HubConfig, skip=NOT_TIMING),
    )
    root.finish()
    return config
