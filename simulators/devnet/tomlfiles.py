"""Writing the servers' TOML files and secret files, as an operator would.

``chukan serve`` (:mod:`chukan.simulators.devnet.serve`) writes one folder of
these for the whole offline network; the fault suite writes its own.  The
files are read back by each server's ``chukan <server> serve --config``
(:mod:`chukan.gateway.core.config_file`, ``chukan.simulators.hub.config_file``,
``chukan.simulators.kokuhoren.config_file``), so what is written here follows
their rules: secrets only as ``*_file`` paths (files 0600), database URLs
without a password, paths relative to the TOML file's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from chukan.gateway.core.config import SystemCredential
from chukan.keys import PublicSigningKey, b64e


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; non-ASCII stays readable)."""
    return json.dumps(value, ensure_ascii=False)


def toml_value(value: object) -> str:
    """A TOML scalar or array of the simple kinds the files use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only (0600), replacing atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)


def write_if_changed(path: Path, text: str) -> bool:
    """Write a (non-secret) file only when its content differs; True when written."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return True


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (None when it has none)."""
    parts = urlsplit(url)
    if not parts.password:
        user = parts.username
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{user}@{host}" if user else host
        return urlunsplit(parts._replace(netloc=netloc)), None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
    return bare, parts.password


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The ``[tls]`` table's files, relative to the TOML file's folder."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str | None = None
    client_key: str | None = None

    def table(self) -> str:
        lines = [
            "[tls]",
            f"ca_file = {toml_string(self.ca)}",
            f"server_cert_file = {toml_string(self.server_cert)}",
            f"server_key_file = {toml_string(self.server_key)}",
        ]
        if self.client_cert is not None and self.client_key is not None:
            lines += [
                f"client_cert_file = {toml_string(self.client_cert)}",
                f"client_key_file = {toml_string(self.client_key)}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Database:
    """``[database]``: a URL without password, and the password's file (if any)."""

    url: str
    password_file: str | None = None

    def lines(self) -> list[str]:
        lines = [f"url = {toml_string(self.url)}"]
        if self.password_file is not None:
            lines.append(f"password_file = {toml_string(self.password_file)}")
        return lines


def _settings(name: str, values: Mapping[str, object]) -> str:
    if not values:
        return ""
    body = "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
    return f"\n[{name}]\n{body}"


def _simulator_sections(
    host: str,
    port: int,
    database: Database,
    key_dir: str,
    passphrase_file: str,
    admin_token_file: str,
) -> str:
    """``[server]``, ``[database]``, ``[keys]`` and ``[admin]``: the same for hub and 国保連."""
    return (
        f"[server]\nhost = {toml_string(host)}\nport = {port}\n\n"
        "[database]\n" + "\n".join(database.lines()) + "\n\n"
        f"[keys]\ndir = {toml_string(key_dir)}\n"
        f"passphrase_file = {toml_string(passphrase_file)}\n\n"
        f"[admin]\ntoken_file = {toml_string(admin_token_file)}\n\n"
    )


def hub_toml(
    *,
    host: str,
    port: int,
    database: Database,
    key_dir: str,
    passphrase_file: str,
    admin_token_file: str,
    tls: TlsFiles,
    timing: Mapping[str, object] | None = None,
) -> str:
    """The hub's file (README, "Running each server on its own")."""
    return (
        _simulator_sections(host, port, database, key_dir, passphrase_file, admin_token_file)
        + tls.table()
        + _settings("timing", timing or {})
    )


def kokuhoren_toml(
    *,
    host: str,
    port: int,
    database: Database,
    key_dir: str,
    passphrase_file: str,
    admin_token_file: str,
    tls: TlsFiles,
    require_client_certificate: bool = True,
) -> str:
    """The 国保連 simulator's file: a server certificate only (it calls no one)."""
    return (
        _simulator_sections(host, port, database, key_dir, passphrase_file, admin_token_file)
        + f"[mailbox]\nrequire_client_certificate = {toml_value(require_client_certificate)}\n\n"
        + tls.table()
    )


@dataclass(frozen=True, slots=True)
class KokuhorenFiles:
    """A gateway's ``[kokuhoren]`` table: the mailbox, its token's file, its keys' file."""

    url: str
    token_file: str
    keys_file: str


def gateway_toml(
    *,
    code: str,
    name: str,
    host: str,
    port: int,
    database: Database,
    key_dir: str,
    passphrase_file: str,
    hub_url: str,
    hub_key: PublicSigningKey,
    enrolment_token_file: str,
    systems: Iterable[SystemCredential],
    tls: TlsFiles,
    insurer_number: str | None = None,
    migration: Database | None = None,
    kokuhoren: KokuhorenFiles | None = None,
    timing: Mapping[str, object] | None = None,
) -> str:
    """One agency's gateway file (README, "Running each server on its own")."""
    agency = f"[agency]\ncode = {toml_string(code)}\nname = {toml_string(name)}\n"
    if insurer_number:
        agency += f"insurer_number = {toml_string(insurer_number)}\n"
    text = (
        agency
        + f"\n[server]\nhost = {toml_string(host)}\nport = {port}\n\n"
        + "[database]\n"
        + "\n".join(database.lines())
        + "\n"
    )
    if migration is not None:
        text += "\n[database.migration]\n" + "\n".join(migration.lines()) + "\n"
    text += (
        f"\n[keys]\ndir = {toml_string(key_dir)}\n"
        f"passphrase_file = {toml_string(passphrase_file)}\n\n"
        f"[hub]\nurl = {toml_string(hub_url)}\n"
        f"signing_key = {toml_string(f'{hub_key.key_id}={b64e(hub_key.raw)}')}\n"
        f"enrolment_token_file = {toml_string(enrolment_token_file)}\n\n"
    )
    for system in systems:
        text += (
            f"[[systems]]\nid = {toml_string(system.system_id)}\n"
            f"operations = {toml_value(sorted(system.operations))}\n"
        )
        if system.token_sha256:
            text += f"token_sha256 = {toml_string(system.token_sha256)}\n"
        text += "\n"
    if kokuhoren is not None:
        text += (
            f"[kokuhoren]\nurl = {toml_string(kokuhoren.url)}\n"
            f"token_file = {toml_string(kokuhoren.token_file)}\n"
            f"keys_file = {toml_string(kokuhoren.keys_file)}\n\n"
        )
    return text + tls.table() + _settings("timing", timing or {})
