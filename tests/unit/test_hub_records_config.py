"""The hub's ``[records]`` table: checkpoints of its record chain and the witness file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from chukan.gateway.core.errors import ConfigKeyUnknownError
from chukan.simulators.hub.config import DEFAULT_WITNESS_FILE
from chukan.simulators.hub.config_file import load_hub_config

BASE = (
    '[database]\nurl = "postgresql://hub@db/chukan_hub"\n\n'
    '[keys]\ndir = "hub-keys"\npassphrase_env = "TEST_HUB_PASSPHRASE"\n\n'
    '[admin]\ntoken_env = "TEST_HUB_ADMIN_TOKEN"\n\n'
)


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HUB_PASSPHRASE", "a passphrase of the hub's keys")
    monkeypatch.setenv("TEST_HUB_ADMIN_TOKEN", "hub-admin")


def test_the_witness_file_defaults_to_the_key_folder(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(BASE, encoding="utf-8")
    config = load_hub_config(path)
    assert config.witness_path == tmp_path / "hub-keys" / DEFAULT_WITNESS_FILE
    assert config.checkpoint_every == 1000


def test_the_records_table_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    records = (
        '[records]\nwitness_file = "audit/witness.jsonl"\ncheckpoint_every = 50\n'
        "checkpoint_interval = 2.5\ncheckpoint_poll = 0.5\n"
    )
    path.write_text(BASE + records, encoding="utf-8")
    config = load_hub_config(path)
    assert config.witness_path == tmp_path / "audit" / "witness.jsonl"
    assert config.checkpoint_every == 50
    assert config.checkpoint_interval == dt.timedelta(seconds=2.5)
    assert config.checkpoint_poll == 0.5
    path.write_text(BASE + records + "witness = 1\n", encoding="utf-8")
    with pytest.raises(ConfigKeyUnknownError, match=r"\[records\]: unknown key witness"):
        load_hub_config(path)
    # The records settings are not timing settings.
    path.write_text(BASE + "[timing]\ncheckpoint_every = 5\n", encoding="utf-8")
    with pytest.raises(ConfigKeyUnknownError, match=r"\[timing\]: unknown key checkpoint_every"):
        load_hub_config(path)
