"""The local CA of one offline network: the demo, benchmarks and tests.

:func:`chukan.simulators.devnet.network.start_network` creates a :class:`NetworkPki` at
start-up (nothing is read from or written to disk; ``chukan pki`` is the CA on disk,
issuing through the same :class:`~chukan.keys.ca.CertificateAuthority` methods) and
issues from it:

* one server certificate per server, for ``127.0.0.1``, ``::1`` and ``localhost``;
* a client certificate per agency gateway (kind ``agency``, subject = agency code),
  which it presents to the hub;
* the hub's client certificate (kind ``hub``), which it presents to gateways;
* client certificates for core systems (kind ``system``, subject
  ``<agency>.<system id>``, roles = the operations granted) and for the hub's
  operator (kind ``system``, role ``hub.admin``), on demand.

Client contexts are cached per identity, so a test session builds each once.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from chukan.gateway.core.identities import system_identity
from chukan.gateway.core.tls import TlsSettings
from chukan.keys.ca import CertificateAuthority, ClientIdentity, IssuedCertificate
from chukan.keys.tls import client_context, server_context

LOOPBACK_HOSTS: Final = ("127.0.0.1", "::1", "localhost")
DEFAULT_CA_LIFETIME: Final = dt.timedelta(days=400)
DEFAULT_LEAF_LIFETIME: Final = dt.timedelta(days=90)


@dataclass
class NetworkPki:
    """A CA created for one run, with the certificates and contexts issued from it."""

    ca: CertificateAuthority
    leaf_lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME
    _contexts: dict[ClientIdentity | None, ssl.SSLContext] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        name: str = "chukan local CA",
        *,
        now: dt.datetime | None = None,
        ca_lifetime: dt.timedelta = DEFAULT_CA_LIFETIME,
        leaf_lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
    ) -> NetworkPki:
        moment = now or dt.datetime.now(dt.UTC)
        return cls(
            CertificateAuthority.create(name, now=moment, lifetime=ca_lifetime), leaf_lifetime
        )

    @property
    def ca_pem(self) -> bytes:
        return self.ca.certificate_pem

    def _now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def issue_client(self, identity: ClientIdentity) -> IssuedCertificate:
        return self.ca.issue_client(identity, now=self._now(), lifetime=self.leaf_lifetime)

    def settings(
        self, server_name: str, client: ClientIdentity, hosts: Sequence[str] = LOOPBACK_HOSTS
    ) -> TlsSettings:
        """Server certificate for ``hosts`` and a client certificate for ``client``.

        Issued as ``chukan pki issue`` issues them (:meth:`CertificateAuthority.issue_party`),
        but kept in memory for this run.
        """
        party = self.ca.issue_party(
            server_name, hosts=hosts, client=client, now=self._now(), lifetime=self.leaf_lifetime
        )
        assert party.server is not None
        assert party.client is not None
        return TlsSettings(
            ca_pem=self.ca_pem,
            server_cert_pem=party.server.certificate_pem,
            server_key_pem=party.server.private_key_pem,
            client_cert_pem=party.client.certificate_pem,
            client_key_pem=party.client.private_key_pem,
        )

    def server_context(
        self, server_name: str, hosts: Sequence[str] = LOOPBACK_HOSTS
    ) -> ssl.SSLContext:
        """A listener context for a server that authenticates its callers otherwise (tokens)."""
        server = self.ca.issue_server(
            server_name, hosts=hosts, now=self._now(), lifetime=self.leaf_lifetime
        )
        return server_context(
            self.ca_pem, server.certificate_pem, server.private_key_pem, require_client_cert=False
        )

    def client_context(self, identity: ClientIdentity) -> ssl.SSLContext:
        """A client context presenting a certificate for ``identity`` (built once per identity)."""
        ctx = self._contexts.get(identity)
        if ctx is None:
            issued = self.issue_client(identity)
            ctx = client_context(self.ca_pem, issued.certificate_pem, issued.private_key_pem)
            self._contexts[identity] = ctx
        return ctx

    def anonymous_context(self) -> ssl.SSLContext:
        """Trusts the CA but presents no certificate (a caller with a bearer token, or nobody)."""
        ctx = self._contexts.get(None)
        if ctx is None:
            ctx = client_context(self.ca_pem)
            self._contexts[None] = ctx
        return ctx

    def system_context(
        self, agency_code: str, system_id: str, operations: Iterable[str]
    ) -> ssl.SSLContext:
        """A core system of ``agency_code`` holding a certificate for ``operations``."""
        return self.client_context(system_identity(agency_code, system_id, operations))

    def export_client(
        self, identity: ClientIdentity, directory: Path, name: str, passphrase: bytes
    ) -> tuple[Path, Path]:
        """Write a client certificate and its key (encrypted PKCS#8, 0600) for an outside caller.

        Used by the pytest plugin (:mod:`chukan.testing`) to hand a vendor's core system its files.
        Returns (certificate path, key path); the CA certificate is ``ca.pem`` beside them.
        """
        issued = self.issue_client(identity)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(directory / "ca.pem", self.ca_pem)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        _write_private(cert_path, issued.certificate_pem)
        _write_private(key_path, issued.encrypted_private_key_pem(passphrase))
        return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
