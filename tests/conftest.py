"""Shared fixtures: a real PostgreSQL (embedded unless CHUKAN_DATABASE_URL is set),
captured structlog JSON output, and the real hub and gateways on loopback."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chukan.gateway import db
from chukan.gateway.logs import configure_logging


class LogCapture(io.StringIO):
    """Every structlog event of the session, as the JSON lines a deployment would write."""

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]


@pytest.fixture(scope="session")
def log_capture() -> LogCapture:
    capture = LogCapture()
    configure_logging(logging.DEBUG, stream=capture)
    return capture


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("CHUKAN_DATABASE_URL")
    if url:
        yield url
        return
    # Short path: PostgreSQL's unix socket lives in the data folder (107-byte limit).
    data_dir = Path(tempfile.mkdtemp(prefix="chukan-pg-"))
    embedded = db.EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def db_prefix() -> str:
    """Databases of this test session, so runs against a shared server never collide."""
    return f"chukan_t{secrets.token_hex(3)}_"


@pytest.fixture(scope="session")
async def network(
    pg_server_url: str,
    db_prefix: str,
    log_capture: LogCapture,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Any]:
    from chukan.gateway.server import start_network

    net = await start_network(
        pg_server_url,
        tmp_path_factory.mktemp("network"),
        hub_database=f"{db_prefix}hub",
        database_prefix=f"{db_prefix}gw_",
    )
    try:
        yield net
    finally:
        await net.stop()
