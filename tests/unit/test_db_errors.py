"""Which failures mean "the database is unavailable" (503), which are bugs (500), and the
per-process tracker that logs an outage once instead of once per failure."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import LogCapture

from chukan.gateway.core import db
from chukan.gateway.core.errors import DatabaseUnavailableError, status_for

GOING_AWAY = [
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection due to crash of another"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of op"),
    asyncpg.exceptions.ConnectionFailureError("connection failure"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.InterfaceError("connection is closed"),
    DatabaseUnavailableError("no database"),
]

BUGS = [
    asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.exceptions.PostgresSyntaxError('syntax error at or near "SELEC"'),
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.InterfaceError("pool is closed"),
    ValueError("bad value"),
    ConnectionRefusedError("not raised by asyncpg"),
    TimeoutError(),
]


@pytest.mark.parametrize("exc", GOING_AWAY, ids=lambda e: type(e).__name__)
def test_going_away_is_503_database_unavailable(exc: Exception) -> None:
    assert db.is_database_error(exc)
    assert status_for(exc) == (503, "database_unavailable")


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: f"{type(e).__name__}:{e}")
def test_other_failures_are_not_database_outages(exc: Exception) -> None:
    assert not db.is_database_error(exc)
    assert status_for(exc)[1] != "database_unavailable"


def test_bugs_in_statements_stay_internal_errors() -> None:
    assert status_for(BUGS[0]) == (500, "internal_error")
    assert status_for(BUGS[1]) == (500, "internal_error")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_socket_errors_raised_by_asyncpg_count(tmp_path: Path) -> None:
    with pytest.raises(ConnectionRefusedError) as refused:  # TCP: nothing listens
        await asyncpg.connect(host="127.0.0.1", port=closed_port(), user="u", database="d")
    assert db.is_database_error(refused.value)
    with pytest.raises(FileNotFoundError) as missing:  # unix socket: the server is gone
        await asyncpg.connect(host=str(tmp_path), user="u", database="d")
    assert db.is_database_error(missing.value)
    assert status_for(missing.value) == (503, "database_unavailable")


async def test_socket_errors_of_http_calls_do_not_count() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.get(f"http://127.0.0.1:{closed_port()}/")
    assert isinstance(refused.value, OSError)
    assert not db.is_database_error(refused.value)


def test_tracker_logs_each_change_once(log_capture: LogCapture) -> None:
    tracker = db.Availability()
    offset = len(log_capture.events())
    assert not tracker.note_available()  # already available: nothing to say
    assert tracker.note_unavailable(GOING_AWAY[0])
    assert not tracker.note_unavailable(GOING_AWAY[1])
    assert not tracker.note_unavailable(GOING_AWAY[2])
    assert not tracker.available and tracker.last_error == "CannotConnectNowError"
    assert tracker.note_available()
    assert not tracker.note_available()
    events = [e for e in log_capture.events()[offset:] if e["event"].startswith("database_")]
    assert [e["event"] for e in events] == ["database_unavailable", "database_available"]
    assert events[0]["error"] == "AdminShutdownError" and "exception" not in events[0]
    assert events[1]["failed_operations"] == 3
