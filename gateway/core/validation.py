"""Shapes of the values core systems send, checked once for every flow."""

from __future__ import annotations

import re
from typing import Final

from chukan.gateway.core.errors import ValidationError

#: 団体内統合宛名番号: 1 to 15 digits.
ATENA_PATTERN: Final = re.compile(r"^[0-9]{1,15}$")
#: A query id (our message ids, or a core system's reference): URL-safe, 8 to 64 characters.
QUERY_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
#: The largest item (one 特定個人情報名 of one person) accepted, in bytes.
MAX_ITEM_BYTES: Final = 1024 * 1024


def atena_id_value(value: str) -> str:
    """``value`` if it is a 団体内統合宛名番号, else 422 ``validation_failed``."""
    if not ATENA_PATTERN.match(value):
        raise ValidationError("団体内統合宛名番号 must be 1 to 15 digits")
    return value
