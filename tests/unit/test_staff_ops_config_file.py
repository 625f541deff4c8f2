"""``[staff] long_session_hours`` and ``[ops] refusals_per_minute`` in the gateway's TOML:
their defaults, a value landing in its field, a bad value refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config_files import gateway_toml

from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.errors import ConfigFileError
from chukan.gateway.core.settings import (
    DEFAULT_LONG_SESSION_HOURS,
    DEFAULT_REFUSALS_PER_MINUTE,
    OpsConfig,
    StaffConfig,
)


def test_the_defaults_are_eight_hours_and_sixty_refusals(tmp_path: Path) -> None:
    config = load_gateway_config(gateway_toml(tmp_path))
    assert config.staff.long_session_hours == DEFAULT_LONG_SESSION_HOURS == 8.0
    assert config.ops.refusals_per_minute == DEFAULT_REFUSALS_PER_MINUTE == 60


def test_the_settings_land_in_their_fields(tmp_path: Path) -> None:
    path = gateway_toml(tmp_path, staff="long_session_hours = 4.5", ops="refusals_per_minute = 200")
    config = load_gateway_config(path)
    assert config.staff.long_session_hours == 4.5
    assert config.ops.refusals_per_minute == 200
    # A whole number of hours is a number too.
    config = load_gateway_config(gateway_toml(tmp_path, staff="long_session_hours = 12"))
    assert config.staff.long_session_hours == 12


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"staff": "long_session_hours = 0"}, "long_session_hours"),
        ({"staff": "long_session_hours = 9000"}, "long_session_hours"),
        ({"staff": 'long_session_hours = "eight"'}, "long_session_hours"),
        ({"ops": "refusals_per_minute = 0"}, "refusals_per_minute"),
        ({"ops": "refusals_per_minute = 1.5"}, "refusals_per_minute"),
    ],
)
def test_bad_values_are_refused_naming_the_key(
    tmp_path: Path, tables: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigFileError, match=key):
        load_gateway_config(gateway_toml(tmp_path, **tables))


def test_the_config_classes_refuse_bad_values_themselves() -> None:
    with pytest.raises(ValueError, match="long_session_hours"):
        StaffConfig(long_session_hours=-1)
    with pytest.raises(ValueError, match="refusals_per_minute"):
        OpsConfig(refusals_per_minute=0)
