"""Key rings at rest, ``chukan keys``, and the TLS configuration values: no secret leaks."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import stat
from pathlib import Path

import pytest

from chukan.gateway.cli.keys import add_keys_parser, run_keys
from chukan.gateway.core.identities import system_identity
from chukan.gateway.core.keyring import (
    enrolment_payload,
    load_or_create_ring,
    published_keys,
    read_ring,
    ring_path,
    write_ring,
)
from chukan.gateway.core.tls import TlsSettings, parse_system_subject, system_subject
from chukan.keys import KeyFormatError
from chukan.keys.ca import ClientIdentity
from chukan.keys.ring import KeyRing
from chukan.simulators.devnet.pki import NetworkPki

PASSPHRASE = b"a-generated-passphrase-for-tests"
NOW = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)
OWNER = "121002"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ring_files_are_private_encrypted_and_round_trip(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    ring = load_or_create_ring(key_dir, OWNER, PASSPHRASE, now=NOW)
    path = ring_path(key_dir, OWNER)
    assert _mode(path) == 0o600 and _mode(key_dir) == 0o700
    data = path.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in data
    assert b"BEGIN PRIVATE KEY" not in data and PASSPHRASE not in data
    again = load_or_create_ring(key_dir, OWNER, PASSPHRASE, now=NOW)
    assert again.current_encryption(NOW).key_id == ring.current_encryption(NOW).key_id
    assert [p.name for p in key_dir.iterdir()] == [path.name]  # no temporary left behind


def test_a_ring_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / f"{OWNER}.ring.json"
    write_ring(path, KeyRing.generate(OWNER, now=NOW), PASSPHRASE)
    path.chmod(0o644)
    with pytest.raises(KeyFormatError, match="chmod 600"):
        read_ring(path, PASSPHRASE)


def test_a_ring_of_another_owner_or_passphrase_is_refused(tmp_path: Path) -> None:
    path = tmp_path / f"{OWNER}.ring.json"
    write_ring(path, KeyRing.generate("122041", now=NOW), PASSPHRASE)
    with pytest.raises(KeyFormatError, match="belongs to 122041"):
        read_ring(path, PASSPHRASE, owner=OWNER)
    with pytest.raises(KeyFormatError) as caught:
        read_ring(path, b"not-the-passphrase-at-all")
    assert "not-the-passphrase" not in str(caught.value)


def test_short_passphrases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError, match="at least 16 bytes"):
        write_ring(tmp_path / "r.ring.json", KeyRing.generate(OWNER, now=NOW), b"short")


def test_what_is_published_holds_no_private_material() -> None:
    ring = KeyRing.generate(OWNER, now=NOW).rotate(NOW + dt.timedelta(days=1))
    later = NOW + dt.timedelta(days=2)
    keys = published_keys(ring, later)
    assert {k["status"] for k in keys} == {"active", "retiring"}
    assert all(k["valid_until"] is None for k in keys if k["status"] == "active")
    from chukan.gateway.core.config import GatewayConfig

    config = GatewayConfig(
        agency_code=OWNER,
        agency_name="千葉市",
        database_url="postgresql://unused",
        hub_url="https://127.0.0.1:1",
        hub_key=ring.current_signing(later).public,
        enrolment_token="token",
        key_dir=Path("unused"),
        key_passphrase=PASSPHRASE,
    )
    text = json.dumps(enrolment_payload(config, "https://127.0.0.1:2", ring, later))
    assert "PRIVATE" not in text and PASSPHRASE.decode() not in text


def _cli(argv: list[str], env: dict[str, str], now: dt.datetime = NOW) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    add_keys_parser(commands)
    out, err = io.StringIO(), io.StringIO()
    status = run_keys(parser.parse_args(argv), out=out, err=err, env=env, now=now)
    return status, out.getvalue(), err.getvalue()


def test_keys_cli_generates_rotates_lists_and_prunes(tmp_path: Path) -> None:
    env = {"CHUKAN_KEY_PASSPHRASE": PASSPHRASE.decode()}
    base = ["keys", "--key-dir", str(tmp_path)]
    status, out, err = _cli([*base, "generate", "--owner", OWNER, "--overlap-hours", "24"], env)
    assert status == 0, err
    assert out.count(" active ") == 2
    status, _, err = _cli([*base, "generate", "--owner", OWNER], env)
    assert status == 1 and "use rotate" in err

    later = NOW + dt.timedelta(hours=1)
    status, out, err = _cli([*base, "rotate"], env, later)
    assert status == 0, err
    assert out.count(" retiring ") == 2 and out.count(" active ") == 2

    status, out, _ = _cli([*base, "list", "--json"], env, later + dt.timedelta(days=2))
    listed = json.loads(out)
    assert listed["owner"] == OWNER and listed["overlap_seconds"] == 24 * 3600
    assert sorted(k["state"] for k in listed["keys"]) == ["active", "active", "expired", "expired"]

    status, out, _ = _cli([*base, "rotate", "--prune"], env, later + dt.timedelta(days=2))
    assert status == 0
    assert "expired" not in out and out.count(" retiring ") == 2
    for text in (out, err):
        assert "PRIVATE" not in text and PASSPHRASE.decode() not in text


def test_keys_cli_refuses_without_passphrase_or_with_ambiguity(tmp_path: Path) -> None:
    base = ["keys", "--key-dir", str(tmp_path)]
    status, _, err = _cli([*base, "list"], {})
    assert status == 1 and "CHUKAN_KEY_PASSPHRASE" in err
    env = {"CHUKAN_KEY_PASSPHRASE": PASSPHRASE.decode()}
    assert _cli([*base, "list"], env)[0] == 1  # no ring yet
    for owner in (OWNER, "122041"):
        assert _cli([*base, "generate", "--owner", owner], env)[0] == 0
    status, _, err = _cli([*base, "rotate"], env)
    assert status == 1 and "--owner" in err
    status, _, err = _cli([*base, "list"], {"CHUKAN_KEY_PASSPHRASE": "wrong-passphrase-000"})
    assert status == 1 and "wrong-passphrase" not in err


def test_tls_settings_never_print_keys() -> None:
    pki = NetworkPki.create(now=dt.datetime.now(dt.UTC))
    settings = pki.settings("gw", ClientIdentity("agency", OWNER))
    assert isinstance(settings, TlsSettings)
    assert "PRIVATE" not in repr(settings) and "key_pem" not in repr(settings)
    settings.server_context()
    settings.client_context()


def test_contexts_are_built_once_per_identity() -> None:
    pki = NetworkPki.create(now=dt.datetime.now(dt.UTC))
    identity = system_identity(OWNER, "kaigo-system", {"queries.read", "persons.register"})
    assert identity.roles == ("persons.register", "queries.read")
    assert pki.client_context(identity) is pki.client_context(identity)
    assert pki.anonymous_context() is pki.anonymous_context()


def test_exported_client_files_are_private_and_the_key_encrypted(tmp_path: Path) -> None:
    pki = NetworkPki.create(now=dt.datetime.now(dt.UTC))
    cert, key = pki.export_client(
        system_identity(OWNER, "kaigo-system", {"records.read"}), tmp_path, "c", PASSPHRASE
    )
    assert {_mode(p) for p in (cert, key, tmp_path / "ca.pem")} == {0o600}
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()


@pytest.mark.parametrize(
    ("subject", "parsed"),
    [
        ("121002.kaigo-system", ("121002", "kaigo-system")),
        ("121002.a.b", ("121002", "a.b")),
        ("kaigo-system", None),
        (".x", None),
        ("121002.", None),
    ],
)
def test_system_subjects(subject: str, parsed: tuple[str, str] | None) -> None:
    assert parse_system_subject(subject) == parsed
    if parsed is not None:
        assert system_subject(*parsed) == subject
