"""The names the network's certificates carry, as the hub and gateways check them.

Shared by the servers (which verify them) and the offline network's CA (which
issues them), so both spell an identity the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from chukan.gateway.core.tls import system_subject
from chukan.keys.ca import ClientIdentity

#: A name under ``.invalid`` (RFC 6761: never resolves) that only agency ``code``'s
#: server certificate carries: the hub connects to ``https://127.0.0.1:…`` but asks TLS
#: to verify this name, so a registry endpoint pointing at another agency's server is
#: refused in the handshake, before any message is sent.
AGENCY_HOST_SUFFIX: Final = ".agency.chukan.invalid"


def agency_host(code: str) -> str:
    """The identity name TLS checks when the hub calls agency ``code``'s gateway."""
    return code + AGENCY_HOST_SUFFIX


HUB_IDENTITY: Final = ClientIdentity("hub", "hub")
#: Role of the hub operator's client certificate (publishing lists, reading hub records).
HUB_ADMIN_ROLE: Final = "hub.admin"
HUB_OPERATOR: Final = ClientIdentity("system", "hub-operator", (HUB_ADMIN_ROLE,))


def system_identity(agency_code: str, system_id: str, operations: Iterable[str]) -> ClientIdentity:
    """The certificate identity of an agency's core system: roles are its operations."""
    return ClientIdentity(
        "system", system_subject(agency_code, system_id), tuple(sorted(operations))
    )
