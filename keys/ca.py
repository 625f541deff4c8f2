"""A local certificate authority for mutual TLS between core systems, peers and the hub (DESIGN §6).

Pure code: values in, values out, with ``cryptography.x509`` only.  All keys are
ECDSA P-256 and every certificate is signed with ECDSA-SHA256.  The certificates
are shaped to pass OpenSSL's ``X509_V_FLAG_X509_STRICT`` checks (critical basic
constraints and key usage, subject and authority key identifiers), which
:mod:`chukan.keys.tls` turns on.

Client identity encoding (one choice, used in both directions):

* subject ``CN`` = the subject id (agency code or core-system id), exactly once;
* subject ``OU`` = the kind (``agency``, ``system`` or ``hub``), exactly once;
* each role as a subjectAltName URI ``urn:chukan:role:<role>``, in order.

Roles live in the SAN rather than in ``O`` attributes because ``O`` means
"organisation" to every other tool that displays certificates, while a URI
namespace cannot be confused with anything else.

The same functions serve the offline network's CA (in memory, one run) and
``chukan pki`` (a CA on disk): :meth:`CertificateAuthority.issue_party` issues
what one server or caller needs, :func:`describe_certificate` reads any of them
back for listings, and :func:`check_key_pair` checks a key file against its
certificate before a server starts with it.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateError, KeyFormatError

ClientKind = Literal["agency", "system", "hub"]
CLIENT_KINDS: Final[frozenset[str]] = frozenset(get_args(ClientKind))
ROLE_URI_PREFIX: Final = "urn:chukan:role:"
#: Certificates start this much before ``now`` so that a peer whose clock is a
#: little behind does not refuse a certificate issued a moment ago.
CLOCK_SKEW: Final = timedelta(minutes=5)

_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_CN: Final = 64  # ub-common-name in RFC 5280


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a client certificate speaks for; checked on construction so a parsed one is sane."""

    kind: ClientKind
    subject_id: str
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CLIENT_KINDS:
            raise CertificateError(f"unknown client kind {self.kind!r}")
        if not _SUBJECT_ID.fullmatch(self.subject_id):
            raise CertificateError("subject id must be 1-64 characters of [A-Za-z0-9._-]")
        if not isinstance(self.roles, tuple):
            raise CertificateError("roles must be a tuple")
        for role in self.roles:
            if not isinstance(role, str) or not _ROLE.fullmatch(role):
                raise CertificateError("a role must be 1-64 characters of [A-Za-z0-9._:-]")
        if len(set(self.roles)) != len(self.roles):
            raise CertificateError("roles must not repeat")


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf certificate and its key; the key is unencrypted PEM, so keep it in memory only."""

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    serial: int
    not_after: datetime

    def encrypted_private_key_pem(self, passphrase: bytes) -> bytes:
        """The key as encrypted PKCS#8, for writing to disk."""
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        return _encrypt_key(key, passphrase)


@dataclass(frozen=True, slots=True)
class PartyCertificates:
    """The certificates of one party (see :meth:`CertificateAuthority.issue_party`)."""

    server: IssuedCertificate | None
    client: IssuedCertificate | None


def _encrypt_key(key: object, passphrase: bytes) -> bytes:
    if not passphrase:
        raise KeyFormatError("a passphrase is required to write a private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFormatError("not an EC private key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def _aware(now: datetime, name: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return now


def _positive(lifetime: timedelta) -> timedelta:
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
    return lifetime


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _host_name(host: str) -> x509.GeneralName:
    """An IP literal becomes an iPAddress SAN, anything else must be a plain DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(lbl) for lbl in labels):
        raise CertificateError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A self-signed CA that may only sign leaf certificates (pathlen 0)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def create(cls, name: str, *, now: datetime, lifetime: timedelta) -> CertificateAuthority:
        """A new CA whose certificate is valid from ``now`` (less clock skew) for ``lifetime``."""
        _aware(now)
        _positive(lifetime)
        if not name or len(name) > _MAX_CN:
            raise ValueError(f"CA name must be 1-{_MAX_CN} characters")
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, passphrase: bytes) -> CertificateAuthority:
        """Inverse of :attr:`certificate_pem` and :meth:`private_key_pem`; checks they match."""
        cert = _load_certificate(cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(
                "CA private key cannot be loaded (wrong passphrase or format)"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise KeyFormatError("CA private key is not an ECDSA P-256 key")
        if cert.public_key() != key.public_key():
            raise CertificateError("CA private key does not match the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise CertificateError("CA certificate has no basic constraints") from exc
        if not constraints.ca:
            raise CertificateError("certificate is not a CA certificate")
        return cls(cert, key)

    @property
    def name(self) -> str:
        return _single_attribute(self.certificate.subject, NameOID.COMMON_NAME, "CN")

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def certificate_pem(self) -> bytes:
        """The trust anchor to hand to every peer (``cadata=`` in :mod:`chukan.keys.tls`)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self, passphrase: bytes) -> bytes:
        """The CA key as encrypted PKCS#8; an empty passphrase is refused."""
        return _encrypt_key(self.private_key, passphrase)

    def issue_server(
        self,
        common_name: str,
        *,
        hosts: Sequence[str],
        now: datetime,
        lifetime: timedelta,
    ) -> IssuedCertificate:
        """A serverAuth certificate naming every DNS name and IP address it may be reached at."""
        if isinstance(hosts, str) or not hosts:
            raise ValueError("hosts must be a non-empty sequence of names")
        names = [_host_name(h) for h in hosts]
        if len(set(names)) != len(names):
            raise CertificateError("hosts must not repeat")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _cn(common_name))])
        return self._issue(
            subject,
            names,
            ExtendedKeyUsageOID.SERVER_AUTH,
            now=now,
            lifetime=lifetime,
        )

    def issue_client(
        self, identity: ClientIdentity, *, now: datetime, lifetime: timedelta
    ) -> IssuedCertificate:
        """A clientAuth certificate carrying ``identity`` (see the module docstring)."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.subject_id),
            ]
        )
        uris: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role) for role in identity.roles
        ]
        return self._issue(
            subject,
            uris,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            now=now,
            lifetime=lifetime,
        )

    def issue_party(
        self,
        common_name: str,
        *,
        hosts: Sequence[str] = (),
        client: ClientIdentity | None = None,
        now: datetime,
        lifetime: timedelta,
    ) -> PartyCertificates:
        """What one party needs: a server certificate for ``hosts`` (when it listens) and
        a client certificate for ``client`` (when it calls others), issued together.

        A hub or an agency gateway gets both; a 国保連 mailbox only the server one; a
        core system or the hub operator only the client one.
        """
        if not hosts and client is None:
            raise ValueError("a party needs hosts to serve, a client identity, or both")
        server = (
            self.issue_server(common_name, hosts=hosts, now=now, lifetime=lifetime)
            if hosts
            else None
        )
        issued = None if client is None else self.issue_client(client, now=now, lifetime=lifetime)
        return PartyCertificates(server=server, client=issued)

    def _issue(
        self,
        subject: x509.Name,
        alt_names: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        *,
        now: datetime,
        lifetime: timedelta,
    ) -> IssuedCertificate:
        _aware(now)
        _positive(lifetime)
        not_after = now + lifetime
        if now < self.certificate.not_valid_before_utc:
            raise CertificateError("the CA is not valid yet at the requested time")
        if not_after > self.not_after:
            raise CertificateError("the certificate would outlive the CA; issue a shorter one")
        key = _new_key()
        serial = x509.random_serial_number()
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        return IssuedCertificate(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
            private_key_pem=_key_pem(key),
            serial=serial,
            not_after=cert.not_valid_after_utc,
        )

    def verify(self, der_or_pem: bytes, *, now: datetime) -> x509.Certificate:
        """Check a leaf was signed by this CA and is valid at ``now`` (for paths without TLS)."""
        _aware(now)
        cert = _load_certificate(der_or_pem)
        if cert.issuer != self.certificate.subject:
            raise CertificateError("certificate was not issued by this CA")
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateError("certificate was not issued by this CA") from exc
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError("certificate is not valid at this time")
        return cert


def _cn(common_name: str) -> str:
    if not common_name or len(common_name) > _MAX_CN:
        raise ValueError(f"common name must be 1-{_MAX_CN} characters")
    return common_name


def _load_certificate(der_or_pem: bytes) -> x509.Certificate:
    """One certificate from PEM (first block) or DER; anything unreadable is a CertificateError."""
    if not isinstance(der_or_pem, bytes | bytearray | memoryview):
        raise CertificateError("certificate must be bytes")
    data = bytes(der_or_pem)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError("not a readable X.509 certificate") from exc


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise CertificateError(f"certificate subject must have exactly one {label}")
    return values[0].value


def identity_from_certificate(der_or_pem: bytes) -> ClientIdentity:
    """Read a client identity back, refusing anything not shaped as :meth:`issue_client` makes.

    This parses only: the signature chain and validity period must already have
    been checked, normally by the TLS handshake (or by :meth:`CertificateAuthority.verify`).
    """
    cert = _load_certificate(der_or_pem)
    allowed = {NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME}
    for rdn in cert.subject.rdns:
        if len(rdn) != 1 or next(iter(rdn)).oid not in allowed:
            raise CertificateError("client certificate subject has unexpected attributes")
    subject_id = _single_attribute(cert.subject, NameOID.COMMON_NAME, "CN")
    kind = _single_attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("client certificate lacks basic constraints or EKU") from exc
    except ValueError as exc:  # duplicate or malformed extensions
        raise CertificateError("client certificate has malformed extensions") from exc
    if constraints.ca:
        raise CertificateError("a CA certificate is not a client identity")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateError("certificate is not for client authentication")
    roles: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for general_name in san:
            if not isinstance(general_name, x509.UniformResourceIdentifier):
                raise CertificateError("client certificate has an unexpected alternative name")
            if not general_name.value.startswith(ROLE_URI_PREFIX):
                raise CertificateError("client certificate has an unexpected URI")
            roles.append(general_name.value.removeprefix(ROLE_URI_PREFIX))
    if kind not in CLIENT_KINDS:
        raise CertificateError(f"unknown client kind {kind!r}")
    # ClientIdentity re-validates every field and raises CertificateError itself.
    return ClientIdentity(kind=cast(ClientKind, kind), subject_id=subject_id, roles=tuple(roles))


def identity_from_peercert(
    ssl_object_or_der: ssl.SSLObject | ssl.SSLSocket | bytes | None,
) -> ClientIdentity:
    """Identity of the TLS peer, from ``transport.get_extra_info("ssl_object")`` or its DER.

    ``None`` (no client certificate, possible with ``require_client_cert=False``)
    raises :class:`CertificateError` so that the caller answers 401.
    """
    der: bytes | None
    if isinstance(ssl_object_or_der, ssl.SSLObject | ssl.SSLSocket):
        der = ssl_object_or_der.getpeercert(binary_form=True)
    else:
        der = ssl_object_or_der
    if der is None:
        raise CertificateError("the peer presented no certificate")
    return identity_from_certificate(der)


CertificateUsage = Literal["ca", "server", "client"]


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    """What a certificate says about itself, for listings and checks (no key material)."""

    usage: CertificateUsage
    common_name: str
    #: The identity a client certificate carries; None for CA and server certificates.
    identity: ClientIdentity | None
    #: DNS names and IP addresses a server certificate names (subjectAltName).
    hosts: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    #: SHA-256 of the DER encoding, lower-case hex: what ``openssl x509 -fingerprint
    #: -sha256`` prints, without the colons.
    sha256: str


def certificate_fingerprint(der_or_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, lower-case hex (a stable name for "the same cert")."""
    return _load_certificate(der_or_pem).fingerprint(hashes.SHA256()).hex()


def describe_certificate(der_or_pem: bytes) -> CertificateSummary:
    """Read a CA, server or client certificate back as :class:`CertificateSummary`.

    A client certificate must be shaped as :meth:`CertificateAuthority.issue_client`
    makes them (see :func:`identity_from_certificate`); anything else that is
    neither a CA nor a serverAuth certificate is a :class:`CertificateError`.
    """
    cert = _load_certificate(der_or_pem)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("certificate has no basic constraints") from exc
    try:
        usages: x509.ExtendedKeyUsage | None = cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        ).value
    except x509.ExtensionNotFound:
        usages = None
    identity: ClientIdentity | None = None
    hosts: tuple[str, ...] = ()
    usage: CertificateUsage
    if constraints.ca:
        usage = "ca"
    elif usages is not None and ExtendedKeyUsageOID.SERVER_AUTH in usages:
        usage = "server"
        hosts = _san_hosts(cert)
    elif usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        usage = "client"
        identity = identity_from_certificate(der_or_pem)
    else:
        raise CertificateError("certificate is neither a CA, a server nor a client certificate")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return CertificateSummary(
        usage=usage,
        common_name=common_name,
        identity=identity,
        hosts=hosts,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _san_hosts(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    ips = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def is_issued_by(ca_pem: bytes, der_or_pem: bytes) -> bool:
    """Whether the CA certificate ``ca_pem`` signed ``der_or_pem`` (signature and issuer only)."""
    ca = _load_certificate(ca_pem)
    cert = _load_certificate(der_or_pem)
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_key_pair(cert_pem: bytes, key_pem: bytes, passphrase: bytes | None) -> None:
    """Refuse a private key that cannot be opened with ``passphrase`` or is not the cert's.

    Raises :class:`KeyFormatError` (unreadable, wrong or missing passphrase, not
    ECDSA/Ed25519/RSA) or :class:`CertificateError` (another certificate's key).
    """
    cert = _load_certificate(cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(
            "private key cannot be loaded (wrong or missing passphrase, or not PEM)"
        ) from exc
    if cert.public_key() != key.public_key():
        raise CertificateError("private key does not match the certificate")
