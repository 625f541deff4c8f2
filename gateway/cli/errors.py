"""Failures of the gateway's own commands (``chukan records|staff|ops|keys``).

Each is a :class:`~chukan.gateway.core.errors.CommandError`: printed as one line on
stderr, never an HTTP answer.
"""

from __future__ import annotations

from chukan.gateway.core.errors import CommandError


class AdminCommandError(CommandError):
    """Bad arguments or state of ``chukan records|staff|ops``: printed, exit status 2."""

    code = "admin_command_failed"


class KeyCommandError(CommandError):
    """A usage problem of ``chukan keys``, reported as one line on stderr, exit status 1."""

    code = "keys_command_failed"


class PkiCommandError(CommandError):
    """A usage problem of ``chukan pki`` (files that exist, a missing passphrase, a bad
    option for the kind): one line on stderr, exit status 1."""

    code = "pki_command_failed"


class ServeCommandError(CommandError):
    """``chukan gateway serve`` cannot do what its options ask (e.g. ``--migrate`` without
    an owner login): printed as one line on stderr, exit status 2."""

    code = "serve_command_failed"


class DatabaseCommandError(CommandError):
    """``chukan db`` cannot do what it was asked (no database, no rights, a bad URL
    source): one line on stderr, exit status 2."""

    code = "db_command_failed"
