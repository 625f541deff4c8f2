"""The 国保連 simulator's HTTP contract as an OpenAPI 3.1 document, served at
``/openapi.json`` and kept in ``docs/openapi-kokuhoren.json``.

One table of routes in faces (the simulator's admin API, the 保険者's mailbox,
operations), built by the gateway's document builder (:mod:`chukan.gateway.core.apidoc`);
tests/unit/test_openapi_simulators.py checks it against the application's routes both
ways.  Regenerate:
``python -m chukan.simulators.kokuhoren.openapi > docs/openapi-kokuhoren.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from chukan.gateway.core.apidoc import ApiSpec, Face, Route
from chukan.gateway.core.apidoc import route as _r

#: Raise when a route is added, changed or removed.
VERSION: Final = "1.0.0"

_ERRORS: Final[Sequence[int]] = (400, 401, 403, 404, 405, 413, 415, 422, 500, 503)

_ADMIN: Final[Mapping[tuple[str, str], Route]] = {
    ("PUT", "/admin/v1/insurers/{insurer_number}"): _r(
        "register a 保険者 (or update it): token digest, signing and encryption keys",
        body="json",
        status=201,
        also=((200, "json"),),
        required_fields=("name", "token_sha256", "signing_key", "encryption_key"),
    ),
    ("POST", "/admin/v1/returns"): _r(
        "produce (once) the 給付実績 file of a month for one 保険者",
        body="json",
        status=201,
        also=((200, "json"),),
        required_fields=("insurer_number", "month"),
    ),
}

_MAILBOX: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/mailbox/v1/keys"): _r("the simulator's public signing and encryption keys"),
    ("POST", "/mailbox/v1/files"): _r(
        "deliver a file: a signed (Chukan-Signature) envelope sealed for 国保連; 201 with the "
        "intake result, 200 for a repeat",
        body="json",
        status=201,
        also=((200, "json"),),
        errors=(409,),
    ),
    ("GET", "/mailbox/v1/files/{file_management_number}"): _r(
        "the intake result of a file delivered before"
    ),
    ("GET", "/mailbox/v1/outbox"): _r("return files waiting for the 保険者", query=("month",)),
    ("GET", "/mailbox/v1/outbox/{file_management_number}"): _r(
        "one return file, sealed for the 保険者's encryption key, in a signed envelope"
    ),
}

_OPS: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/health"): _r("liveness: the process and its database answer", errors=(503,)),
    ("GET", "/ready"): _r("readiness: database and keys at rest", errors=(503,)),
    ("GET", "/metrics"): _r("Prometheus metrics", answer="text"),
    ("GET", "/openapi.json"): _r("this document"),
}

FACES: Final[Sequence[Face]] = (
    Face("admin", _ADMIN, [{"adminToken": []}], _ERRORS),
    Face("mailbox", _MAILBOX, [{"insurerToken": []}], _ERRORS),
    Face("ops", _OPS, [], (500,)),
)

_PARAMETERS: Final[Mapping[str, dict[str, Any]]] = {
    "insurer_number": {"type": "string", "pattern": "^[0-9]{6}$", "description": "保険者番号"},
    "file_management_number": {"type": "string", "description": "ファイル管理番号"},
}

SPEC: Final = ApiSpec(
    title="chukan 国保連 simulator (国民健康保険団体連合会)",
    version=VERSION,
    description=(
        "The 国保連's file exchange with 保険者: the mailbox receives 受給者異動連絡票 and "
        "other files and returns 給付実績; every mailbox answer is signed (Chukan-Signature). "
        "Mailbox calls carry the 保険者's bearer token and, where the simulator requires it, "
        "the client certificate of the 保険者's agency; /admin/v1 the admin token. Every "
        'refusal is {"error": {"code", "message"}} with a code listed in the Error schema.'
    ),
    faces=FACES,
    security_schemes={
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "the simulator's admin token",
        },
        "insurerToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "the 保険者's token (registered as its SHA-256 digest)",
        },
    },
    packages=(
        "chukan.codecs",
        "chukan.keys",
        "chukan.permits",
        "chukan.gateway",
        "chukan.simulators",
    ),
    public=frozenset({("GET", "/mailbox/v1/keys")}),
    parameter_schemas=_PARAMETERS,
)
ROUTES: Final[Mapping[tuple[str, str], Route]] = SPEC.routes


if __name__ == "__main__":  # python -m chukan.simulators.kokuhoren.openapi > docs/...
    import sys

    sys.stdout.write(SPEC.document_json())
