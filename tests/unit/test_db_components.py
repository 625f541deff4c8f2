"""``chukan db`` knows each server's migrations and database without importing the simulators."""

from __future__ import annotations

from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.core.db import COMPONENTS
from chukan.gateway.core.errors import MigrationsPendingError
from chukan.simulators.hub import HUB_DATABASE
from chukan.simulators.kokuhoren.config import KOKUHOREN_DATABASE


def test_default_database_names_agree_with_the_servers() -> None:
    assert {key: c.database for key, c in COMPONENTS.items()} == {
        "gateway": GATEWAY_DATABASE,
        "hub": HUB_DATABASE,
        "kokuhoren": KOKUHOREN_DATABASE,
    }


def test_every_component_ships_migrations_from_0001() -> None:
    for key, component in COMPONENTS.items():
        versions = [m.version for m in component.migrations()]
        assert versions and versions[0] == 1, key
        assert versions == sorted(set(versions)), key


def test_the_refusal_names_what_is_missing_and_what_to_run() -> None:
    error = MigrationsPendingError("hub", ["0020_enrolment_tokens"], [])
    assert error.status == 503 and error.code == "migrations_pending"
    assert "0020_enrolment_tokens" in error.message
    assert "chukan db migrate --component hub" in error.message
    unreadable = MigrationsPendingError("gateway", [], [], unreadable=True)
    assert "schema_migrations" in unreadable.message
    changed = MigrationsPendingError("gateway", [], ["0001_gateway"])
    assert "0001_gateway" in changed.message and "new migration" in changed.message
