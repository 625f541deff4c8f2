"""Exceptions of ``chukan.simulators``: the hub's and 国保連's refusals.

They are kinds of the gateway's errors (:mod:`chukan.gateway.core.errors`), so
the one status table and error middleware answer them the same way.
"""

from __future__ import annotations

from chukan.gateway.core.errors import ForbiddenError


class PeerMismatchError(ForbiddenError):
    """The client certificate speaks for another party than the message or request names."""

    code = "peer_mismatch"
