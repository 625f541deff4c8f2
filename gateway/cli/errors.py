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
