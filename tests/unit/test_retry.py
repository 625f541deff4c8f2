"""Backoff: doubling up to a cap, and jitter that stays within half a step."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chukan.gateway.core.retry import backoff_delay, jittered_backoff


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=0.01, max_value=600),
)
def test_jitter_stays_between_half_and_all_of_the_capped_step(
    attempt: int, base: float, cap: float
) -> None:
    step = backoff_delay(attempt, base, cap)
    assert step <= cap
    delay = jittered_backoff(attempt, base, cap).total_seconds()
    assert step / 2 - 1e-6 <= delay <= step + 1e-6


def test_steps_double_until_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
