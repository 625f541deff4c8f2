"""The hub simulator's HTTP contract as an OpenAPI 3.1 document, served at ``/openapi.json``
and kept in ``docs/openapi-hub.json``.

One table of routes in faces (the operator's admin API, an agency's enrolment, the
network API of agencies' gateways, operations), built by the gateway's document builder
(:mod:`chukan.gateway.core.apidoc`); tests/unit/test_openapi_simulators.py checks the
table against the application's routes both ways, the document's validity and the copy
in ``docs/``.  Regenerate: ``python -m chukan.simulators.hub.openapi > docs/openapi-hub.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from chukan.gateway.core.apidoc import ApiSpec, Face, Route, Security
from chukan.gateway.core.apidoc import route as _r

#: Raise when a route is added, changed or removed.
VERSION: Final = "1.1.0"

_ERRORS: Final[Sequence[int]] = (400, 401, 403, 404, 405, 413, 415, 422, 500, 503)

_ADMIN: Final[Mapping[tuple[str, str], Route]] = {
    ("POST", "/admin/v1/agencies/{code}/enrolment-token"): _r(
        "issue (or set, with an optional JSON body {token}) an agency's enrolment token",
        status=201,
    ),
    ("DELETE", "/admin/v1/agencies/{code}/enrolment-token"): _r(
        "revoke an agency's enrolment token"
    ),
    ("GET", "/admin/v1/agencies/{code}/enrolment-token"): _r(
        "whether an agency's enrolment token is issued, used or revoked (never the token)"
    ),
    ("GET", "/admin/v1/records"): _r("every query the hub recorded (its current state)"),
    ("POST", "/admin/v1/deliveries/retry"): _r(
        "make every pending delivery due now (after an outage was repaired)"
    ),
    ("POST", "/admin/v1/authorization-list"): _r(
        "publish a new version of the 情報提供ネットワークシステム authorization list and push "
        "it to every gateway",
        body="csv|xml",
        status=201,
        query=("lifetime_seconds",),
    ),
    ("GET", "/admin/v1/authorization-list/versions"): _r("the list versions published"),
}

_ENROLMENT: Final[Mapping[tuple[str, str], Route]] = {
    ("POST", "/admin/v1/agencies"): _r(
        "an agency's gateway enrols itself (endpoint and public keys) with its enrolment token",
        body="json",
        status=201,
        required_fields=("code", "name", "endpoint", "signing_key", "encryption_key"),
    ),
}

_NETWORK: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/network/v1/agencies"): _r("the registered agencies and their public keys"),
    ("GET", "/network/v1/agencies/{code}"): _r("one agency and its public keys"),
    ("GET", "/network/v1/hub-key"): _r("the hub's public signing key"),
    ("GET", "/network/v1/authorization-list"): _r(
        "the authorization list in force, signed (XML)", answer="xml"
    ),
    ("POST", "/network/v1/messages"): _r(
        "a signed envelope (Chukan-Signature): 符号 requests answered at once (signed XML), "
        "a query accepted with its permit (202), an answer or conclusion routed",
        body="xml",
        answer="xml",
        also=((202, "json"),),
        errors=(409,),
    ),
    ("POST", "/network/v1/messages/batch"): _r(
        "several signed envelopes of the calling agency in one exchange (JSON, base64 bodies "
        "each with its signature and request id): each handled exactly as alone, answered in "
        "order with the status, body and signature it would have had alone; a malformed "
        "batch is 400 message_batch_invalid",
        body="json",
    ),
    ("GET", "/network/v1/records"): _r(
        "the hub's record of each query the calling agency took part in (reconciliation)",
        query=("from", "to", "after", "limit", "agency"),
    ),
    ("POST", "/network/v1/witness"): _r(
        "witness a signed checkpoint of the calling agency's record chain (a receipt)",
        body="json",
        errors=(409,),
        required_fields=("tenant", "after_seq", "seq", "hash", "signed_at", "key_id"),
    ),
    ("GET", "/network/v1/witness"): _r(
        "the calling agency's receipts, in seq order", query=("after", "limit", "tenant")
    ),
}

_OPS: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/health"): _r("liveness: the process and its database answer", errors=(503,)),
    ("GET", "/ready"): _r(
        "readiness: database, outbox, authorization list, records (docs/hub-records.md)",
        errors=(503,),
    ),
    ("GET", "/metrics"): _r("Prometheus metrics", answer="text"),
    ("GET", "/openapi.json"): _r("this document"),
}

_TLS: Final[Security] = [{"mutualTLS": []}]

FACES: Final[Sequence[Face]] = (
    Face("admin", _ADMIN, [{"mutualTLS": [], "adminToken": []}], _ERRORS),
    Face("enrolment", _ENROLMENT, [{"mutualTLS": [], "enrolmentToken": []}], _ERRORS),
    Face("network", _NETWORK, _TLS, _ERRORS),
    Face("ops", _OPS, _TLS, (401, 403, 500)),
)

_PARAMETERS: Final[Mapping[str, dict[str, Any]]] = {
    "code": {"type": "string", "pattern": "^[0-9]{6}$", "description": "団体コード (agency code)"},
}

SPEC: Final = ApiSpec(
    title="chukan hub simulator (情報提供ネットワークシステム)",
    version=VERSION,
    description=(
        "The network's hub: routes 情報照会 between agencies' gateways, issues 符号 and "
        "permits, publishes the authorization list, witnesses agencies' record checkpoints. "
        "With TLS every call presents a client certificate of the network CA: agencies' "
        "gateways for /network/v1 and their own enrolment, the operator's (role hub.admin) "
        "plus the admin token for /admin/v1. Every refusal is "
        '{"error": {"code", "message"}} with a code listed in the Error schema; while the '
        "hub cannot record verifiably, new queries are refused with 503 records_unavailable."
    ),
    faces=FACES,
    security_schemes={
        "mutualTLS": {
            "type": "mutualTLS",
            "description": "a client certificate of the network CA",
        },
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "the hub's admin token (operators only)",
        },
        "enrolmentToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "the agency's own enrolment token, issued by the operator",
        },
    },
    packages=(
        "chukan.codecs",
        "chukan.keys",
        "chukan.permits",
        "chukan.gateway",
        "chukan.simulators",
    ),
    parameter_schemas=_PARAMETERS,
)
ROUTES: Final[Mapping[tuple[str, str], Route]] = SPEC.routes


if __name__ == "__main__":  # python -m chukan.simulators.hub.openapi > docs/openapi-hub.json
    import sys

    sys.stdout.write(SPEC.document_json())
