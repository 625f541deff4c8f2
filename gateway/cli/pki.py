"""``chukan pki``: a certificate authority on disk and the certificates the servers check.

``init`` creates the CA in a folder (``ca.pem``, and ``ca.key.pem`` encrypted
under a passphrase); ``issue`` writes the certificates and keys of one party:
the hub, an agency's gateway, a core system, the hub operator or the 国保連
mailbox; ``list`` shows what the folder holds.  Issuing happens once: servers
read these files at every start (:meth:`TlsSettings.from_files`), so a restart
keeps its identity.

Passphrases come from a file (``--passphrase-file``, mode 0600) or an
environment variable (``--passphrase-env VAR``), never from the command line,
which other users of the machine can read.  Every file is written 0600 and the
folder is 0700; nothing printed holds key material or a passphrase.

The identities are the ones the servers check (:mod:`chukan.gateway.core.identities`):

* ``hub``: a server certificate for the ``--host`` names, and the client
  certificate the hub presents to gateways (OU=hub, CN=hub);
* ``agency``: a server certificate for the ``--host`` names and
  ``<code>.agency.chukan.invalid`` (the name the hub verifies), and the client
  certificate the gateway presents to the hub and the 国保連 (OU=agency, CN=<code>);
* ``kokuhoren``: a server certificate only;
* ``system``: a core system's client certificate (OU=system,
  CN=<code>.<system id>, a role per ``--operation``);
* ``operator``: the hub operator's client certificate (OU=system,
  CN=hub-operator, role ``hub.admin``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import structlog

from chukan.gateway.cli.errors import PkiCommandError
from chukan.gateway.core.config import ALL_OPERATIONS
from chukan.gateway.core.identities import (
    HUB_ADMIN_ROLE,
    HUB_IDENTITY,
    HUB_OPERATOR,
    agency_host,
    system_identity,
)
from chukan.gateway.core.privatefiles import create_private_file, replace_private_file
from chukan.gateway.core.tls import identity_label, system_subject
from chukan.keys.ca import (
    CertificateAuthority,
    CertificateSummary,
    ClientIdentity,
    IssuedCertificate,
    describe_certificate,
    is_issued_by,
)
from chukan.keys.crypto import MIN_PASSPHRASE_BYTES
from chukan.keys.errors import KeysError

log = structlog.get_logger("chukan.pki")

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key.pem"
KEY_SUFFIX: Final = ".key.pem"
DEFAULT_CA_NAME: Final = "chukan CA"
#: Ten years: the CA is replaced rarely and deliberately (every party must trust the new one).
DEFAULT_CA_DAYS: Final = 3650
#: One year for servers and callers: short enough to be re-issued on a routine.
DEFAULT_LEAF_DAYS: Final = 365
KINDS: Final = ("hub", "agency", "system", "operator", "kokuhoren")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class CertificatePlan:
    """What ``issue`` writes for one party: file base name, server hosts, client identity."""

    kind: str
    name: str
    common_name: str
    hosts: tuple[str, ...]
    client: ClientIdentity | None

    def files(self, directory: Path) -> dict[str, tuple[Path, Path]]:
        """``usage`` → (certificate path, key path), for the certificates this plan issues."""
        usages = (["server"] if self.hosts else []) + (["client"] if self.client else [])
        return {
            usage: (
                directory / f"{self.name}.{usage}.pem",
                directory / f"{self.name}.{usage}{KEY_SUFFIX}",
            )
            for usage in usages
        }


def plan_certificates(
    kind: str,
    *,
    agency: str | None = None,
    system_id: str | None = None,
    operations: Sequence[str] = (),
    hosts: Sequence[str] = (),
    name: str | None = None,
) -> CertificatePlan:
    """The identities and names of ``kind``, exactly as the servers check them.

    Options that do not belong to ``kind`` are refused rather than ignored, so a
    mistyped command does not issue something other than what was meant.
    """
    if kind not in KINDS:
        raise PkiCommandError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    _only(kind, "--agency", agency, ("agency", "system"))
    _only(kind, "--system-id", system_id, ("system",))
    _only(kind, "--operation", operations, ("system",))
    _only(kind, "--host", hosts, ("hub", "agency", "kokuhoren"))
    if kind in ("hub", "agency", "kokuhoren") and not hosts:
        raise PkiCommandError(f"--kind {kind} needs at least one --host (DNS name or IP address)")
    client: ClientIdentity | None
    server_hosts = tuple(dict.fromkeys(hosts))
    if kind == "hub":
        default, common_name, client = "hub", "hub", HUB_IDENTITY
    elif kind == "kokuhoren":
        default, common_name, client = "kokuhoren", "kokuhoren", None
    elif kind == "operator":
        default, common_name, client = "hub-operator", "", HUB_OPERATOR
    elif kind == "agency":
        code = _required(agency, "--agency", kind)
        client = ClientIdentity("agency", code)
        default, common_name = f"agency-{code}", code
        # The hub verifies this name when it calls the agency (see agency_host).
        server_hosts = tuple(dict.fromkeys((*server_hosts, agency_host(code))))
    else:
        code = _required(agency, "--agency", kind)
        system = _required(system_id, "--system-id", kind)
        if not operations:
            raise PkiCommandError("--kind system needs at least one --operation")
        unknown = sorted(set(operations) - ALL_OPERATIONS)
        if unknown:
            raise PkiCommandError(
                f"unknown operation(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(ALL_OPERATIONS))}"
            )
        client = system_identity(code, system, set(operations))
        default, common_name = system_subject(code, system), ""
    chosen = default if name is None else name
    if not _NAME.fullmatch(chosen) or chosen in ("ca", "ca.key"):
        raise PkiCommandError(f"--name {chosen!r}: use 1-100 characters of [A-Za-z0-9._-]")
    return CertificatePlan(kind, chosen, common_name, server_hosts, client)


def _only(kind: str, option: str, value: object, kinds: tuple[str, ...]) -> None:
    if value and kind not in kinds:
        raise PkiCommandError(f"{option} does not apply to --kind {kind}")


def _required(value: str | None, option: str, kind: str) -> str:
    if not value:
        raise PkiCommandError(f"--kind {kind} needs {option}")
    return value


# -- passphrases ------------------------------------------------------------------------


def read_passphrase(
    file: Path | None, variable: str | None, env: Mapping[str, str], what: str
) -> bytes:
    """A passphrase from a 0600 file (one trailing newline dropped) or an environment variable."""
    if file is not None:
        try:
            if stat.S_IMODE(file.stat().st_mode) & 0o077:
                raise PkiCommandError(f"{what} file {file} is open to others; chmod 600 it")
            value = file.read_bytes()
        except OSError as exc:
            raise PkiCommandError(f"{what} file {file} cannot be read: {exc.strerror}") from None
        value = value.removesuffix(b"\n").removesuffix(b"\r")
    elif variable is not None:
        text = env.get(variable)
        if not text:
            raise PkiCommandError(f"{what}: environment variable {variable} is not set")
        value = text.encode("utf-8")
    else:  # argparse makes one of them required
        raise PkiCommandError(f"give the {what} by file or environment variable")
    if len(value) < MIN_PASSPHRASE_BYTES:
        raise PkiCommandError(
            f"the {what} must be a random secret of at least {MIN_PASSPHRASE_BYTES} bytes"
        )
    return value


# -- files ------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` 0600: a new file only, or with ``force`` an atomic replacement."""
    if force:
        replace_private_file(path, data)
    elif not create_private_file(path, data):
        raise FileExistsError(path)


def _refuse_existing(paths: Sequence[Path], hint: str) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise PkiCommandError(f"{', '.join(existing)} already exist(s); {hint}")


def _entry(summary: CertificateSummary, cert: Path, key: Path | None) -> dict[str, Any]:
    """How one certificate is shown (JSON): never key material."""
    entry: dict[str, Any] = {
        "certificate": str(cert),
        "private_key": None if key is None else str(key),
        "usage": summary.usage,
        "kind": _kind(summary),
        "subject": summary.common_name,
    }
    if summary.identity is not None:
        entry["subject"] = identity_label(summary.identity)
        entry["roles"] = list(summary.identity.roles)
    if summary.usage == "server":
        entry["hosts"] = list(summary.hosts)
    entry["not_after"] = summary.not_after.isoformat()
    entry["sha256"] = summary.sha256
    return entry


def _kind(summary: CertificateSummary) -> str:
    identity = summary.identity
    if identity is None:
        return summary.usage
    if identity.kind == "system" and HUB_ADMIN_ROLE in identity.roles:
        return "operator"
    return identity.kind


# -- commands ---------------------------------------------------------------------------


def _init(args: argparse.Namespace, env: Mapping[str, str], now: dt.datetime) -> dict[str, Any]:
    directory: Path = args.dir
    if args.days <= 0:
        raise PkiCommandError("--days must be positive")
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_existing([cert_path, key_path], "this folder already holds a CA (nothing was changed)")
    passphrase = read_passphrase(
        args.passphrase_file, args.passphrase_env, env, "CA key passphrase"
    )
    if directory.exists():
        if stat.S_IMODE(directory.stat().st_mode) & 0o077:
            raise PkiCommandError(f"{directory} is open to others; chmod 700 it or use a new one")
    else:
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # whatever the umask
    ca = CertificateAuthority.create(args.name, now=now, lifetime=dt.timedelta(days=args.days))
    _write_new(key_path, ca.private_key_pem(passphrase), force=False)
    _write_new(cert_path, ca.certificate_pem, force=False)
    log.info("pki_ca_created", directory=str(directory), not_after=ca.not_after.isoformat())
    return {
        "ca": _entry(describe_certificate(ca.certificate_pem), cert_path, key_path),
    }


def _open_ca(directory: Path, passphrase: bytes) -> CertificateAuthority:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise PkiCommandError(f"no CA in {directory}; run chukan pki init --dir {directory}")
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        raise PkiCommandError(f"{key_path} is open to others; chmod 600 it")
    return CertificateAuthority.load(cert_path.read_bytes(), key_path.read_bytes(), passphrase)


def _issue(args: argparse.Namespace, env: Mapping[str, str], now: dt.datetime) -> dict[str, Any]:
    directory: Path = args.dir
    plan = plan_certificates(
        args.kind,
        agency=args.agency,
        system_id=args.system_id,
        operations=args.operation or (),
        hosts=args.host or (),
        name=args.name,
    )
    if args.days <= 0:
        raise PkiCommandError("--days must be positive")
    files = plan.files(directory)
    if not args.force:
        _refuse_existing(
            [p for pair in files.values() for p in pair], "pass --force to replace them"
        )
    ca_passphrase = read_passphrase(
        args.passphrase_file, args.passphrase_env, env, "CA key passphrase"
    )
    key_passphrase = (
        None
        if args.no_key_passphrase
        else read_passphrase(
            args.key_passphrase_file, args.key_passphrase_env, env, "key passphrase"
        )
    )
    ca = _open_ca(directory, ca_passphrase)
    lifetime = dt.timedelta(days=args.days)
    if now + lifetime > ca.not_after:
        raise PkiCommandError(
            f"a certificate for {args.days} days would outlive the CA "
            f"(valid until {ca.not_after.isoformat()}); give a smaller --days"
        )
    party = ca.issue_party(
        plan.common_name or plan.name,
        hosts=plan.hosts,
        client=plan.client,
        now=now,
        lifetime=lifetime,
    )
    issued: dict[str, IssuedCertificate | None] = {"server": party.server, "client": party.client}
    written = []
    for usage, (cert_path, key_path) in files.items():
        certificate = issued[usage]
        assert certificate is not None  # files() follows the plan, as issue_party does
        key_pem = (
            certificate.private_key_pem
            if key_passphrase is None
            else certificate.encrypted_private_key_pem(key_passphrase)
        )
        _write_new(key_path, key_pem, force=args.force)
        _write_new(cert_path, certificate.certificate_pem, force=args.force)
        summary = describe_certificate(certificate.certificate_pem)
        log.info(
            "pki_certificate_issued", kind=plan.kind, usage=usage, file=str(cert_path),
            sha256=summary.sha256, not_after=summary.not_after.isoformat(),
        )  # fmt: skip
        written.append(_entry(summary, cert_path, key_path))
    return {
        "kind": plan.kind,
        "ca": str(directory / CA_CERT),
        "key_encrypted": key_passphrase is not None,
        "certificates": written,
    }


def _list(args: argparse.Namespace, now: dt.datetime) -> dict[str, Any]:
    directory: Path = args.dir
    ca_path = directory / CA_CERT
    if not ca_path.exists():
        raise PkiCommandError(f"no CA in {directory}")
    ca_pem = ca_path.read_bytes()
    entries = []
    for path in sorted(directory.glob("*.pem")):
        if path.name.endswith(KEY_SUFFIX) or path.name.startswith("."):
            continue
        key = path.with_name(path.name.removesuffix(".pem") + KEY_SUFFIX)
        try:
            summary = describe_certificate(path.read_bytes())
        except KeysError as exc:
            entries.append({"certificate": str(path), "error": str(exc)})
            continue
        entry = _entry(summary, path, key if key.exists() else None)
        entry["expired"] = summary.not_after <= now
        entry["issued_by_ca"] = is_issued_by(ca_pem, path.read_bytes())
        entries.append(entry)
    return {"directory": str(directory), "certificates": entries}


def _print_list(document: dict[str, Any], out: TextIO) -> None:
    print(f"certificates in {document['directory']}:", file=out)
    for entry in document["certificates"]:
        name = Path(entry["certificate"]).name
        if "error" in entry:
            print(f"  {name:<36} unreadable: {entry['error']}", file=out)
            continue
        detail = entry.get("hosts") or entry.get("roles") or []
        flags = "" if entry["issued_by_ca"] else "  NOT ISSUED BY ca.pem"
        flags += "  EXPIRED" if entry["expired"] else ""
        print(
            f"  {name:<36} {entry['kind']:<9} {entry['subject']:<32} "
            f"until {entry['not_after'][:10]}  {' '.join(detail)}{flags}",
            file=out,
        )


def run(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Run one ``chukan pki`` subcommand; returns the exit status (1 on any refusal)."""
    out = out or sys.stdout
    err = err or sys.stderr
    environment = os.environ if env is None else env
    moment = now or dt.datetime.now(dt.UTC)
    try:
        if args.pki_command == "init":
            print(json.dumps(_init(args, environment, moment), indent=2), file=out)
        elif args.pki_command == "issue":
            print(json.dumps(_issue(args, environment, moment), indent=2), file=out)
        else:
            document = _list(args, moment)
            if args.json:
                print(json.dumps(document, indent=2), file=out)
            else:
                _print_list(document, out)
    except (PkiCommandError, KeysError, ValueError) as exc:
        print(f"chukan pki: error: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"chukan pki: error: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    return 0


# -- the parser -------------------------------------------------------------------------


def _passphrase_options(
    parser: argparse.ArgumentParser, prefix: str, what: str, *, optional: bool = False
) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        f"--{prefix}passphrase-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the {what} (mode 0600, at least {MIN_PASSPHRASE_BYTES} bytes)",
    )
    group.add_argument(
        f"--{prefix}passphrase-env",
        metavar="VAR",
        help=f"environment variable holding the {what}",
    )
    if optional:
        group.add_argument(
            f"--no-{prefix}passphrase",
            action="store_true",
            help="write the private keys unencrypted (still mode 0600)",
        )


def add_commands(commands: Any) -> None:
    """Register ``pki`` and its subcommands on the top-level subparsers."""
    pki = commands.add_parser(
        "pki",
        help="a certificate authority on disk and the certificates of each server and caller",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    sub = pki.add_subparsers(dest="pki_command", required=True)

    init = sub.add_parser(
        "init",
        help="create the CA (refuses to overwrite one)",
        description="Create ca.pem and ca.key.pem (encrypted PKCS#8) in a new 0700 folder.",
    )
    init.add_argument("--dir", type=Path, required=True, help="the PKI folder")
    init.add_argument(
        "--name", default=DEFAULT_CA_NAME, help=f"CA common name (default {DEFAULT_CA_NAME!r})"
    )
    init.add_argument(
        "--days",
        type=int,
        default=DEFAULT_CA_DAYS,
        help=f"CA lifetime in days (default {DEFAULT_CA_DAYS})",
    )
    _passphrase_options(init, "", "CA key passphrase")

    issue = sub.add_parser(
        "issue",
        help="issue the certificates of one party as PEM files",
        description=(
            "Write NAME.server.pem / NAME.server.key.pem (hub, agency, kokuhoren) and "
            "NAME.client.pem / NAME.client.key.pem (hub, agency, system, operator); "
            "prints what was written as JSON."
        ),
    )
    issue.add_argument("--dir", type=Path, required=True, help="the PKI folder (with the CA)")
    issue.add_argument("--kind", required=True, choices=KINDS, help="whose certificates")
    issue.add_argument("--agency", help="agency code (kinds agency and system)")
    issue.add_argument("--system-id", help="core system id (kind system)")
    issue.add_argument(
        "--operation",
        action="append",
        metavar="OP",
        help="an operation the core system may call (kind system; repeat for more)",
    )
    issue.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="a DNS name or IP address the server is reached at (repeat for more)",
    )
    issue.add_argument(
        "--name", help="file base name (default: hub, agency-CODE, CODE.SYSTEM, ...)"
    )
    issue.add_argument(
        "--days",
        type=int,
        default=DEFAULT_LEAF_DAYS,
        help=f"certificate lifetime in days (default {DEFAULT_LEAF_DAYS})",
    )
    issue.add_argument("--force", action="store_true", help="replace existing files")
    _passphrase_options(issue, "", "CA key passphrase")
    _passphrase_options(issue, "key-", "passphrase of the new private keys", optional=True)

    listing = sub.add_parser("list", help="show the certificates in the folder (no key material)")
    listing.add_argument("--dir", type=Path, required=True, help="the PKI folder")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
