"""全国地方公共団体コード: the check digit and the cities of 千葉県 the list names."""

from __future__ import annotations

import pytest

from chukan.codecs import catalog


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("121002", "千葉市"),  # 1*6+2*5+1*4 = 20, 20 % 11 = 9, 11-9 = 2
        ("122033", "市川市"),
        ("122041", "船橋市"),
        ("120006", "千葉県"),  # 16 % 11 = 5 → 6
        ("131016", "千代田区"),
    ],
)
def test_known_codes_have_valid_check_digits(code: str, name: str) -> None:
    assert catalog.is_local_government_code(code), name


def test_check_digit_keeps_only_the_last_digit() -> None:
    # 01100 (札幌市): 0+5+4+0+0 = 9 → 11-9 = 2
    assert catalog.local_government_check_digit("01100") == 2
    # remainder 0 → 11 → 1; remainder 1 → 10 → 0
    assert catalog.local_government_check_digit("00000") == 1
    assert catalog.local_government_check_digit("00006") == 0  # 6*2 = 12, 12 % 11 = 1
    for first_five in ("00000", "12100", "47382", "99999"):
        total = sum(int(d) * w for d, w in zip(first_five, (6, 5, 4, 3, 2), strict=True))
        assert catalog.local_government_check_digit(first_five) == (11 - total % 11) % 10


@pytest.mark.parametrize("code", ["121003", "12100", "1210022", "12100a", "１２１００２", ""])
def test_invalid_codes_are_refused(code: str) -> None:
    assert not catalog.is_local_government_code(code)


@pytest.mark.parametrize("first_five", ["1210", "121000", "1210a", "１２１００"])
def test_check_digit_needs_five_ascii_digits(first_five: str) -> None:
    with pytest.raises(ValueError, match="five digits"):
        catalog.local_government_check_digit(first_five)


def test_every_city_of_chiba_prefecture_once_with_a_valid_code() -> None:
    cities = catalog.CHIBA_PREFECTURE_CITIES
    assert len(cities) == 37  # 千葉県 has 37 市
    assert len({city.code for city in cities}) == 37
    assert len({city.name for city in cities}) == 37
    for city in cities:
        assert catalog.is_local_government_code(city.code), city
        assert city.code.startswith("12"), city
        assert city.name.endswith("市"), city
    assert [city.code for city in cities] == sorted(city.code for city in cities)
    codes = {city.code: city.name for city in cities}
    assert codes[catalog.CHIBA_CITY] == "千葉市"
    assert codes[catalog.FUNABASHI_CITY] == "船橋市"
    assert codes[catalog.ICHIKAWA_CITY] == "市川市"
