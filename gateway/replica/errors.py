"""Exceptions of the replica (副本) flow: registrations, the store, reconciliation, the CLI.

Each picks its kind (and so its HTTP status) from :mod:`chukan.gateway.core.errors`.
"""

from __future__ import annotations

from chukan.gateway.core.errors import CommandError, ConflictError, GatewayError, NotFoundError


class MessageIdReusedError(ConflictError):
    """A MSGID that was used before, with a different message body."""

    code = "message_id_reused"


class MessageUnknownError(NotFoundError):
    """No registration message with this MSGID was received."""

    code = "message_unknown"


class RegistrationRacedError(ConflictError):
    """Another transaction stored the same MSGID first (control flow: its answer is replayed)."""

    code = "message_id_raced"


class FeedClosedError(GatewayError):
    """Nobody takes a message's decoded batches any more (control flow: the decoder stops)."""

    code = "registration_feed_closed"


class ReplicaInconsistentError(ConflictError):
    """Records of one person and item cannot be combined into one document."""

    code = "replica_inconsistent"


class ReconcileInputError(CommandError):
    """A file that is not in the reconciliation format (message names file and line)."""

    code = "reconcile_input_invalid"


class ReplicaCommandError(CommandError):
    """A problem of a ``chukan replica`` invocation or its environment (exit code 2)."""

    code = "replica_command_failed"
