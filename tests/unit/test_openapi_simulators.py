"""The hub's and the 国保連 simulator's OpenAPI documents: valid OpenAPI 3.1, the same
routes as each application (no more, no fewer), and the copies in docs/ current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from chukan.gateway.core.apidoc import ApiSpec, app_routes
from chukan.simulators.hub import HubConfig, create_hub_app
from chukan.simulators.hub import openapi as hub_openapi
from chukan.simulators.kokuhoren import openapi as kokuhoren_openapi
from chukan.simulators.kokuhoren.app import create_kokuhoren_app
from chukan.simulators.kokuhoren.config import KokuhorenConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hub_app() -> web.Application:
    return create_hub_app(
        HubConfig(
            database_url="postgresql://unused",
            key_dir=Path("unused"),
            key_passphrase=b"unused",
            admin_token="unused",
        )
    )


def kokuhoren_app() -> web.Application:
    return create_kokuhoren_app(
        KokuhorenConfig(
            database_url="postgresql://unused",
            key_dir=Path("unused"),
            key_passphrase=b"unused",
            admin_token="unused",
        )
    )


SERVERS = {
    "hub": (hub_openapi.SPEC, hub_app, "openapi-hub.json"),
    "kokuhoren": (kokuhoren_openapi.SPEC, kokuhoren_app, "openapi-kokuhoren.json"),
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_the_document_is_valid_openapi_3_1(server: str) -> None:
    spec: ApiSpec = SERVERS[server][0]
    document = spec.document()
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    codes = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
        "enum"
    ]
    # The simulators' own codes are there, beside the gateway's they share.
    assert {"peer_mismatch", "records_unavailable", "bad_request", "internal_error"} <= set(codes)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_every_route_is_documented_and_every_documented_route_exists(server: str) -> None:
    spec, make_app, _ = SERVERS[server]
    routes = app_routes(make_app())
    documented = set(spec.routes)
    assert ("GET", "/openapi.json") in routes
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented routes the application does not have"


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_docs_hold_the_current_document(server: str) -> None:
    """docs/openapi-<server>.json is what /openapi.json serves (regenerate: docs/api.md)."""
    spec, _, name = SERVERS[server]
    assert json.loads((DOCS / name).read_text(encoding="utf-8")) == spec.document()


async def test_each_server_serves_its_document() -> None:
    """``GET /openapi.json`` answers the document (the route's handler, no database)."""
    for spec, make_app, _ in SERVERS.values():
        app = make_app()
        request = make_mocked_request("GET", "/openapi.json", app=app)
        match = await app.router.resolve(request)
        response = await match.handler(request)
        assert isinstance(response, web.Response) and response.text is not None
        assert response.content_type == "application/json"
        assert json.loads(response.text) == spec.document()
