"""structlog configuration: JSON events, with personal data scrubbed defensively.

Code never passes a 個人番号 to a logger, but a last processor replaces any
run of 12 digits whose check digit is valid, so a mistake cannot leak one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from chukan.codecs.individual_number import is_valid_individual_number

_TWELVE_DIGITS: Final = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
REDACTED: Final = "<redacted>"
#: Characters JSON may leave raw that line-oriented readers (Python's splitlines, some log
#: shippers) take for line ends: escaped, so one event is always one line.
_LINE_BREAKS: Final = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` whose output never holds a character any reader counts as a line end
    (a request path can carry U+2028, and every later event would be read cut in two)."""
    return json.dumps(value, **kwargs).translate(_LINE_BREAKS)


def _scrub_text(text: str) -> str:
    return _TWELVE_DIGITS.sub(
        lambda m: REDACTED if is_valid_individual_number(m.group(0)) else m.group(0), text
    )


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub_personal_numbers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: no 個人番号-shaped value reaches a log sink."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub(value)
    return event_dict


class _LibraryHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Standard-library records (asyncpg, aiohttp) as the same JSON events."""


def _route_library_logs(level: int, stream: TextIO) -> None:
    """Libraries log through :mod:`logging`: render their warnings as JSON events too."""
    handler = _LibraryHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub_personal_numbers,
                structlog.processors.JSONRenderer(one_line_json, ensure_ascii=False),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))


def configure_logging(
    level: int = logging.INFO, stream: TextIO | None = None, *, cache: bool = False
) -> None:
    """JSON lines on ``stream`` (stderr by default), one event per line (libraries' too).

    ``cache``: each module's logger is built once, on its first event, instead of on
    every event (about 2 % of a server's CPU); only for a process configured once for
    its life, such as ``serve`` (tests reconfigure the capture between runs).
    """
    _route_library_logs(level, stream or sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_personal_numbers,
            structlog.processors.JSONRenderer(one_line_json, ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=cache,
    )
