"""Codes shared by the sample authorization list, the replica and the demo.

The codes are synthetic but follow the real shapes (DESIGN §4): 事務コード
``JM`` + 14 digits, 事務手続きコード ``JT`` + 14 digits, 特定個人情報名コード
``TM`` + 14 digits.  Real code tables are distributed to municipalities by the
デジタル庁 and are not public; one table here keeps every part consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

BUSINESS_CODE_PATTERN: Final = re.compile(r"^JM[0-9]{14}$")
PROCEDURE_CODE_PATTERN: Final = re.compile(r"^JT[0-9]{14}$")
ITEM_CODE_PATTERN: Final = re.compile(r"^TM[0-9]{14}$")
AGENCY_CODE_PATTERN: Final = re.compile(r"^[0-9]{6}(?:[0-9]{10})?$")


@dataclass(frozen=True, slots=True)
class ItemCode:
    """One 特定個人情報名 with its code and the data set (データセット) it comes from."""

    code: str
    name: str
    data_set: str


# 介護保険 items 千葉市 provides (DESIGN §4/§5 data sets 0101–0300 and 賦課).
INSURED_QUALIFICATION: Final = ItemCode("TM00000000010101", "介護保険被保険者資格情報", "0101")
ADDRESS_EXCEPTION: Final = ItemCode("TM00000000010102", "介護保険住所地特例情報", "0102")
CERTIFICATION: Final = ItemCode("TM00000000010201", "介護保険受給者・要介護認定情報", "0201")
BURDEN_RATIO: Final = ItemCode("TM00000000010202", "介護保険負担割合情報", "0202")
BENEFIT: Final = ItemCode("TM00000000010300", "介護保険給付情報", "0300")
PREMIUM_BASIS: Final = ItemCode("TM00000000010500", "介護保険料賦課情報", "0500")
# Provided by other municipalities to 千葉市 for premium assessment (項 131).
LOCAL_TAX_INCOME: Final = ItemCode("TM00000000020001", "地方税関係情報（所得・課税）", "2001")

ITEMS: Final[tuple[ItemCode, ...]] = (
    INSURED_QUALIFICATION,
    ADDRESS_EXCEPTION,
    CERTIFICATION,
    BURDEN_RATIO,
    BENEFIT,
    PREMIUM_BASIS,
    LOCAL_TAX_INCOME,
)
ITEMS_BY_CODE: Final = {item.code: item for item in ITEMS}

# 介護保険 事務 and the procedures the demo uses.
LTC_BUSINESS: Final = "JM00000000000132"
LTC_CERTIFICATION_PROCEDURE: Final = "JT00013200000001"  # 要介護認定に関する事務 (項 132)
LTC_PREMIUM_PROCEDURE: Final = "JT00013100000001"  # 保険料の賦課に関する事務 (項 131)

# Agencies of the demo and tests (全国地方公共団体コード with check digit).
CHIBA_CITY: Final = "121002"  # 千葉市
FUNABASHI_CITY: Final = "122041"  # 船橋市


def local_government_check_digit(first_five: str) -> int:
    """Check digit of a 全国地方公共団体コード (weights 6..2, modulus 11)."""
    total = sum(int(d) * w for d, w in zip(first_five, (6, 5, 4, 3, 2), strict=True))
    return (11 - total % 11) % 10
