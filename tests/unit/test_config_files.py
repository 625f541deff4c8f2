"""The servers' TOML configuration files, read into the config values (no server).

An operator's mistake must stop the start with a message naming the file, the
table and the key: a typo, a secret written inline, a secret file others may
read.  What is accepted must land in the right field.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from chukan.gateway.core.config import OP_READ_RECORDS, OP_REGISTER_PERSON, token_digest
from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.errors import (
    ConfigFileError,
    ConfigKeyUnknownError,
    InlineSecretError,
    SecretFileExposedError,
)
from chukan.gateway.core.identities import HUB_IDENTITY
from chukan.keys import b64e, generate_encryption_key, generate_signing_key, key_id_for
from chukan.keys.ca import ClientIdentity
from chukan.simulators.devnet.pki import NetworkPki
from chukan.simulators.hub.config_file import load_hub_config
from chukan.simulators.kokuhoren.config_file import load_kokuhoren_config

HUB_KEY = generate_signing_key("hub").public
PASSPHRASE = "a-key-passphrase-of-some-length"


def secret(folder: Path, name: str, value: str, mode: int = 0o600) -> str:
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return name


def gateway_toml(folder: Path, **tables: str) -> Path:
    """A minimal valid gateway file; ``tables`` replace or add whole tables by name."""
    secret(folder, "passphrase", PASSPHRASE)
    secret(folder, "enrolment-token", "enrol-me")
    parts = {
        "agency": 'code = "121002"\nname = "千葉市"',
        "database": 'url = "postgresql://chukan_tenant_121002@db.example:5432/chukan_gateway"',
        "keys": 'dir = "keys"\npassphrase_file = "passphrase"',
        "hub": (
            'url = "https://hub.example:9443/"\n'
            f'signing_key = "{HUB_KEY.key_id}={b64e(HUB_KEY.raw)}"\n'
            'enrolment_token_file = "enrolment-token"'
        ),
    }
    parts.update(tables)
    text = "\n\n".join(
        body if name.startswith("[[") or name == "" else f"[{name}]\n{body}"
        for name, body in parts.items()
    )
    path = folder / "gateway.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_a_minimal_gateway_file_gives_the_config_with_defaults(tmp_path: Path) -> None:
    config = load_gateway_config(gateway_toml(tmp_path))
    assert config.agency_code == "121002"
    assert config.hub_url == "https://hub.example:9443"
    assert config.hub_key == HUB_KEY
    assert config.enrolment_token == "enrol-me"  # one trailing newline removed
    assert config.key_passphrase == PASSPHRASE.encode()
    assert config.key_dir == tmp_path / "keys"  # relative to the file's folder
    assert config.tls is None
    assert config.public_endpoint is None
    assert config.migration_database_url is None
    assert config.port == 0 and config.host == "127.0.0.1"


def test_every_table_of_the_gateway_file_lands_in_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_DB_PASSWORD", "p@ss word")
    secret(tmp_path, "owner-password", "owner-secret")
    secret(tmp_path, "kokuhoren-token", "mailbox-token")
    kokuhoren_signing = generate_signing_key("kokuhoren").public
    kokuhoren_encryption = generate_encryption_key("kokuhoren").public
    (tmp_path / "kokuhoren-keys.json").write_text(
        json.dumps(
            {
                "signing_key": {
                    "key_id": kokuhoren_signing.key_id,
                    "public": b64e(kokuhoren_signing.raw),
                },
                "encryption_key": {
                    "key_id": kokuhoren_encryption.key_id,
                    "public": b64e(kokuhoren_encryption.raw),
                },
            }
        ),
        encoding="utf-8",
    )
    path = gateway_toml(
        tmp_path,
        agency='code = "121002"\nname = "千葉市"\ninsurer_number = "122010"',
        server='host = "::"\nport = 8443\npublic_endpoint = "https://gw.chiba.example/"',
        database=(
            'url = "postgresql://chukan_tenant_121002@db.example/chukan_gateway"\n'
            'password_env = "TEST_DB_PASSWORD"\n\n'
            "[database.migration]\n"
            'url = "postgresql://chukan_owner@db.example/chukan_gateway"\n'
            'password_file = "owner-password"'
        ),
        timing="message_skew = 120\nsend_backoff = 0.25\ntransmit_attempts = 3",
        records="checkpoint_every = 10\ncheckpoint_interval = 1.5",
        staff=(
            "idle_timeout = 600\n\n[staff.initial_admin]\n"
            'username = "admin"\npassword_hash = "scrypt$..."'
        ),
        ops='statistics_time_zone = "UTC"\npurge_interval = 60',
        kokuhoren=(
            'url = "https://kokuhoren.example"\ntoken_file = "kokuhoren-token"\n'
            'keys_file = "kokuhoren-keys.json"'
        ),
        **{
            "[[systems]]": (
                f'[[systems]]\nid = "kaigo-system"\noperations = ["{OP_REGISTER_PERSON}"]\n'
                f'token_sha256 = "{token_digest("t0ken")}"\n\n'
                f'[[systems]]\nid = "reporting"\noperations = ["{OP_READ_RECORDS}"]'
            )
        },
    )
    config = load_gateway_config(path)
    assert config.insurer_number == "122010"
    assert (config.host, config.port) == ("::", 8443)
    assert config.public_endpoint == "https://gw.chiba.example"
    assert config.database_url == (
        "postgresql://chukan_tenant_121002:p%40ss%20word@db.example/chukan_gateway"
    )
    assert config.migration_database_url == (
        "postgresql://chukan_owner:owner-secret@db.example/chukan_gateway"
    )
    assert config.timing.message_skew == dt.timedelta(seconds=120)
    assert config.timing.send_backoff == 0.25
    assert config.timing.transmit_attempts == 3
    assert config.records.checkpoint_every == 10
    assert config.records.checkpoint_interval == dt.timedelta(seconds=1.5)
    assert config.staff.idle_timeout == dt.timedelta(minutes=10)
    assert config.staff.initial_admin is not None
    assert config.staff.initial_admin.username == "admin"
    assert config.ops.statistics_time_zone == "UTC"
    assert config.ops.purge_interval == dt.timedelta(minutes=1)
    assert [s.system_id for s in config.systems] == ["kaigo-system", "reporting"]
    assert config.system_for_token("t0ken") is config.systems[0]
    assert config.systems[1].token_sha256 == ""  # certificate only
    assert config.kokuhoren is not None
    assert config.kokuhoren.token == "mailbox-token"
    assert config.kokuhoren.signing_key == kokuhoren_signing
    assert config.kokuhoren.encryption_key == kokuhoren_encryption
    assert "mailbox-token" not in repr(config) and PASSPHRASE not in repr(config)


def test_the_hub_key_may_be_given_without_its_id_or_as_the_hub_key_json(tmp_path: Path) -> None:
    path = gateway_toml(
        tmp_path,
        hub=(
            'url = "https://hub.example"\n'
            f'signing_key = "{b64e(HUB_KEY.raw)}"\n'
            'enrolment_token_file = "enrolment-token"'
        ),
    )
    assert load_gateway_config(path).hub_key.key_id == key_id_for("hub", "sig", HUB_KEY.raw)
    (tmp_path / "hub-key.json").write_text(
        json.dumps({"key_id": HUB_KEY.key_id, "public": b64e(HUB_KEY.raw)}), encoding="utf-8"
    )
    path = gateway_toml(
        tmp_path,
        hub=(
            'url = "https://hub.example"\nsigning_key_file = "hub-key.json"\n'
            'enrolment_token_file = "enrolment-token"'
        ),
    )
    assert load_gateway_config(path).hub_key == HUB_KEY


@pytest.mark.parametrize(
    ("table", "body", "key"),
    [
        ("keys", f'dir = "keys"\npassphrase = "{PASSPHRASE}"', "passphrase"),
        (
            "hub",
            f'url = "https://hub.example"\nsigning_key = "{b64e(HUB_KEY.raw)}"\n'
            'enrolment_token = "enrol-me"',
            "enrolment_token",
        ),
        ("database", 'url = "postgresql://role:secret@db.example/chukan_gateway"', "url"),
    ],
)
def test_an_inline_secret_is_refused_naming_file_table_and_key(
    tmp_path: Path, table: str, body: str, key: str
) -> None:
    path = gateway_toml(tmp_path, **{table: body})
    with pytest.raises(InlineSecretError) as caught:
        load_gateway_config(path)
    assert caught.value.code == "config_secret_inline"
    assert f"{path}: [{table}] {key}:" in caught.value.message
    assert "_file" in caught.value.message
    assert PASSPHRASE not in caught.value.message and "secret@" not in caught.value.message


@pytest.mark.parametrize(
    ("tables", "where"),
    [
        ({"server": "prot = 8443"}, "[server]: unknown key prot"),
        ({"agency": 'code = "121002"\nname = "千葉市"\nnmae = "x"'}, "[agency]: unknown key nmae"),
        ({"timing": "message_skew = 1\nsweep_intervall = 2"}, "[timing]: unknown key sweep_"),
        ({"logging": 'level = "INFO"'}, "top level: unknown key logging"),
        (
            {"[[systems]]": '[[systems]]\nid = "x"\noperations = []\ntoken = "t"'},
            "[systems[0]]",
        ),
    ],
)
def test_an_unknown_key_is_refused(tmp_path: Path, tables: dict[str, str], where: str) -> None:
    path = gateway_toml(tmp_path, **tables)
    with pytest.raises(ConfigFileError) as caught:
        load_gateway_config(path)
    assert where in caught.value.message
    assert str(path) in caught.value.message


def test_an_unknown_key_has_its_own_code(tmp_path: Path) -> None:
    with pytest.raises(ConfigKeyUnknownError) as caught:
        load_gateway_config(gateway_toml(tmp_path, server="prot = 1"))
    assert caught.value.code == "config_key_unknown"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = gateway_toml(tmp_path)
    (tmp_path / "passphrase").chmod(mode)
    with pytest.raises(SecretFileExposedError) as caught:
        load_gateway_config(path)
    assert caught.value.code == "config_secret_file_exposed"
    assert "[keys] passphrase_file" in caught.value.message
    assert "chmod 600" in caught.value.message


def test_secret_files_lose_exactly_one_trailing_newline(tmp_path: Path) -> None:
    path = gateway_toml(tmp_path)
    (tmp_path / "enrolment-token").write_text("token\n\n", encoding="utf-8")
    assert load_gateway_config(path).enrolment_token == "token\n"


def test_secrets_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = gateway_toml(tmp_path, keys='dir = "keys"\npassphrase_env = "TEST_KEY_PASSPHRASE"')
    with pytest.raises(ConfigFileError, match="TEST_KEY_PASSPHRASE is not set"):
        load_gateway_config(path)
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", PASSPHRASE)
    assert load_gateway_config(path).key_passphrase == PASSPHRASE.encode()


def test_a_secret_given_twice_or_not_at_all_is_refused(tmp_path: Path) -> None:
    both = 'dir = "keys"\npassphrase_file = "passphrase"\npassphrase_env = "X"'
    with pytest.raises(ConfigFileError, match="not both"):
        load_gateway_config(gateway_toml(tmp_path, keys=both))
    with pytest.raises(ConfigFileError, match=r"\[keys\]: give passphrase_file"):
        load_gateway_config(gateway_toml(tmp_path, keys='dir = "keys"'))


@pytest.mark.parametrize(
    ("tables", "problem"),
    [
        ({"timing": 'message_skew = "PT5M"'}, "[timing] message_skew: must be a number of seconds"),
        ({"timing": "message_skew = -1"}, "[timing] message_skew: must not be negative"),
        ({"server": "port = 70000"}, "[server] port: must be a port"),
        ({"server": 'public_endpoint = "gw.example"'}, "[server] public_endpoint: must be an"),
        ({"agency": 'name = "千葉市"'}, "[agency] code: is required"),
        ({"agency": 'code = "121002"\nname = "x"\ninsurer_number = "1"'}, "insurer_number"),
        ({"database": 'url = "mysql://db"'}, "[database] url: must be a postgresql"),
        (
            {"[[systems]]": '[[systems]]\nid = "x"\noperations = ["everything"]'},
            "unknown operations",
        ),
        ({"[[systems]]": '[[systems]]\nid = "x"\ntoken_sha256 = "abc"'}, "64 lowercase hex"),
    ],
)
def test_bad_values_are_refused_naming_the_key(
    tmp_path: Path, tables: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_gateway_config(gateway_toml(tmp_path, **tables))
    assert problem in caught.value.message


def test_a_missing_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such configuration file"):
        load_gateway_config(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[agency\n", encoding="utf-8")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_gateway_config(tmp_path / "bad.toml")


def write_tls(folder: Path, pki: NetworkPki, name: str, client: ClientIdentity) -> str:
    """A ``[tls]`` table body with the PEM files it names, keys 0600."""
    settings = pki.settings(name, client)
    files = {
        "ca_file": settings.ca_pem,
        "server_cert_file": settings.server_cert_pem,
        "server_key_file": settings.server_key_pem,
        "client_cert_file": settings.client_cert_pem,
        "client_key_file": settings.client_key_pem,
    }
    lines = []
    for key, pem in files.items():
        path = folder / f"{name}-{key}.pem"
        path.write_bytes(pem)
        path.chmod(0o600)
        lines.append(f'{key} = "{path.name}"')
    return "\n".join(lines)


def test_tls_files_are_read_and_checked(tmp_path: Path) -> None:
    pki = NetworkPki.create()
    tls = write_tls(tmp_path, pki, "121002", ClientIdentity("agency", "121002"))
    config = load_gateway_config(gateway_toml(tmp_path, tls=tls))
    assert config.tls is not None
    assert config.tls.ca_pem == pki.ca_pem
    config.tls.server_context()
    (tmp_path / "121002-server_key_file.pem").chmod(0o644)
    with pytest.raises(SecretFileExposedError, match=r"\[tls\] server_key_file"):
        load_gateway_config(gateway_toml(tmp_path, tls=tls))
    (tmp_path / "121002-server_key_file.pem").chmod(0o600)
    other = NetworkPki.create().settings("x", ClientIdentity("agency", "121002"))
    (tmp_path / "121002-client_key_file.pem").write_bytes(other.client_key_pem)
    with pytest.raises(ConfigFileError, match=r"\[tls\] client_key_file"):
        load_gateway_config(gateway_toml(tmp_path, tls=tls))


def test_the_hub_file(tmp_path: Path) -> None:
    secret(tmp_path, "passphrase", PASSPHRASE)
    secret(tmp_path, "admin-token", "hub-admin")
    tls = write_tls(tmp_path, NetworkPki.create(), "hub", HUB_IDENTITY)
    path = tmp_path / "hub.toml"
    path.write_text(
        '[server]\nport = 9443\n\n[database]\nurl = "postgresql://hub@db/chukan_hub"\n\n'
        '[keys]\ndir = "hub-keys"\npassphrase_file = "passphrase"\n\n'
        '[admin]\ntoken_file = "admin-token"\n\n'
        "[timing]\npermit_lifetime = 60\ndelivery_backoff = 0.1\n\n"
        f"[tls]\n{tls}\n",
        encoding="utf-8",
    )
    config = load_hub_config(path)
    assert config.port == 9443
    assert config.admin_token == "hub-admin"
    assert config.key_dir == tmp_path / "hub-keys"
    assert config.permit_lifetime == dt.timedelta(minutes=1)
    assert config.delivery_backoff == 0.1
    assert config.tls is not None
    path.write_text(
        path.read_text(encoding="utf-8").replace("[timing]\n", "[timing]\nadmin_token = 1\n"),
        encoding="utf-8",
    )
    with pytest.raises(ConfigKeyUnknownError, match=r"\[timing\]: unknown key admin_token"):
        load_hub_config(path)


def test_the_kokuhoren_file(tmp_path: Path) -> None:
    secret(tmp_path, "passphrase", PASSPHRASE)
    path = tmp_path / "kokuhoren.toml"
    body = (
        '[database]\nurl = "postgresql://k@db/chukan_kokuhoren"\n\n'
        '[keys]\ndir = "k-keys"\npassphrase_file = "passphrase"\n\n'
        '[admin]\ntoken_env = "TEST_KOKUHOREN_ADMIN"\n\n'
        "[mailbox]\nmax_file_bytes = 1024\nrequire_client_certificate = true\n"
    )
    path.write_text(body, encoding="utf-8")
    os.environ["TEST_KOKUHOREN_ADMIN"] = "k-admin"
    try:
        with pytest.raises(ConfigFileError, match="require_client_certificate: needs a"):
            load_kokuhoren_config(path)
        tls = write_tls(tmp_path, NetworkPki.create(), "kokuhoren", HUB_IDENTITY)
        server_only = "\n".join(line for line in tls.splitlines() if "client" not in line)
        path.write_text(body + f"\n[tls]\n{server_only}\n", encoding="utf-8")
        config = load_kokuhoren_config(path)
    finally:
        del os.environ["TEST_KOKUHOREN_ADMIN"]
    assert config.max_file_bytes == 1024
    assert config.require_client_certificate
    assert config.admin_token == "k-admin"
    assert config.tls is not None
    config.tls.server_context()
