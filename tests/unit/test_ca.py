"""Local CA, client identities and mutual TLS over loopback (chukan.keys.ca / .tls)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from chukan.keys import KeyFormatError, KeysError
from chukan.keys import tls as tls_module
from chukan.keys.ca import (
    CertificateAuthority,
    ClientIdentity,
    IssuedCertificate,
    identity_from_certificate,
    identity_from_peercert,
)
from chukan.keys.errors import CertificateError
from chukan.keys.tls import client_context, server_context

T0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
DAY = timedelta(days=1)
HOSTS = ("localhost", "127.0.0.1", "::1")
AGENCY = ClientIdentity("agency", "131016", ("query", "provide"))

# Module-level so hypothesis tests can share them (function fixtures are reset per example).
FIXED_CA = CertificateAuthority.create("chukan test CA", now=T0, lifetime=YEAR)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _real_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA with a server and a client certificate, valid around the real clock."""

    ca: CertificateAuthority
    server: IssuedCertificate
    client: IssuedCertificate


def _pki(name: str) -> Pki:
    now = _real_now()
    ca = CertificateAuthority.create(name, now=now - 3 * DAY, lifetime=30 * DAY)
    return Pki(
        ca,
        ca.issue_server("gateway", hosts=HOSTS, now=now, lifetime=DAY),
        ca.issue_client(AGENCY, now=now, lifetime=DAY),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return _pki("chukan loopback CA")


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    return _pki("someone else's CA")


# -- the CA itself ----------------------------------------------------------------------


def test_ca_certificate_is_a_self_signed_p256_ca_that_signs_only_leaves() -> None:
    cert = _cert(FIXED_CA.certificate_pem)
    cert.verify_directly_issued_by(cert)
    assert cert.subject == cert.issuer
    assert FIXED_CA.name == "chukan test CA"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert FIXED_CA.not_after == T0 + YEAR
    assert cert.not_valid_before_utc <= T0


def test_ca_private_key_is_written_encrypted_and_loads_back() -> None:
    pem = FIXED_CA.private_key_pem(b"correct horse battery staple")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = CertificateAuthority.load(
        FIXED_CA.certificate_pem, pem, b"correct horse battery staple"
    )
    assert loaded.certificate == FIXED_CA.certificate
    issued = loaded.issue_client(AGENCY, now=T0, lifetime=DAY)
    FIXED_CA.verify(issued.certificate_pem, now=T0 + timedelta(hours=1))
    assert "private_key" not in repr(loaded)


def test_ca_load_refuses_wrong_passphrase_mismatched_key_and_non_ca() -> None:
    pem = FIXED_CA.private_key_pem(b"pass-one")
    with pytest.raises(KeyFormatError):
        CertificateAuthority.load(FIXED_CA.certificate_pem, pem, b"pass-two")
    other = CertificateAuthority.create("other", now=T0, lifetime=YEAR)
    with pytest.raises(CertificateError, match="does not match"):
        CertificateAuthority.load(other.certificate_pem, pem, b"pass-one")
    leaf = FIXED_CA.issue_client(AGENCY, now=T0, lifetime=DAY)
    leaf_key = serialization.load_pem_private_key(leaf.private_key_pem, password=None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    leaf_key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"leaf"),
    )
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority.load(leaf.certificate_pem, leaf_key_pem, b"leaf")
    with pytest.raises(CertificateError):
        CertificateAuthority.load(b"not a certificate", pem, b"pass-one")


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(KeyFormatError):
        FIXED_CA.private_key_pem(b"")
    issued = FIXED_CA.issue_client(AGENCY, now=T0, lifetime=DAY)
    with pytest.raises(KeyFormatError):
        issued.encrypted_private_key_pem(b"")
    assert issued.encrypted_private_key_pem(b"x").startswith(b"-----BEGIN ENCRYPTED")


def test_issued_certificate_repr_hides_the_private_key() -> None:
    issued = FIXED_CA.issue_client(AGENCY, now=T0, lifetime=DAY)
    assert b"PRIVATE KEY" in issued.private_key_pem
    assert "PRIVATE KEY" not in repr(issued)


# -- server certificates ----------------------------------------------------------------


def test_server_certificate_names_dns_and_ip_hosts_for_server_auth() -> None:
    issued = FIXED_CA.issue_server("gateway", hosts=HOSTS, now=T0, lifetime=DAY)
    cert = FIXED_CA.verify(issued.certificate_pem, now=T0)
    assert cert.serial_number == issued.serial
    assert issued.not_after == T0 + DAY
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = FIXED_CA.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest
    key = serialization.load_pem_private_key(issued.private_key_pem, password=None)
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("host", ["", "under_score.example", "-bad.example", "a..b", "*.example"])
def test_server_hosts_must_be_ip_addresses_or_dns_names(host: str) -> None:
    with pytest.raises(CertificateError):
        FIXED_CA.issue_server("gateway", hosts=[host], now=T0, lifetime=DAY)


def test_issue_refuses_naive_times_bad_lifetimes_and_outliving_the_ca() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FIXED_CA.issue_client(AGENCY, now=datetime(2025, 4, 1), lifetime=DAY)
    with pytest.raises(ValueError, match="positive"):
        FIXED_CA.issue_client(AGENCY, now=T0, lifetime=timedelta(0))
    with pytest.raises(CertificateError, match="outlive"):
        FIXED_CA.issue_client(AGENCY, now=T0 + YEAR - DAY, lifetime=2 * DAY)
    with pytest.raises(CertificateError, match="not valid yet"):
        FIXED_CA.issue_client(AGENCY, now=T0 - YEAR, lifetime=DAY)
    with pytest.raises(ValueError, match="non-empty"):
        FIXED_CA.issue_server("gateway", hosts=[], now=T0, lifetime=DAY)
    with pytest.raises(ValueError, match="non-empty"):
        FIXED_CA.issue_server("gateway", hosts="localhost", now=T0, lifetime=DAY)


def test_verify_refuses_foreign_and_expired_certificates() -> None:
    other = CertificateAuthority.create("chukan test CA", now=T0, lifetime=YEAR)
    foreign = other.issue_client(AGENCY, now=T0, lifetime=DAY)
    with pytest.raises(CertificateError, match="not issued by this CA"):
        FIXED_CA.verify(foreign.certificate_pem, now=T0)
    ours = FIXED_CA.issue_client(AGENCY, now=T0, lifetime=DAY)
    with pytest.raises(CertificateError, match="not valid at this time"):
        FIXED_CA.verify(ours.certificate_pem, now=T0 + 2 * DAY)


# -- client identities ------------------------------------------------------------------


def test_client_identity_round_trips_through_pem_and_der() -> None:
    issued = FIXED_CA.issue_client(AGENCY, now=T0, lifetime=DAY)
    assert identity_from_certificate(issued.certificate_pem) == AGENCY
    der = _cert(issued.certificate_pem).public_bytes(serialization.Encoding.DER)
    assert identity_from_certificate(der) == AGENCY
    assert identity_from_peercert(der) == AGENCY


def test_client_certificate_encodes_identity_in_cn_ou_and_role_uris() -> None:
    issued = FIXED_CA.issue_client(
        ClientIdentity("system", "jukiren-core", ("query",)), now=T0, lifetime=DAY
    )
    cert = _cert(issued.certificate_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jukiren-core"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "system"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:chukan:role:query"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_identity_without_roles_has_no_alternative_names() -> None:
    hub = ClientIdentity("hub", "hub")
    issued = FIXED_CA.issue_client(hub, now=T0, lifetime=DAY)
    with pytest.raises(x509.ExtensionNotFound):
        _cert(issued.certificate_pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    assert identity_from_certificate(issued.certificate_pem) == hub


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_roles = st.lists(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True), unique=True, max_size=4
)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["agency", "system", "hub"]), subject_id=_ids, roles=_roles)
def test_any_valid_identity_round_trips(kind: str, subject_id: str, roles: list[str]) -> None:
    identity = ClientIdentity(kind, subject_id, tuple(roles))  # type: ignore[arg-type]
    issued = FIXED_CA.issue_client(identity, now=T0, lifetime=DAY)
    assert identity_from_certificate(issued.certificate_pem) == identity


@pytest.mark.parametrize(
    ("kind", "subject_id", "roles"),
    [
        ("citizen", "x", ()),
        ("agency", "", ()),
        ("agency", "has space", ()),
        ("agency", "x" * 65, ()),
        ("agency", "131016", ("",)),
        ("agency", "131016", ("a/b",)),
        ("agency", "131016", ("query", "query")),
    ],
)
def test_client_identity_refuses_bad_fields(
    kind: str, subject_id: str, roles: tuple[str, ...]
) -> None:
    with pytest.raises(CertificateError) as info:
        ClientIdentity(kind, subject_id, roles)  # type: ignore[arg-type]
    assert info.value.code == "certificate_invalid"
    assert isinstance(info.value, KeysError)


def _forge(
    subject: list[x509.NameAttribute[str]],
    *,
    alt_names: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    ca: bool = False,
) -> bytes:
    """A certificate signed by the test CA but shaped differently from issue_client's."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(FIXED_CA.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(FIXED_CA.private_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


_CN = x509.NameAttribute(NameOID.COMMON_NAME, "131016")
_OU = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "agency")


def test_forge_helper_makes_a_parsable_certificate() -> None:
    assert identity_from_certificate(_forge([_OU, _CN])) == ClientIdentity("agency", "131016")


@pytest.mark.parametrize(
    "pem",
    [
        _forge([_CN]),
        _forge([_OU]),
        _forge([_OU, _CN, x509.NameAttribute(NameOID.COMMON_NAME, "other")]),
        _forge([_OU, _CN, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "role")]),
        _forge([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "citizen"), _CN]),
        _forge([_OU, _CN], usage=ExtendedKeyUsageOID.SERVER_AUTH),
        _forge([_OU, _CN], ca=True),
        _forge([_OU, _CN], alt_names=[x509.DNSName("localhost")]),
        _forge([_OU, _CN], alt_names=[x509.UniformResourceIdentifier("urn:other:role:x")]),
        _forge([_OU, _CN], alt_names=[x509.UniformResourceIdentifier("urn:chukan:role:")]),
    ],
    ids=[
        "no-ou",
        "no-cn",
        "two-cn",
        "extra-o",
        "unknown-kind",
        "server-auth",
        "ca",
        "dns-san",
        "foreign-uri",
        "empty-role",
    ],
)
def test_identity_refuses_unexpected_certificates(pem: bytes) -> None:
    with pytest.raises(CertificateError):
        identity_from_certificate(pem)


def test_identity_refuses_server_ca_and_garbage() -> None:
    server = FIXED_CA.issue_server("gateway", hosts=["localhost"], now=T0, lifetime=DAY)
    for data in (server.certificate_pem, FIXED_CA.certificate_pem, b"", b"\x30\x03junk"):
        with pytest.raises(CertificateError):
            identity_from_certificate(data)
    with pytest.raises(CertificateError, match="no certificate"):
        identity_from_peercert(None)


# -- TLS contexts -----------------------------------------------------------------------


def test_contexts_are_tls13_only_and_verify_peers(pki: Pki) -> None:
    server = server_context(
        pki.ca.certificate_pem, pki.server.certificate_pem, pki.server.private_key_pem
    )
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert server.verify_mode is ssl.CERT_REQUIRED
    assert server.verify_flags & ssl.VERIFY_X509_STRICT
    optional = server_context(
        pki.ca.certificate_pem,
        pki.server.certificate_pem,
        pki.server.private_key_pem,
        require_client_cert=False,
    )
    assert optional.verify_mode is ssl.CERT_OPTIONAL
    client = client_context(pki.ca.certificate_pem)
    assert client.check_hostname
    assert client.verify_mode is ssl.CERT_REQUIRED
    assert client.minimum_version is ssl.TLSVersion.TLSv1_3
    assert len(client.get_ca_certs()) == 1  # only our CA, never the system store


def test_contexts_refuse_bad_inputs(pki: Pki, other_pki: Pki) -> None:
    ca = pki.ca.certificate_pem
    with pytest.raises(ValueError, match="both"):
        client_context(ca, pki.client.certificate_pem, None)
    with pytest.raises(CertificateError, match="does not match"):
        client_context(ca, pki.client.certificate_pem, other_pki.client.private_key_pem)
    with pytest.raises(CertificateError):
        client_context(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError):
        client_context(b"\xff\xfe")
    with pytest.raises(CertificateError):
        server_context(ca, b"nope", pki.server.private_key_pem)
    with pytest.raises(KeyFormatError):
        server_context(ca, pki.server.certificate_pem, b"nope")


def test_encrypted_keys_load_with_their_passphrase(pki: Pki) -> None:
    encrypted = pki.client.encrypted_private_key_pem(b"client pass")
    client_context(
        pki.ca.certificate_pem, pki.client.certificate_pem, encrypted, key_passphrase=b"client pass"
    )
    with pytest.raises(KeyFormatError):
        client_context(
            pki.ca.certificate_pem, pki.client.certificate_pem, encrypted, key_passphrase=b"wrong"
        )


def test_fallback_transient_file_is_private_and_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tls_module, "_memfd", lambda data: None)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with tls_module._transient_file(b"secret") as path:
        assert Path(path).read_bytes() == b"secret"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
    assert not Path(path).exists()
    assert list(tmp_path.iterdir()) == []


def test_memfd_transient_file_is_not_in_any_directory() -> None:
    with tls_module._transient_file(b"secret") as path:
        assert Path(path).read_bytes() == b"secret"
        if path.startswith("/proc/self/fd/"):
            assert os.readlink(path).startswith("/memfd:")


# -- real handshakes over loopback --------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What each side saw: the server's view of the peer and the client's reply or error."""

    seen: list[ClientIdentity | None]
    reply: bytes | None
    error: BaseException | None


async def _exchange(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_hostname: str = "127.0.0.1",
) -> Outcome:
    """Connect once, send a line, read the answer; a handler only runs after a good handshake."""
    seen: list[ClientIdentity | None] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                identity: ClientIdentity | None = identity_from_peercert(
                    writer.get_extra_info("ssl_object")
                )
            except CertificateError:
                identity = None  # what an API would turn into 401
            seen.append(identity)
            await reader.readline()
            reply = b"401\n" if identity is None else f"hello {identity.subject_id}\n".encode()
            writer.write(reply)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reply: bytes | None = None
    error: BaseException | None = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
                ),
                10,
            )
        except (OSError, TimeoutError) as exc:
            error = exc
        else:
            try:
                writer.write(b"ping\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 10)
                reply = line or None  # EOF: the server hung up after refusing us
            except (OSError, asyncio.IncompleteReadError) as exc:
                error = exc
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if seen:
            await asyncio.wait_for(done.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    return Outcome(seen, reply, error)


def _server(pki: Pki, *, require_client_cert: bool = True) -> ssl.SSLContext:
    return server_context(
        pki.ca.certificate_pem,
        pki.server.certificate_pem,
        pki.server.private_key_pem,
        require_client_cert=require_client_cert,
    )


def _client(ca: Pki, issued: IssuedCertificate | None) -> ssl.SSLContext:
    if issued is None:
        return client_context(ca.ca.certificate_pem)
    return client_context(ca.ca.certificate_pem, issued.certificate_pem, issued.private_key_pem)


def _assert_refused(outcome: Outcome) -> None:
    """Over TLS 1.3 the client finishes first and then just sees the server hang up."""
    assert outcome.seen == [], "the server must not accept the connection"
    assert outcome.reply is None


def _server_error(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "127.0.0.1"
) -> ssl.SSLError | None:
    """The same handshake through memory BIOs, to see *why* the server refused."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    pending = {"client": client, "server": server}
    for _ in range(6):
        for side, obj in list(pending.items()):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLError as exc:
                if side == "server":
                    return exc
                raise
            del pending[side]
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert not pending, "handshake did not finish"
    return None


async def test_mutual_tls_with_a_client_certificate_from_the_ca(pki: Pki) -> None:
    assert _server_error(_server(pki), _client(pki, pki.client)) is None
    outcome = await _exchange(_server(pki), _client(pki, pki.client))
    assert outcome.error is None
    assert outcome.seen == [AGENCY]
    assert outcome.reply == b"hello 131016\n"


async def test_client_checks_the_server_by_dns_name_too(pki: Pki) -> None:
    outcome = await _exchange(_server(pki), _client(pki, pki.client), server_hostname="localhost")
    assert outcome.reply == b"hello 131016\n"


async def test_handshake_fails_without_client_certificate_when_required(pki: Pki) -> None:
    outcome = await _exchange(_server(pki), _client(pki, None))
    _assert_refused(outcome)
    error = _server_error(_server(pki), _client(pki, None))
    assert error is not None
    assert error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_optional_client_certificate_lets_the_api_answer_401(pki: Pki) -> None:
    outcome = await _exchange(_server(pki, require_client_cert=False), _client(pki, None))
    assert outcome.seen == [None]
    assert outcome.reply == b"401\n"
    good = await _exchange(_server(pki, require_client_cert=False), _client(pki, pki.client))
    assert good.seen == [AGENCY]


async def test_client_certificate_from_another_ca_is_refused(pki: Pki, other_pki: Pki) -> None:
    foreign = client_context(
        pki.ca.certificate_pem, other_pki.client.certificate_pem, other_pki.client.private_key_pem
    )
    for require in (True, False):
        outcome = await _exchange(_server(pki, require_client_cert=require), foreign)
        _assert_refused(outcome)
        error = _server_error(_server(pki, require_client_cert=require), foreign)
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


async def test_server_certificate_is_not_accepted_as_a_client_certificate(pki: Pki) -> None:
    outcome = await _exchange(_server(pki), _client(pki, pki.server))
    _assert_refused(outcome)
    error = _server_error(_server(pki), _client(pki, pki.server))
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == 26  # X509_V_ERR_INVALID_PURPOSE: serverAuth only


async def test_expired_client_certificate_is_refused(pki: Pki) -> None:
    expired = pki.ca.issue_client(AGENCY, now=_real_now() - 2 * DAY, lifetime=DAY)
    assert expired.not_after < _real_now()
    outcome = await _exchange(_server(pki), _client(pki, expired))
    _assert_refused(outcome)
    error = _server_error(_server(pki), _client(pki, expired))
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == 10  # X509_V_ERR_CERT_HAS_EXPIRED


async def test_client_refuses_a_server_from_another_ca(pki: Pki, other_pki: Pki) -> None:
    outcome = await _exchange(_server(other_pki), _client(pki, pki.client))
    assert isinstance(outcome.error, ssl.SSLCertVerificationError)
    # 19 when the server sends its CA along (OpenSSL builds the chain from its store),
    # 20 when it sends only the leaf: either way the chain does not reach our CA.
    assert outcome.error.verify_code in {19, 20}
    assert outcome.seen == []


async def test_client_refuses_a_server_certificate_for_another_host(pki: Pki) -> None:
    now = _real_now()
    elsewhere = pki.ca.issue_server("elsewhere", hosts=["elsewhere.example"], now=now, lifetime=DAY)
    server = server_context(
        pki.ca.certificate_pem, elsewhere.certificate_pem, elsewhere.private_key_pem
    )
    by_ip = await _exchange(server, _client(pki, pki.client))
    assert isinstance(by_ip.error, ssl.SSLCertVerificationError)
    assert by_ip.error.verify_code == 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
    assert by_ip.seen == []
    by_name = await _exchange(server, _client(pki, pki.client), server_hostname="localhost")
    assert isinstance(by_name.error, ssl.SSLCertVerificationError)
    assert by_name.error.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH
    assert by_name.seen == []


async def test_client_refuses_an_expired_server_certificate(pki: Pki) -> None:
    stale = pki.ca.issue_server("gateway", hosts=HOSTS, now=_real_now() - 2 * DAY, lifetime=DAY)
    server = server_context(pki.ca.certificate_pem, stale.certificate_pem, stale.private_key_pem)
    outcome = await _exchange(server, _client(pki, pki.client))
    assert isinstance(outcome.error, ssl.SSLCertVerificationError)
    assert outcome.error.verify_code == 10  # X509_V_ERR_CERT_HAS_EXPIRED


async def test_handshake_through_the_temporary_directory_fallback(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tls_module, "_memfd", lambda data: None)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    outcome = await _exchange(_server(pki), _client(pki, pki.client))
    assert outcome.seen == [AGENCY]
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
