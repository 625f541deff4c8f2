"""Libraries' standard-library log records become the same scrubbed JSON events."""

from __future__ import annotations

import logging
import secrets
from typing import Any


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
