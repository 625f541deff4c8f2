"""Reading servers' TOML configuration files: the rules every server's file follows.

The gateway (:mod:`chukan.gateway.core.config_file`), the hub and the 国保連
simulator read their files through :class:`Table`, so the three files follow
one set of rules an operator learns once:

* **Unknown keys are refused.**  A typo (``prot = 8443``) must not silently
  leave a default in force; :meth:`Table.finish` names every key not read.
* **Secrets are never inline.**  A passphrase or token is given as
  ``<name>_file = "path"`` (the file's content, one trailing newline removed;
  refused when group or others may read it) or ``<name>_env = "VARIABLE"``.
  ``<name> = "..."`` in the file itself is refused, naming the key, so a
  secret never ends up in a file that is copied, versioned or shown around.
* **Durations are seconds** (an integer or a decimal number): TOML has no
  duration type, and one unit everywhere avoids ``"PT5M"`` versus ``300``
  mix-ups.
* **Relative paths** are relative to the folder of the configuration file, so
  a folder of files can move as one.

Every failure is a :class:`~chukan.gateway.core.errors.ConfigFileError` whose
message names the file, the table and the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from chukan.gateway.core.db import with_credentials
from chukan.gateway.core.errors import (
    ConfigFileError,
    ConfigKeyUnknownError,
    InlineSecretError,
    SecretFileExposedError,
)
from chukan.gateway.core.tls import TlsSettings
from chukan.keys import (
    KeysError,
    PublicEncryptionKey,
    PublicSigningKey,
    b64d,
    key_id_for,
    public_encryption_key,
    public_signing_key,
)

#: Permission bits that must be clear on a secret file: nothing for group or others.
EXPOSED_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
FILE_SUFFIX: Final = "_file"
ENV_SUFFIX: Final = "_env"
ROOT: Final = ""


def read_toml(path: Path) -> Table:
    """The file's top-level table; a missing or malformed file is a :class:`ConfigFileError`."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    return Table(path, ROOT, data)


def read_secret_file(path: Path) -> bytes:
    """A secret file's content (one trailing newline removed); refused if others may read it."""
    try:
        mode = path.stat().st_mode
        if mode & EXPOSED_BITS:
            raise SecretFileExposedError(
                f"{path} may be read by group or others (mode {stat.filemode(mode)}); "
                f"run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


class Table:
    """One table of a configuration file; it remembers which keys were read.

    Typed getters refuse a value of the wrong type; :meth:`finish` refuses the
    keys nobody read (typos, settings of another server, retired names).
    """

    def __init__(self, source: Path, name: str, data: dict[str, Any]) -> None:
        self.source = source
        self.name = name
        self.data = data
        self._read: set[str] = set()
        self._children: list[Table] = []

    # -- errors ---------------------------------------------------------------------------

    def where(self, key: str | None = None) -> str:
        table = f"[{self.name}]" if self.name else "top level"
        return f"{self.source}: {table}" + (f" {key}" if key else "")

    def error(self, key: str | None, problem: str) -> ConfigFileError:
        return ConfigFileError(f"{self.where(key)}: {problem}")

    # -- plain values ---------------------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self.data.get(key)

    def _typed(self, key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self._get(key)
        if value is None:
            return None
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self.error(key, f"must be {what}, not {type(value).__name__}")
        return value

    def required(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(key, "is required")
        return self.data[key]

    def text(self, key: str) -> str:
        """A required non-empty string."""
        self.required(key)
        value = self.optional_text(key)
        assert value is not None
        return value

    def optional_text(self, key: str, default: str | None = None) -> str | None:
        value = self._typed(key, (str,), "a string")
        if value is None:
            return default
        if not value:
            raise self.error(key, "must not be empty")
        return str(value)

    def integer(self, key: str, default: int) -> int:
        value = self._typed(key, (int,), "an integer")
        return default if value is None else int(value)

    def number(self, key: str, default: float) -> float:
        value = self._typed(key, (int, float), "a number")
        if value is None:
            return default
        if value < 0:
            raise self.error(key, "must not be negative")
        return float(value)

    def seconds(self, key: str, default: dt.timedelta) -> dt.timedelta:
        """A duration, written as a number of seconds."""
        value = self._typed(key, (int, float), "a number of seconds")
        if value is None:
            return default
        if value < 0:
            raise self.error(key, "must not be negative")
        return dt.timedelta(seconds=value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._typed(key, (bool,), "true or false")
        return default if value is None else bool(value)

    def texts(self, key: str) -> list[str]:
        value = self._typed(key, (list,), "a list of strings")
        if value is None:
            return []
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        return list(value)

    def port(self, key: str, default: int) -> int:
        value = self.integer(key, default)
        if not 0 <= value <= 65535:
            raise self.error(key, "must be a port number (0 to 65535)")
        return value

    def path(self, key: str) -> Path:
        """A required path; a relative one is relative to the configuration file's folder."""
        return self.source.parent / self.text(key)

    def optional_path(self, key: str) -> Path | None:
        value = self.optional_text(key)
        return None if value is None else self.source.parent / value

    def url(self, key: str) -> str:
        """A required ``http(s)://host[:port]`` URL (no trailing slash kept)."""
        value = self.text(key)
        self.check_url(key, value)
        return value.rstrip("/")

    def check_url(self, key: str, value: str) -> None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(key, f"must be an http:// or https:// URL, not {value!r}")

    # -- tables ---------------------------------------------------------------------------

    def table(self, key: str) -> Table:
        """A sub-table (empty when absent), checked by :meth:`finish` with this one."""
        value = self._typed(key, (dict,), "a table")
        child = Table(self.source, f"{self.name}.{key}" if self.name else key, value or {})
        self._children.append(child)
        return child

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[key]]``), each checked by :meth:`finish`."""
        value = self._typed(key, (list,), "an array of tables ([[...]])")
        children = []
        for index, item in enumerate(value or []):
            name = f"{self.name}.{key}" if self.name else key
            if not isinstance(item, dict):
                raise self.error(key, "must be an array of tables ([[...]])")
            children.append(Table(self.source, f"{name}[{index}]", item))
        self._children.extend(children)
        return children

    def finish(self) -> None:
        """Refuse the keys nobody read, here and in every sub-table read through this one."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            names = ", ".join(unknown)
            raise ConfigKeyUnknownError(
                f"{self.where()}: unknown key{'s' if len(unknown) > 1 else ''} {names}"
            )
        for child in self._children:
            child.finish()

    # -- secrets --------------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """A required secret: ``<name>_file`` or ``<name>_env``, never ``<name>`` inline."""
        value = self.optional_secret(name)
        if value is None:
            raise self.error(
                None, f"give {name}{FILE_SUFFIX} (a file, mode 0600) or {name}{ENV_SUFFIX}"
            )
        return value

    def optional_secret(self, name: str) -> bytes | None:
        file_key, env_key = name + FILE_SUFFIX, name + ENV_SUFFIX
        if name in self.data:
            self._read.add(name)
            raise InlineSecretError(
                f"{self.where(name)}: secrets are never written in the configuration file; "
                f"give {file_key} (a file, mode 0600) or {env_key} (an environment variable)"
            )
        file_name = self.optional_text(file_key)
        env_name = self.optional_text(env_key)
        if file_name is not None and env_name is not None:
            raise self.error(file_key, f"give {file_key} or {env_key}, not both")
        if file_name is not None:
            try:
                value = read_secret_file(self.source.parent / file_name)
            except ConfigFileError as exc:
                raise type(exc)(f"{self.where(file_key)}: {exc.message}") from None
        elif env_name is not None:
            text = os.environ.get(env_name)
            if text is None:
                raise self.error(env_key, f"the environment variable {env_name} is not set")
            value = text.encode("utf-8")
        else:
            return None
        if not value:
            raise self.error(file_key if file_name is not None else env_key, "the secret is empty")
        return value

    def secret_text(self, name: str) -> str:
        return self._decode(name, self.secret(name))

    def optional_secret_text(self, name: str) -> str | None:
        value = self.optional_secret(name)
        return None if value is None else self._decode(name, value)

    def _decode(self, name: str, value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(name, "the secret is not UTF-8 text") from None

    def private_pem(self, key: str) -> bytes:
        """A private key's PEM file: like a secret file, group and others may not read it."""
        path = self.path(key)
        try:
            return read_secret_file(path) + b"\n"
        except ConfigFileError as exc:
            raise type(exc)(f"{self.where(key)}: {exc.message}") from None

    def public_file(self, key: str) -> bytes:
        """A public file (certificate, public key): read as it is."""
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise self.error(key, f"{path}: no such file") from None
        except OSError as exc:
            raise self.error(key, f"{path}: cannot read: {exc.strerror}") from None

    # -- settings shared by the servers ----------------------------------------------------

    def database_url(self) -> str:
        """This table's ``url`` (no password in it) with ``password_file``/``password_env``."""
        url = self.text("url")
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise self.error("url", "must be a postgresql:// URL")
        if parts.password:
            raise InlineSecretError(
                f"{self.where('url')}: the URL holds a password; secrets are never written "
                f"in the configuration file: give password_file (mode 0600) or password_env"
            )
        password = self.optional_secret_text("password")
        if password is None:
            return url
        if not parts.username:
            raise self.error("url", "name the login role in the URL (postgresql://ROLE@HOST/DB)")
        return with_credentials(url, parts.username, password)

    def dataclass_fields(self, cls: type[Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword arguments for ``cls`` from this table, typed by each field's default.

        A field whose default is a ``timedelta`` is read as seconds, ``float`` as a
        number, ``int`` as an integer, ``bool`` and ``str`` as such; absent keys keep
        the default.  ``skip`` names fields read otherwise.
        """
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name in skip or not self.has(item.name):
                continue
            default = item.default
            if isinstance(default, dt.timedelta):
                values[item.name] = self.seconds(item.name, default)
            elif isinstance(default, bool):
                values[item.name] = self.flag(item.name, default)
            elif isinstance(default, int):
                values[item.name] = self.integer(item.name, default)
            elif isinstance(default, float):
                values[item.name] = self.number(item.name, default)
            elif isinstance(default, str):
                values[item.name] = self.optional_text(item.name, default)
        return values

    def tls(self, *, client: bool = True) -> TlsSettings | None:
        """The ``[tls]`` table as :class:`TlsSettings`; None when the table is absent.

        ``client=False`` for a server that calls no one (the 国保連 simulator):
        it has no client certificate, and its client parts are left empty.
        """
        if not self.has("tls"):
            return None
        tls = self.table("tls")
        settings = TlsSettings(
            ca_pem=tls.public_file("ca_file"),
            server_cert_pem=tls.public_file("server_cert_file"),
            server_key_pem=tls.private_pem("server_key_file"),
            client_cert_pem=tls.public_file("client_cert_file") if client else b"",
            client_key_pem=tls.private_pem("client_key_file") if client else b"",
            key_passphrase=tls.optional_secret("key_passphrase"),
        )
        # Build the contexts once now: a wrong file or passphrase stops the start here,
        # naming the table, rather than at the first handshake.
        try:
            settings.server_context()
        except KeysError as exc:
            raise tls.error(
                "server_key_file", f"{exc} (server_cert_file, key_passphrase)"
            ) from None
        if client:
            try:
                settings.client_context()
            except KeysError as exc:
                raise tls.error(
                    "client_key_file", f"{exc} (client_cert_file, key_passphrase)"
                ) from None
        return settings

    # -- public keys ----------------------------------------------------------------------

    def signing_key(self, key: str, owner: str) -> PublicSigningKey:
        """A peer's public signing key: ``<key> = "KEY_ID=BASE64"`` or ``<key>_file`` (JSON)."""
        key_id, raw = self._public_key(key, owner, "sig")
        try:
            return public_signing_key(key_id, raw)
        except KeysError as exc:
            raise self.error(key, str(exc)) from None

    def encryption_key(self, key: str, owner: str) -> PublicEncryptionKey:
        key_id, raw = self._public_key(key, owner, "enc")
        try:
            return public_encryption_key(key_id, raw)
        except KeysError as exc:
            raise self.error(key, str(exc)) from None

    def _public_key(self, key: str, owner: str, purpose: str) -> tuple[str, bytes]:
        file_key = key + FILE_SUFFIX
        inline = self.optional_text(key)
        file_path = self.optional_path(file_key)
        if (inline is None) == (file_path is None):
            raise self.error(key, f"give {key} (KEY_ID=BASE64) or {file_key}, one of them")
        if file_path is not None:
            return self._public_key_file(file_key, file_path)
        assert inline is not None
        key_id, equals, encoded = inline.partition("=")
        if not equals or not encoded.strip("="):  # no key id: the value is the key alone
            key_id, encoded = "", inline
        encoded = encoded.rstrip("=")
        try:
            raw = b64d(encoded)
        except KeysError:
            raise self.error(key, "must be KEY_ID=BASE64 (base64url of the raw key)") from None
        return key_id or key_id_for(owner, purpose, raw), raw

    def _public_key_file(self, key: str, path: Path) -> tuple[str, bytes]:
        """``{"key_id": ..., "public": BASE64}``, as ``/network/v1/hub-key`` answers."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            key_id, encoded = document["key_id"], document["public"]
            if not isinstance(key_id, str) or not isinstance(encoded, str):
                raise TypeError
            return key_id, b64d(encoded)
        except FileNotFoundError:
            raise self.error(key, f"{path}: no such file") from None
        except (OSError, ValueError, KeyError, TypeError, KeysError):
            raise self.error(
                key, f'{path}: expected JSON {{"key_id": "...", "public": "BASE64"}}'
            ) from None
