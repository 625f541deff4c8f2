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
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from chukan.keys.ca import ClientIdentity, identity_from_certificate
from chukan.keys.tls import client_context, server_context

__all__ = [
    "TlsSettings",
    "client_session",
    "identity_label",
    "peer_certificate",
    "peer_identity",
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
