"""The agencies option of chukan's pytest plugin: `--chukan-agencies`, ini `chukan_agencies`."""

from __future__ import annotations

import pytest

from chukan.codecs.catalog import CHIBA_CITY, FUNABASHI_CITY
from chukan.simulators.devnet.network import DEMO_AGENCIES
from chukan.testing import chosen_agencies, parse_agencies


def test_demo_codes_take_their_names_and_others_a_test_name() -> None:
    assert parse_agencies([f"{CHIBA_CITY},129981"]) == (
        (CHIBA_CITY, "千葉市"),
        ("129981", "試験機関129981"),
    )


def test_names_given_win_and_items_split_on_commas_or_spaces() -> None:
    assert parse_agencies([f"{FUNABASHI_CITY}:船橋", "129981:試験市, 1234567890123456"]) == (
        (FUNABASHI_CITY, "船橋"),
        ("129981", "試験市"),
        ("1234567890123456", "試験機関1234567890123456"),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["12100"], "'12100' is not an agency code"),
        (["abcdef"], "'abcdef' is not an agency code"),
        ([":千葉市"], "'' is not an agency code"),
        ([f"{CHIBA_CITY},{CHIBA_CITY}:千葉"], f"{CHIBA_CITY} is listed twice"),
        ([" , "], "name at least one agency"),
    ],
)
def test_malformed_lists_are_usage_errors(values: list[str], message: str) -> None:
    with pytest.raises(pytest.UsageError, match=message):
        parse_agencies(values)


def test_without_option_or_ini_the_demo_agencies_are_chosen(pytestconfig: pytest.Config) -> None:
    # This project sets neither: its tests run against the demo agencies.
    assert chosen_agencies(pytestconfig) == DEMO_AGENCIES
