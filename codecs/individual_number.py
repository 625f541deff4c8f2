"""個人番号 (My Number): shape and check digit (番号法施行令 第8条).

The number is validated and then forgotten: nothing here stores or prints it.
"""

from __future__ import annotations

import secrets
from typing import Final

INDIVIDUAL_NUMBER_LENGTH: Final = 12


def check_digit(first_eleven: str) -> int:
    """Check digit over the first 11 digits: weights n+1 (n ≤ 6) or n-5, counted from the right."""
    if len(first_eleven) != 11 or not first_eleven.isascii() or not first_eleven.isdigit():
        raise ValueError("expected 11 ASCII digits")
    total = 0
    for n, digit in enumerate(reversed(first_eleven), start=1):
        weight = n + 1 if n <= 6 else n - 5
        total += int(digit) * weight
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def is_valid_individual_number(value: str) -> bool:
    if len(value) != INDIVIDUAL_NUMBER_LENGTH or not value.isascii() or not value.isdigit():
        return False
    return check_digit(value[:11]) == int(value[11])


def generate_individual_number() -> str:
    """A synthetic, check-digit-valid number for tests and the demo."""
    body = "".join(secrets.choice("0123456789") for _ in range(11))
    return body + str(check_digit(body))
