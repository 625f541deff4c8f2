"""Libraries' standard-library log records become the same scrubbed JSON events."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import structlog


def test_a_library_warning_is_a_json_event_without_personal_numbers(log_capture: Any) -> None:
    marker = secrets.token_hex(4)
    try:
        raise ConnectionResetError(marker)
    except ConnectionResetError:
        # 123456789018 has a valid check digit: it must never reach a sink.
        logging.getLogger("asyncpg.pool").exception("restore failed %s 123456789018", marker)
    logging.getLogger("asyncpg.pool").debug("below the threshold %s", marker)
    events = [e for e in log_capture.events() if marker in e["event"]]
    assert len(events) == 1
    (event,) = events
    assert event["logger"] == "asyncpg.pool" and event["level"] == "error"
    assert "123456789018" not in event["event"] and "<redacted>" in event["event"]
    assert "ConnectionResetError" in event["exception"]


def test_an_event_is_one_line_whatever_characters_it_carries(log_capture: Any) -> None:
    """A request path may carry U+2028, U+2029 or NEL: each event stays one line for every
    line-oriented reader (str.splitlines, log shippers), and reads back the same."""
    marker = secrets.token_hex(4)
    path = f"/internal/v1/persons/{marker}\u2028x\u2029y\x85z\nw\r\x0bv"
    structlog.get_logger("chukan.test").info("http_request", path=path, marker=marker)
    lines = [line for line in log_capture.getvalue().splitlines() if marker in line]
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["path"] == path and event["event"] == "http_request"
