"""Mutual TLS wiring for the gateway and the hub (DESIGN §6).

:class:`TlsSettings` is the configuration value: the trust anchor(s) of the
local CA, this server's certificate and key, and the client certificate and key
this party presents when it calls others (an agency gateway calling the hub, the
hub calling gateways).  The ``ssl.SSLContext`` objects are built from it by
:mod:`chukan.keys.tls` (TLS 1.3 only, strict X.509 checks, trust in the local
CA only).

Servers run with ``CERT_OPTIONAL``: the handshake still refuses certificates of
another CA, but a client without a certificate gets through to the application,
which answers 401 itself and records the attempt (an internal-API caller may
instead hold a configured bearer credential).

:func:`peer_identity` reads the verified client certificate of a request back
as a :class:`~chukan.keys.ca.ClientIdentity` (kind, subject id, roles).

:meth:`TlsSettings.from_files`, :func:`server_context_from_files` and
:func:`client_context_from_files` read the PEM files that ``chukan pki issue``
writes (or an operator's own), so a restarted server presents the same
certificate: nothing is issued at start-up.
"""

from __future__ import annotations

import functools
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from chukan.keys.ca import ClientIdentity, check_key_pair, identity_from_certificate
from chukan.keys.errors import CertificateError, KeyFormatError
from chukan.keys.tls import client_context, server_context

__all__ = [
    "TlsSettings",
    "client_context_from_files",
    "client_session",
    "identity_label",
    "peer_certificate",
    "peer_identity",
    "server_context_from_files",
]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Certificates of one party; private keys are PEM (optionally encrypted) and never printed."""

    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes = field(repr=False)
    client_cert_pem: bytes
    client_key_pem: bytes = field(repr=False)
    #: Passphrase of both private keys when they are encrypted PKCS#8 (None: plain PEM in memory).
    key_passphrase: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls,
        ca: Path,
        server_cert: Path,
        server_key: Path,
        client_cert: Path,
        client_key: Path,
        *,
        key_passphrase: bytes | None = None,
    ) -> TlsSettings:
        """Settings from PEM files, as ``chukan pki issue`` writes them (or the operator's own).

        Both private keys are opened with ``key_passphrase`` (None: unencrypted
        keys) and checked against their certificates now, so that a wrong file or
        passphrase stops the server at start-up with the file's name rather than
        at the first handshake.  A key file others may read is refused.
        """
        server_cert_pem, server_key_pem = _key_pair(server_cert, server_key, key_passphrase)
        client_cert_pem, client_key_pem = _key_pair(client_cert, client_key, key_passphrase)
        return cls(
            ca_pem=_read_certificates(ca),
            server_cert_pem=server_cert_pem,
            server_key_pem=server_key_pem,
            client_cert_pem=client_cert_pem,
            client_key_pem=client_key_pem,
            key_passphrase=key_passphrase,
        )

    def server_context(self) -> ssl.SSLContext:
        """Listener context: verifies client certificates against the CA when one is presented."""
        return server_context(
            self.ca_pem,
            self.server_cert_pem,
            self.server_key_pem,
            require_client_cert=False,
            key_passphrase=self.key_passphrase,
        )

    def client_context(self) -> ssl.SSLContext:
        """Outgoing context: verifies the server and presents this party's client certificate."""
        return client_context(
            self.ca_pem,
            self.client_cert_pem,
            self.client_key_pem,
            key_passphrase=self.key_passphrase,
        )


def server_context_from_files(
    ca: Path, cert: Path, key: Path, *, key_passphrase: bytes | None = None
) -> ssl.SSLContext:
    """A listener context from PEM files, for a server that presents no client certificate
    (the 国保連 mailbox); client certificates are verified when presented, as with
    :meth:`TlsSettings.server_context`."""
    cert_pem, key_pem = _key_pair(cert, key, key_passphrase)
    return server_context(
        _read_certificates(ca),
        cert_pem,
        key_pem,
        require_client_cert=False,
        key_passphrase=key_passphrase,
    )


def client_context_from_files(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    key_passphrase: bytes | None = None,
) -> ssl.SSLContext:
    """A client context from PEM files: a core system or the hub operator calling a server
    (``cert`` and ``key`` both, or neither to trust the CA without presenting one)."""
    if (cert is None) != (key is None):
        raise ValueError("give both a client certificate and its key, or neither")
    if cert is None or key is None:
        return client_context(_read_certificates(ca))
    cert_pem, key_pem = _key_pair(cert, key, key_passphrase)
    return client_context(_read_certificates(ca), cert_pem, key_pem, key_passphrase=key_passphrase)


def _read_certificates(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"certificate file {path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{path} holds no PEM certificate")
    return data


def _read_private(path: Path) -> bytes:
    """A private key file; refused when group or others may read or write it (chmod 600)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyFormatError(f"private key file {path} is open to others; chmod 600 it")
        return path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"private key file {path} cannot be read: {exc.strerror}") from None


def _key_pair(cert: Path, key: Path, passphrase: bytes | None) -> tuple[bytes, bytes]:
    cert_pem = _read_certificates(cert)
    key_pem = _read_private(key)
    try:
        check_key_pair(cert_pem, key_pem, passphrase)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{key}: {exc}") from None
    except CertificateError as exc:
        raise CertificateError(f"{key} and {cert}: {exc}") from None
    return cert_pem, key_pem


def client_session(tls: TlsSettings | None) -> aiohttp.ClientSession:
    """A client session that speaks mutual TLS with ``tls`` (plain HTTP when None)."""
    if tls is None:
        return aiohttp.ClientSession()
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))


def peer_certificate(request: web.Request) -> bytes | None:
    """DER of the client certificate the TLS handshake verified, or None (no TLS, no cert)."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


@functools.lru_cache(maxsize=1024)
def _identity(der: bytes) -> ClientIdentity:
    # Parsing costs tens of microseconds; a connection presents the same certificate
    # on every request, so parse each distinct certificate once.
    return identity_from_certificate(der)


def peer_identity(request: web.Request) -> ClientIdentity | None:
    """Who the verified client certificate speaks for; None without one.

    Raises :class:`~chukan.keys.ca.CertificateError` for a certificate of our CA
    that is not shaped as this CA issues client certificates.
    """
    der = peer_certificate(request)
    if der is None:
        return None
    return _identity(der)


def identity_label(identity: ClientIdentity) -> str:
    """How a certificate caller is named in records and logs: ``kind:subject``."""
    return f"{identity.kind}:{identity.subject_id}"


def system_subject(agency_code: str, system_id: str) -> str:
    """Subject id of a core system's client certificate: ``<agency code>.<system id>``.

    The agency prefix binds the certificate to one agency's gateway, so a core
    system of another agency (same network CA) is refused even if its system id
    is the same.
    """
    return f"{agency_code}.{system_id}"


def parse_system_subject(subject_id: str) -> tuple[str, str] | None:
    """Inverse of :func:`system_subject`; None when the subject has no agency prefix."""
    agency, dot, system_id = subject_id.partition(".")
    if not dot or not agency or not system_id:
        return None
    return agency, system_id
