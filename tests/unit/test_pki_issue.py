"""The persistent PKI: issuing by kind (keys.ca), ``chukan pki`` in-process, PEM files → TLS."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import stat
from pathlib import Path
from typing import Any, TypedDict

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from chukan.codecs.catalog import CHIBA_CITY
from chukan.gateway.cli import pki as pki_cli
from chukan.gateway.cli.errors import PkiCommandError
from chukan.gateway.core.config import OP_READ_RECORDS, OP_REGISTER_PERSON
from chukan.gateway.core.identities import (
    HUB_ADMIN_ROLE,
    HUB_IDENTITY,
    HUB_OPERATOR,
    agency_host,
    system_identity,
)
from chukan.gateway.core.tls import (
    TlsSettings,
    client_context_from_files,
    server_context_from_files,
)
from chukan.keys.ca import (
    CertificateAuthority,
    ClientIdentity,
    certificate_fingerprint,
    check_key_pair,
    describe_certificate,
    identity_from_certificate,
    is_issued_by,
)
from chukan.keys.errors import CertificateError, KeyFormatError

NOW = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
CA = CertificateAuthority.create("pki test CA", now=NOW, lifetime=400 * DAY)
CA_PASS = "ca-passphrase-for-the-tests"
KEY_PASS = "key-passphrase-for-the-tests"
ENV = {"CA_PASS": CA_PASS, "KEY_PASS": KEY_PASS, "SHORT": "too-short"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- keys.ca: issuing a party and reading certificates back ------------------------------


def test_issue_party_gives_server_and_client_certificates_as_asked() -> None:
    both = CA.issue_party(
        "hub", hosts=("127.0.0.1", "hub.example"), client=HUB_IDENTITY, now=NOW, lifetime=DAY
    )
    assert both.server is not None and both.client is not None
    server = describe_certificate(both.server.certificate_pem)
    assert (server.usage, server.common_name, server.identity) == ("server", "hub", None)
    assert server.hosts == ("hub.example", "127.0.0.1")
    assert server.not_after == NOW + DAY
    assert identity_from_certificate(both.client.certificate_pem) == HUB_IDENTITY

    server_only = CA.issue_party("kokuhoren", hosts=("localhost",), now=NOW, lifetime=DAY)
    assert server_only.server is not None and server_only.client is None
    client_only = CA.issue_party("", client=HUB_OPERATOR, now=NOW, lifetime=DAY)
    assert client_only.server is None and client_only.client is not None
    with pytest.raises(ValueError, match="hosts to serve"):
        CA.issue_party("nobody", now=NOW, lifetime=DAY)


def test_describe_reads_each_usage_and_fingerprints_the_der() -> None:
    ca = describe_certificate(CA.certificate_pem)
    assert (ca.usage, ca.common_name, ca.identity, ca.hosts) == ("ca", "pki test CA", None, ())
    identity = system_identity(CHIBA_CITY, "kaigo-system", {OP_READ_RECORDS})
    issued = CA.issue_client(identity, now=NOW, lifetime=30 * DAY)
    summary = describe_certificate(issued.certificate_pem)
    assert summary.usage == "client"
    assert summary.identity == identity
    assert summary.serial == issued.serial
    assert summary.not_after == NOW + 30 * DAY
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert summary.sha256 == certificate_fingerprint(issued.certificate_pem)
    assert summary.sha256 == certificate_fingerprint(cert.public_bytes(Encoding.DER))
    assert len(summary.sha256) == 64


def test_is_issued_by_checks_the_signature_not_only_the_name() -> None:
    issued = CA.issue_client(HUB_IDENTITY, now=NOW, lifetime=DAY)
    assert is_issued_by(CA.certificate_pem, issued.certificate_pem)
    same_name = CertificateAuthority.create("pki test CA", now=NOW, lifetime=DAY)
    assert not is_issued_by(same_name.certificate_pem, issued.certificate_pem)


def test_encrypted_keys_load_with_the_passphrase_only() -> None:
    issued = CA.issue_client(HUB_IDENTITY, now=NOW, lifetime=DAY)
    encrypted = issued.encrypted_private_key_pem(KEY_PASS.encode())
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    check_key_pair(issued.certificate_pem, encrypted, KEY_PASS.encode())
    with pytest.raises(KeyFormatError):
        check_key_pair(issued.certificate_pem, encrypted, None)
    with pytest.raises(KeyFormatError):
        check_key_pair(issued.certificate_pem, encrypted, b"another-passphrase-entirely")
    other = CA.issue_client(HUB_IDENTITY, now=NOW, lifetime=DAY)
    with pytest.raises(CertificateError, match="does not match"):
        check_key_pair(other.certificate_pem, encrypted, KEY_PASS.encode())


# -- the kinds: exactly the identities and names the servers check ----------------------


def test_each_kind_plans_the_identities_the_servers_check() -> None:
    hub = pki_cli.plan_certificates("hub", hosts=["127.0.0.1"])
    assert (hub.name, hub.hosts, hub.client) == ("hub", ("127.0.0.1",), HUB_IDENTITY)

    agency = pki_cli.plan_certificates("agency", agency=CHIBA_CITY, hosts=["gw.example"])
    assert agency.name == f"agency-{CHIBA_CITY}"
    assert agency.common_name == CHIBA_CITY
    assert agency.hosts == ("gw.example", agency_host(CHIBA_CITY))
    assert agency.client == ClientIdentity("agency", CHIBA_CITY)
    again = pki_cli.plan_certificates(
        "agency", agency=CHIBA_CITY, hosts=[agency_host(CHIBA_CITY), "gw.example"]
    )
    assert again.hosts == (agency_host(CHIBA_CITY), "gw.example")

    system = pki_cli.plan_certificates(
        "system",
        agency=CHIBA_CITY,
        system_id="kaigo-system",
        operations=[OP_REGISTER_PERSON, OP_READ_RECORDS, OP_READ_RECORDS],
    )
    assert system.name == f"{CHIBA_CITY}.kaigo-system"
    assert system.hosts == ()
    assert system.client == system_identity(
        CHIBA_CITY, "kaigo-system", {OP_REGISTER_PERSON, OP_READ_RECORDS}
    )

    operator = pki_cli.plan_certificates("operator")
    assert operator.client == HUB_OPERATOR
    assert operator.client.roles == (HUB_ADMIN_ROLE,)
    assert list(operator.files(Path("d"))) == ["client"]

    kokuhoren = pki_cli.plan_certificates("kokuhoren", hosts=["::1"], name="kokuhoren-a")
    assert kokuhoren.client is None
    assert kokuhoren.files(Path("d")) == {
        "server": (Path("d/kokuhoren-a.server.pem"), Path("d/kokuhoren-a.server.key.pem"))
    }


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("hub", {}, "needs at least one --host"),
        ("hub", {"hosts": ["h"], "agency": CHIBA_CITY}, "--agency does not apply"),
        ("operator", {"hosts": ["h"]}, "--host does not apply"),
        ("agency", {"hosts": ["h"]}, "needs --agency"),
        ("system", {"agency": CHIBA_CITY, "operations": ["records.read"]}, "needs --system-id"),
        ("system", {"agency": CHIBA_CITY, "system_id": "s"}, "at least one --operation"),
        (
            "system",
            {"agency": CHIBA_CITY, "system_id": "s", "operations": ["hub.admin"]},
            "unknown operation",
        ),
        ("agency", {"agency": CHIBA_CITY, "operations": ["records.read"]}, "--operation does"),
        ("kokuhoren", {"hosts": ["h"], "name": "../escape"}, "--name"),
        ("kokuhoren", {"hosts": ["h"], "name": "ca"}, "--name"),
        ("root", {}, "unknown kind"),
    ],
)
def test_options_that_do_not_fit_the_kind_are_refused(
    kind: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PkiCommandError, match=message):
        pki_cli.plan_certificates(kind, **options)


# -- passphrases ------------------------------------------------------------------------


def test_passphrase_files_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(CA_PASS.encode() + b"\n")
    path.chmod(0o600)
    assert pki_cli.read_passphrase(path, None, {}, "p") == CA_PASS.encode()
    path.chmod(0o640)
    with pytest.raises(PkiCommandError, match="chmod 600"):
        pki_cli.read_passphrase(path, None, {}, "p")
    path.write_bytes(b"short\n")
    path.chmod(0o600)
    with pytest.raises(PkiCommandError, match="at least 16 bytes"):
        pki_cli.read_passphrase(path, None, {}, "p")
    with pytest.raises(PkiCommandError, match="cannot be read"):
        pki_cli.read_passphrase(tmp_path / "missing", None, {}, "p")
    assert pki_cli.read_passphrase(None, "CA_PASS", ENV, "p") == CA_PASS.encode()
    with pytest.raises(PkiCommandError, match="UNSET is not set"):
        pki_cli.read_passphrase(None, "UNSET", ENV, "p")


# -- the command, in process ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chukan")
    pki_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str, now: dt.datetime = NOW) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = _parser().parse_args(["pki", *argv])
    code = pki_cli.run(args, out=out, err=err, env=ENV, now=now)
    return code, out.getvalue(), err.getvalue()


def _init(directory: Path, *extra: str) -> dict[str, Any]:
    code, out, err = _run("init", "--dir", str(directory), "--passphrase-env", "CA_PASS", *extra)
    assert (code, err) == (0, "")
    document: dict[str, Any] = json.loads(out)
    return document


def _issue(directory: Path, *extra: str) -> tuple[int, str, str]:
    return _run(
        "issue",
        "--dir",
        str(directory),
        "--passphrase-env",
        "CA_PASS",
        *extra,
    )


def test_init_writes_a_private_encrypted_ca_and_never_overwrites_it(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    document = _init(directory, "--days", "30")
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca.pem") == _mode(directory / "ca.key.pem") == 0o600
    key_pem = (directory / "ca.key.pem").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    ca = CertificateAuthority.load((directory / "ca.pem").read_bytes(), key_pem, CA_PASS.encode())
    assert ca.not_after == NOW + 30 * DAY
    assert document["ca"]["sha256"] == certificate_fingerprint(ca.certificate_pem)
    assert CA_PASS not in json.dumps(document)

    code, out, err = _run("init", "--dir", str(directory), "--passphrase-env", "CA_PASS")
    assert (code, out) == (1, "")
    assert "already holds a CA" in err
    assert (directory / "ca.key.pem").read_bytes() == key_pem


def test_init_refuses_short_passphrases_and_open_folders(tmp_path: Path) -> None:
    code, _, err = _run("init", "--dir", str(tmp_path / "a"), "--passphrase-env", "SHORT")
    assert code == 1 and "at least 16 bytes" in err
    assert not (tmp_path / "a" / "ca.key.pem").exists()
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o755)
    code, _, err = _run("init", "--dir", str(open_folder), "--passphrase-env", "CA_PASS")
    assert code == 1 and "chmod 700" in err
    with pytest.raises(SystemExit):  # a passphrase value on the command line is no option
        _parser().parse_args(["pki", "init", "--dir", "x", "--passphrase", CA_PASS])


def test_issue_writes_each_kind_and_refuses_to_overwrite(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    _init(directory)
    code, out, err = _issue(
        directory,
        "--key-passphrase-env",
        "KEY_PASS",
        "--kind",
        "agency",
        "--agency",
        CHIBA_CITY,
        "--host",
        "127.0.0.1",
        "--days",
        "10",
    )
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["key_encrypted"] is True
    server, client = document["certificates"]
    assert server["hosts"] == [agency_host(CHIBA_CITY), "127.0.0.1"]
    assert client["subject"] == f"agency:{CHIBA_CITY}"
    for entry in (server, client):
        cert, key = Path(entry["certificate"]), Path(entry["private_key"])
        assert _mode(cert) == _mode(key) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        check_key_pair(cert.read_bytes(), key.read_bytes(), KEY_PASS.encode())
        assert describe_certificate(cert.read_bytes()).not_after == NOW + 10 * DAY
        assert entry["sha256"] == certificate_fingerprint(cert.read_bytes())
    assert KEY_PASS not in out and CA_PASS not in out

    before = (directory / f"agency-{CHIBA_CITY}.server.pem").read_bytes()
    again = ("--kind", "agency", "--agency", CHIBA_CITY, "--host", "127.0.0.1")
    code, out, err = _issue(directory, "--no-key-passphrase", *again)
    assert (code, out) == (1, "")
    assert "--force" in err
    assert (directory / f"agency-{CHIBA_CITY}.server.pem").read_bytes() == before
    code, out, _ = _issue(directory, "--no-key-passphrase", "--force", *again)
    assert code == 0
    replaced = directory / f"agency-{CHIBA_CITY}.server.key.pem"
    assert replaced.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(replaced) == 0o600
    assert (directory / f"agency-{CHIBA_CITY}.server.pem").read_bytes() != before

    code, out, _ = _issue(
        directory,
        "--no-key-passphrase",
        "--kind",
        "system",
        "--agency",
        CHIBA_CITY,
        "--system-id",
        "kaigo-system",
        "--operation",
        OP_READ_RECORDS,
    )
    assert code == 0
    (entry,) = json.loads(out)["certificates"]
    assert entry["roles"] == [OP_READ_RECORDS]
    assert entry["kind"] == "system"
    assert identity_from_certificate(Path(entry["certificate"]).read_bytes()) == system_identity(
        CHIBA_CITY, "kaigo-system", {OP_READ_RECORDS}
    )
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_issue_refuses_wrong_ca_passphrase_missing_ca_and_outliving_the_ca(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "pki"
    hub = ("--no-key-passphrase", "--kind", "hub", "--host", "localhost")
    code, _, err = _issue(directory, *hub)
    assert code == 1 and "pki init" in err
    _init(directory, "--days", "100")
    code, _, err = _run("issue", "--dir", str(directory), "--passphrase-env", "KEY_PASS", *hub)
    assert code == 1 and "wrong passphrase" in err
    code, _, err = _issue(directory, *hub, "--days", "101")
    assert code == 1 and "outlive the CA" in err
    code, _, err = _issue(directory, *hub, "--days", "0")
    assert code == 1 and "positive" in err
    (directory / "ca.key.pem").chmod(0o644)
    code, _, err = _issue(directory, *hub)
    assert code == 1 and "chmod 600" in err
    assert sorted(p.name for p in directory.iterdir()) == ["ca.key.pem", "ca.pem"]


def test_list_shows_kinds_subjects_expiry_and_foreign_certificates(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    _init(directory)
    assert _issue(directory, "--no-key-passphrase", "--kind", "operator")[0] == 0
    assert _issue(directory, "--no-key-passphrase", "--kind", "hub", "--host", "::1")[0] == 0
    foreign = CertificateAuthority.create("elsewhere", now=NOW, lifetime=DAY)
    stray = foreign.issue_client(HUB_IDENTITY, now=NOW, lifetime=DAY)
    (directory / "stray.pem").write_bytes(stray.certificate_pem)
    (directory / "junk.pem").write_bytes(b"not a certificate")

    code, out, _ = _run("list", "--dir", str(directory), "--json", now=NOW + 2 * DAY)
    assert code == 0
    entries = {Path(e["certificate"]).name: e for e in json.loads(out)["certificates"]}
    assert set(entries) == {
        "ca.pem",
        "hub.server.pem",
        "hub.client.pem",
        "hub-operator.client.pem",
        "stray.pem",
        "junk.pem",
    }
    assert entries["hub-operator.client.pem"]["kind"] == "operator"
    assert entries["hub-operator.client.pem"]["roles"] == [HUB_ADMIN_ROLE]
    assert entries["hub.client.pem"]["subject"] == "hub:hub"
    assert entries["hub.server.pem"]["hosts"] == ["::1"]
    assert entries["hub.server.pem"]["private_key"].endswith("hub.server.key.pem")
    assert entries["ca.pem"]["issued_by_ca"] is True
    assert entries["hub.client.pem"]["issued_by_ca"] is True
    assert entries["stray.pem"]["issued_by_ca"] is False
    assert entries["stray.pem"]["expired"] is True
    assert entries["hub.client.pem"]["expired"] is False
    assert "error" in entries["junk.pem"]

    code, out, _ = _run("list", "--dir", str(directory))
    assert code == 0
    assert "NOT ISSUED BY ca.pem" in out and "operator" in out and "hub.admin" in out


# -- PEM files → TlsSettings ------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


class Files(TypedDict):
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _files(tmp_path: Path, passphrase: bytes | None) -> Files:
    party = CA.issue_party(
        "hub",
        hosts=("127.0.0.1",),
        client=HUB_IDENTITY,
        now=dt.datetime.now(dt.UTC),
        lifetime=DAY,
    )
    assert party.server is not None and party.client is not None

    def key(issued: Any) -> bytes:
        pem: bytes = (
            issued.private_key_pem
            if passphrase is None
            else issued.encrypted_private_key_pem(passphrase)
        )
        return pem

    return {
        "ca": _write(tmp_path / "ca.pem", CA.certificate_pem, 0o644),
        "server_cert": _write(tmp_path / "s.pem", party.server.certificate_pem),
        "server_key": _write(tmp_path / "s.key.pem", key(party.server)),
        "client_cert": _write(tmp_path / "c.pem", party.client.certificate_pem),
        "client_key": _write(tmp_path / "c.key.pem", key(party.client)),
    }


def test_tls_settings_from_files_opens_encrypted_keys_and_builds_contexts(
    tmp_path: Path,
) -> None:
    files = _files(tmp_path, KEY_PASS.encode())
    settings = TlsSettings.from_files(**files, key_passphrase=KEY_PASS.encode())
    assert settings.ca_pem == CA.certificate_pem
    assert settings.server_cert_pem == files["server_cert"].read_bytes()
    assert KEY_PASS not in repr(settings)
    settings.server_context()
    settings.client_context()
    server_context_from_files(
        files["ca"], files["server_cert"], files["server_key"], key_passphrase=KEY_PASS.encode()
    )
    client_context_from_files(
        files["ca"], files["client_cert"], files["client_key"], key_passphrase=KEY_PASS.encode()
    )
    client_context_from_files(files["ca"])
    with pytest.raises(ValueError, match="both"):
        client_context_from_files(files["ca"], files["client_cert"])


def test_tls_settings_from_files_names_the_file_that_is_wrong(tmp_path: Path) -> None:
    files = _files(tmp_path, KEY_PASS.encode())
    with pytest.raises(KeyFormatError, match=r"s\.key\.pem"):
        TlsSettings.from_files(**files)  # no passphrase for encrypted keys
    with pytest.raises(KeyFormatError, match=r"s\.key\.pem"):
        TlsSettings.from_files(**files, key_passphrase=b"not-the-right-passphrase")
    files["server_key"].chmod(0o644)
    with pytest.raises(KeyFormatError, match="chmod 600"):
        TlsSettings.from_files(**files, key_passphrase=KEY_PASS.encode())
    files["server_key"].chmod(0o600)
    swapped: Files = {**files, "server_key": files["client_key"]}
    with pytest.raises(CertificateError, match="does not match"):
        TlsSettings.from_files(**swapped, key_passphrase=KEY_PASS.encode())
    missing: Files = {**files, "ca": tmp_path / "missing.pem"}
    with pytest.raises(CertificateError, match="cannot be read"):
        TlsSettings.from_files(**missing, key_passphrase=KEY_PASS.encode())
    not_a_certificate: Files = {**files, "ca": files["server_key"]}
    with pytest.raises(CertificateError, match="no PEM certificate"):
        TlsSettings.from_files(**not_a_certificate, key_passphrase=KEY_PASS.encode())


def test_unencrypted_key_files_load_without_a_passphrase(tmp_path: Path) -> None:
    files = _files(tmp_path, None)
    settings = TlsSettings.from_files(**files)
    assert settings.key_passphrase is None
    settings.client_context()
    eku = x509.load_pem_x509_certificate(settings.client_cert_pem).extensions
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH in eku.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
