"""``ssl.SSLContext`` factories for mutual TLS with the local CA (DESIGN §6).

Both sides speak TLS 1.3 only, trust only the given CA certificates (never the
system store) and use OpenSSL's strict X.509 checks.  The server side checks
that client certificates carry the clientAuth usage and the client side that
server certificates carry serverAuth and name the host (OpenSSL's default
purposes for each side).

Getting a certificate and key into a context without files: the stdlib ``ssl``
module can read trust anchors from memory (``cadata=``) but has no in-memory
``load_cert_chain``.  On Linux the PEM is written to an anonymous
``memfd_create`` file (RAM only, no name in any file system, closed straight
after loading) and read through ``/proc/self/fd``.  Elsewhere, or if that is
unavailable, a private ``TemporaryDirectory`` (mode 0700) holds one 0600 file
that is deleted as soon as OpenSSL has read it.  In both cases the private key
written out is first re-encrypted under a random one-time passphrase, so no
plaintext key ever leaves Python memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .errors import CertificateError, KeyFormatError

__all__ = ["client_context", "server_context"]


def server_context(
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    require_client_cert: bool = True,
    key_passphrase: bytes | None = None,
) -> ssl.SSLContext:
    """A server context that verifies clients against ``ca_pem``.

    With ``require_client_cert=False`` the handshake still refuses certificates
    from other CAs, but lets a client without one through so that the API can
    answer 401 itself (and record the attempt).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, ca_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_chain(ctx, cert_pem, key_pem, key_passphrase)
    return ctx


def client_context(
    ca_pem: bytes,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    *,
    key_passphrase: bytes | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server (chain and host name) against ``ca_pem``.

    Pass both ``cert_pem`` and ``key_pem`` to present a client certificate, or neither.
    """
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("give both a client certificate and its key, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, ca_pem)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_pem is not None and key_pem is not None:
        _load_chain(ctx, cert_pem, key_pem, key_passphrase)
    return ctx


def _harden(ctx: ssl.SSLContext, ca_pem: bytes) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        text = ca_pem.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CertificateError("CA certificates must be PEM") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CertificateError("CA certificates must be PEM")
    try:
        # cadata may hold several PEM certificates: old and new CA during a CA rotation.
        ctx.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError("CA certificates cannot be loaded") from exc


def _load_chain(
    ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, key_passphrase: bytes | None
) -> None:
    """Check the key matches the leaf, then hand both to OpenSSL through a transient file."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError("certificate chain is not readable PEM") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=key_passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("private key cannot be loaded (wrong passphrase or format)") from exc
    if certs[0].public_key() != key.public_key():
        raise CertificateError("private key does not match the certificate")
    one_time = secrets.token_urlsafe(32).encode("ascii")
    wrapped = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time),
    )
    blob = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs) + wrapped
    with _transient_file(blob) as path:
        try:
            ctx.load_cert_chain(path, password=one_time)
        except ssl.SSLError as exc:
            raise CertificateError("certificate and key are not usable for TLS") from exc


@contextlib.contextmanager
def _transient_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, gone when the block ends."""
    fd = _memfd(data)
    if fd is not None:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="chukan-tls-") as directory:
        path = Path(directory) / "chain.pem"
        file_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(file_fd, data)
        finally:
            os.close(file_fd)
        try:
            yield str(path)
        finally:
            path.unlink(missing_ok=True)


def _memfd(data: bytes) -> int | None:
    """An anonymous in-memory file holding ``data``, or None where memfd is unavailable."""
    create = getattr(os, "memfd_create", None)
    if create is None or not Path("/proc/self/fd").is_dir():
        return None
    try:
        fd: int = create("chukan-tls", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        _write_all(fd, data)
    except OSError:
        os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
