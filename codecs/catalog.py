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


# 介護保険 items 千葉市 provides (DESIGN §4/§5 data sets 0101–0400 and 賦課).
INSURED_QUALIFICATION: Final = ItemCode("TM00000000010101", "介護保険被保険者資格情報", "0101")
ADDRESS_EXCEPTION: Final = ItemCode("TM00000000010102", "介護保険住所地特例情報", "0102")
CERTIFICATION: Final = ItemCode("TM00000000010201", "介護保険受給者・要介護認定情報", "0201")
BURDEN_RATIO: Final = ItemCode("TM00000000010202", "介護保険負担割合情報", "0202")
BENEFIT: Final = ItemCode("TM00000000010300", "介護保険給付情報", "0300")
COMPREHENSIVE_PROGRAM: Final = ItemCode(
    "TM00000000010400", "介護予防・日常生活支援総合事業情報", "0400"
)
PREMIUM_BASIS: Final = ItemCode("TM00000000010500", "介護保険料賦課情報", "0500")
# Provided by other municipalities to 千葉市 for premium assessment (項 131).
LOCAL_TAX_INCOME: Final = ItemCode("TM00000000020001", "地方税関係情報（所得・課税）", "2001")

ITEMS: Final[tuple[ItemCode, ...]] = (
    INSURED_QUALIFICATION,
    ADDRESS_EXCEPTION,
    CERTIFICATION,
    BURDEN_RATIO,
    BENEFIT,
    COMPREHENSIVE_PROGRAM,
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
ICHIKAWA_CITY: Final = "122033"  # 市川市
CHIBA_PREFECTURE: Final = "120006"  # 千葉県


@dataclass(frozen=True, slots=True)
class Municipality:
    """A local government and its 6-digit 全国地方公共団体コード (JIS X 0402 + check digit)."""

    code: str
    name: str


#: Every city (市) of 千葉県, in code order: 総務省 全国地方公共団体コード, the 5-digit
#: codes as listed by 国土交通省 (nlftp.mlit.go.jp/ksj/gmlold/codelist/AdminAreaCd.html)
#: plus 大網白里市 (市制 2013-01-01, 12239); the 6th digit is the check digit, which
#: tests/unit/test_municipalities.py recomputes for every entry.
CHIBA_PREFECTURE_CITIES: Final[tuple[Municipality, ...]] = (
    Municipality("121002", "千葉市"),
    Municipality("122025", "銚子市"),
    Municipality("122033", "市川市"),
    Municipality("122041", "船橋市"),
    Municipality("122050", "館山市"),
    Municipality("122068", "木更津市"),
    Municipality("122076", "松戸市"),
    Municipality("122084", "野田市"),
    Municipality("122106", "茂原市"),
    Municipality("122114", "成田市"),
    Municipality("122122", "佐倉市"),
    Municipality("122131", "東金市"),
    Municipality("122157", "旭市"),
    Municipality("122165", "習志野市"),
    Municipality("122173", "柏市"),
    Municipality("122181", "勝浦市"),
    Municipality("122190", "市原市"),
    Municipality("122203", "流山市"),
    Municipality("122211", "八千代市"),
    Municipality("122220", "我孫子市"),
    Municipality("122238", "鴨川市"),
    Municipality("122246", "鎌ケ谷市"),
    Municipality("122254", "君津市"),
    Municipality("122262", "富津市"),
    Municipality("122271", "浦安市"),
    Municipality("122289", "四街道市"),
    Municipality("122297", "袖ケ浦市"),
    Municipality("122301", "八街市"),
    Municipality("122319", "印西市"),
    Municipality("122327", "白井市"),
    Municipality("122335", "富里市"),
    Municipality("122343", "南房総市"),
    Municipality("122351", "匝瑳市"),
    Municipality("122360", "香取市"),
    Municipality("122378", "山武市"),
    Municipality("122386", "いすみ市"),
    Municipality("122394", "大網白里市"),
)

#: Names of every agency the sample authorization list names (16-digit 機関コード of
#: the non-municipal agencies are synthetic: the real ones are not public).
AGENCY_NAMES: Final[dict[str, str]] = {
    CHIBA_PREFECTURE: "千葉県",
    **{city.code: city.name for city in CHIBA_PREFECTURE_CITIES},
    "1000000000000001": "厚生労働大臣",
    "1100000000000001": "全国健康保険協会",
    "1200000000000012": "千葉県内健康保険組合（合成）",
    "1300000000000001": "日本年金機構",
    "1400000000000001": "国家公務員共済組合連合会",
    "1500000000000001": "地方職員共済組合",
    "1600000000000001": "日本私立学校振興・共済事業団",
    "1700000000000012": "千葉県後期高齢者医療広域連合",
    "1800000000000012": "千葉県内国民健康保険組合（合成）",
}


def local_government_check_digit(first_five: str) -> int:
    """Check digit of a 全国地方公共団体コード (weights 6..2, modulus 11).

    The remainder of the weighted sum is taken from 11 and only its last digit
    kept (so 11 → 1 and 10 → 0), as 総務省 defines it.
    """
    if len(first_five) != 5 or not first_five.isascii() or not first_five.isdigit():
        raise ValueError("a 全国地方公共団体コード has five digits before its check digit")
    total = sum(int(d) * w for d, w in zip(first_five, (6, 5, 4, 3, 2), strict=True))
    return (11 - total % 11) % 10


def is_local_government_code(code: str) -> bool:
    """Whether ``code`` is six digits whose last is the check digit of the first five."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return False
    return local_government_check_digit(code[:5]) == int(code[5])
