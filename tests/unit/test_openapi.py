"""The OpenAPI document: valid OpenAPI 3.1, the same routes as the application (no more,
no fewer), every route named in the operation log's table, and docs/openapi.json current."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from chukan.gateway import openapi
from chukan.gateway.app import create_gateway_app
from chukan.gateway.core.config import GatewayConfig
from chukan.gateway.core.oplog import OPERATIONS
from chukan.keys.crypto import generate_signing_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def _app_routes() -> set[tuple[str, str]]:
    config = GatewayConfig(
        agency_code="121002",
        agency_name="千葉市",
        database_url="postgresql://unused",
        hub_url="https://127.0.0.1:1",
        hub_key=generate_signing_key("hub").public,
        enrolment_token="token",
        key_dir=Path("unused"),
        key_passphrase=b"unused",
    )
    return openapi.app_routes(create_gateway_app(config, "https://127.0.0.1:2"))


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
        "enum"
    ]
    # The codes the README could not keep up with are all listed.
    assert {
        "bad_request",
        "unsupported_media_type",
        "payload_too_large",
        "xml_structure",
        "query_unknown",
        "internal_error",
        "rate_limited",
        "office_scope",
    } <= set(codes)


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    routes = _app_routes()
    documented = set(openapi.ROUTES)
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented routes the application does not have"


def test_every_internal_and_staff_route_has_an_operation_name() -> None:
    faces = {r for r in _app_routes() if r[1].startswith(("/internal/", "/staff/"))}
    assert faces - set(OPERATIONS) == set(), "routes without an operation name"
    assert set(OPERATIONS) - faces == set(), "operation names of routes that do not exist"
    names = [op.name for op in OPERATIONS.values() if op is not None]
    assert all(n.replace(".", "").replace("_", "").isalnum() and n.islower() for n in names)


def test_docs_hold_the_current_document() -> None:
    """docs/openapi.json is what /openapi.json serves (regenerate: see docs/api.md)."""
    assert json.loads(DOCS.read_text(encoding="utf-8")) == openapi.document()
