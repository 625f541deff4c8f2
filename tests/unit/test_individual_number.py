"""個人番号 check digit (番号法施行令 第8条) and the log scrubber built on it."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from chukan.codecs.individual_number import (
    check_digit,
    generate_individual_number,
    is_valid_individual_number,
)
from chukan.gateway.core.logs import REDACTED, configure_logging


def test_published_example_is_valid() -> None:
    # The example used in public explanations of the rule.
    assert check_digit("12345678901") == 8
    assert is_valid_individual_number("123456789018")


@given(st.text(alphabet="0123456789", min_size=11, max_size=11))
def test_exactly_one_check_digit_is_valid(body: str) -> None:
    valid = [d for d in "0123456789" if is_valid_individual_number(body + d)]
    assert valid == [str(check_digit(body))]


@pytest.mark.parametrize(
    "value", ["", "12345678901", "1234567890180", "12345678901a", "１２３４５６７８９０１８"]
)
def test_malformed_numbers_are_invalid(value: str) -> None:
    assert not is_valid_individual_number(value)


def test_generated_numbers_are_valid() -> None:
    assert all(is_valid_individual_number(generate_individual_number()) for _ in range(200))


def test_check_digit_refuses_wrong_input() -> None:
    with pytest.raises(ValueError, match="11 ASCII digits"):
        check_digit("123")


def test_logs_never_show_an_individual_number(log_capture: Any) -> None:
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream=stream)
    try:
        number = generate_individual_number()
        structlog.get_logger("t").info(
            "oops", text=f"number {number} here", nested={"list": [number]}, other="123456789012"
        )
        event = json.loads(stream.getvalue())
        assert number not in stream.getvalue()
        assert event["text"] == f"number {REDACTED} here"
        assert event["nested"]["list"] == [REDACTED]
        # Twelve digits that are not a valid 個人番号 (e.g. an 宛名番号 part) are left alone.
        if not is_valid_individual_number("123456789012"):
            assert event["other"] == "123456789012"
    finally:  # back to the session's capture (structlog and the libraries' handler)
        configure_logging(logging.DEBUG, stream=log_capture)
