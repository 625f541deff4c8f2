"""Backoff between attempts: one formula for every retry loop (sweep, hub, 国保連)."""

from __future__ import annotations

import datetime as dt
import random


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before the attempt after ``attempt`` (1-based): base, 2·base, 4·base… ≤ cap."""
    return min(cap, base * 2.0 ** max(attempt - 1, 0))


def jittered_backoff(attempt: int, base: float, cap: float) -> dt.timedelta:
    """:func:`backoff_delay` with "equal jitter": between half and all of the step.

    Jitter spreads the retries of many items that failed together (an outage ends)
    so they do not all come back at the same instant.
    """
    step = backoff_delay(attempt, base, cap)
    return dt.timedelta(seconds=step / 2 + random.uniform(0, step / 2))  # noqa: S311 -- not a secret
