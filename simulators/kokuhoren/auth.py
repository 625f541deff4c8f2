"""Who may call the 国保連 simulator.

* ``/admin/...``: the admin bearer token.
* ``/mailbox/...``: a 保険者's bearer token (the simulator keeps only its
  SHA-256) and, with mutual TLS, the client certificate of the agency the
  保険者 was onboarded for.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import structlog
from aiohttp import web

from chukan.gateway.core.config import token_digest
from chukan.gateway.core.errors import ForbiddenError, UnauthenticatedError
from chukan.gateway.core.tls import peer_identity
from chukan.keys import PublicSigningKey
from chukan.keys.errors import CertificateError
from chukan.simulators.errors import ClientCertificateRequiredError, PeerMismatchError
from chukan.simulators.kokuhoren.config import KokuhorenConfig
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE

log = structlog.get_logger("chukan.kokuhoren")


@dataclass(frozen=True, slots=True)
class Insurer:
    insurer_number: str
    name: str
    signing_keys: dict[str, PublicSigningKey]
    encryption_key_id: str
    encryption_key: bytes


def require_admin(request: web.Request) -> None:
    """Every ``/admin`` call carries the simulator's admin bearer token."""
    state = request.config_dict[KOKUHOREN_STATE]
    supplied = request.headers.get("Authorization", "")
    if not supplied:
        raise UnauthenticatedError("an administrator token is required")
    expected = f"Bearer {state.config.admin_token}"
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ForbiddenError("the administrator token is not valid")


def _check_peer(
    request: web.Request, config: KokuhorenConfig, insurer: str, agency: str | None
) -> None:
    """With mutual TLS the token alone is not enough: the caller's certificate must be
    the agency the 保険者 was onboarded for."""
    try:
        peer = peer_identity(request)
    except CertificateError:
        peer = None
    if peer is None:
        if config.require_client_certificate:
            log.warning("mailbox_access_refused", code=ClientCertificateRequiredError.code)
            raise ClientCertificateRequiredError("a client certificate is required")
        return
    if peer.kind != "agency" or agency is None or peer.subject_id != agency:
        log.warning("mailbox_access_refused", code=PeerMismatchError.code, insurer=insurer)
        raise PeerMismatchError("the client certificate is not the 保険者's agency")


async def authenticate_insurer(request: web.Request) -> Insurer:
    """The 保険者 whose bearer token this is (compared as a SHA-256 digest)."""
    state = request.config_dict[KOKUHOREN_STATE]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not token:
        raise UnauthenticatedError("a 保険者 token is required")
    row = await state.pool.fetchrow(
        "SELECT * FROM insurers WHERE token_sha256 = $1", token_digest(token)
    )
    if row is None:
        log.warning("mailbox_access_refused", code="unauthenticated")
        raise UnauthenticatedError("the token does not belong to a registered 保険者")
    _check_peer(request, state.config, row["insurer_number"], row["agency_code"])
    keys = await state.pool.fetch(
        "SELECT key_id, public_key FROM insurer_keys WHERE insurer_number = $1 AND purpose = 'sig'",
        row["insurer_number"],
    )
    return Insurer(
        insurer_number=row["insurer_number"],
        name=row["name"],
        signing_keys={k["key_id"]: PublicSigningKey(k["key_id"], k["public_key"]) for k in keys},
        encryption_key_id=row["encryption_key_id"],
        encryption_key=row["encryption_key"],
    )
