"""Parameters checked the same way on every route: 保険者番号, ファイル管理番号, month."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from chukan.codecs.kokuhoren import YearMonth
from chukan.codecs.kokuhoren_fields import is_valid_insurer_number
from chukan.gateway.core.errors import ValidationError

MONTH_PATTERN: Final = re.compile(r"^[0-9]{6}$")
FILE_NUMBER_PATTERN: Final = re.compile(r"^[0-9]{10}$")


def insurer_number(value: str) -> str:
    """A 保険者番号 as 国保連 accepts it: 6 digits with a valid check digit."""
    if not is_valid_insurer_number(value):
        raise ValidationError("保険者番号 must be 6 digits with a valid check digit")
    return value


def file_number(request: web.Request) -> str:
    """The ファイル管理番号 of the path: 10 digits."""
    fmn = request.match_info["file_management_number"]
    if not FILE_NUMBER_PATTERN.match(fmn):
        raise ValidationError("ファイル管理番号 must be 10 digits")
    return fmn


def processing_month(value: str | None) -> YearMonth:
    """A processing month ``YYYYMM`` that names a real month."""
    if value is None or not MONTH_PATTERN.match(value):
        raise ValidationError("month must be YYYYMM")
    try:
        return YearMonth(int(value[:4]), int(value[4:]))
    except ValueError:
        raise ValidationError("month must be a real month YYYYMM") from None
