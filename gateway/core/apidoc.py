"""Building an OpenAPI 3.1 document from a table of routes, for every server of chukan.

The gateway (:mod:`chukan.gateway.openapi`), the hub and the 国保連 simulator each keep
one table of their routes, grouped in faces (tag, security, the errors any route of the
face may answer), and an :class:`ApiSpec`; this module turns it into the document they
serve at ``/openapi.json`` and keep under ``docs/``.  Every refusal of every server has the
one shape ``{"error": {"code", "message", "details"?}}``, so the ``Error`` schema lists
the registered codes (:mod:`chukan.errorcodes`) of the packages the server runs.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from chukan.errorcodes import registered_codes

PATH_PARAMETER: Final = re.compile(r"\{([a-z_]+)\}")

Security = list[dict[str, list[str]]]


@dataclass(frozen=True, slots=True)
class Route:
    """What the document says of one route."""

    summary: str
    #: ``json``, ``xml``, ``csv``, ``form`` (several joined by ``|``) or None (no body).
    body: str | None = None
    #: The success answer's status and media type (``json``, ``csv``, ``xml``, ``html``,
    #: ``text``, ``redirect``).
    status: int = 200
    answer: str = "json"
    query: Sequence[str] = ()
    #: Error statuses besides those every route of the face may answer.
    errors: Sequence[int] = ()
    tag: str = ""
    required_fields: Sequence[str] = field(default=())
    #: Other success answers: (status, media type), e.g. a repeat answered 200 beside 201.
    also: Sequence[tuple[int, str]] = ()


def route(summary: str, **kwargs: Any) -> Route:
    return Route(summary, **kwargs)


@dataclass(frozen=True, slots=True)
class Face:
    """Routes sharing a tag, a security requirement and the errors any of them may answer."""

    name: str
    routes: Mapping[tuple[str, str], Route]
    security: Security
    errors: Sequence[int]
    #: Its refusals may be HTML pages as well as JSON (the console).
    html: bool = False


MEDIA: Final[Mapping[str, str]] = {
    "json": "application/json",
    "xml": "application/xml",
    "csv": "text/csv",
    "html": "text/html",
    "text": "text/plain",
    "form": "application/x-www-form-urlencoded",
}

ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "bad request (bad_request, codec errors)",
    401: "not authenticated",
    403: "not allowed (grant, role, office scope, CSRF)",
    404: "unknown",
    405: "method not allowed",
    409: "conflict",
    413: "body too large (JSON 256 KiB; registrations 32 MiB)",
    415: "unsupported media type",
    422: "invalid field",
    429: "rate_limited: too many refused requests from this address",
    500: "internal_error",
    502: "a peer (hub, 国保連) is unreachable or refused",
    503: "unavailable (database, list, records); retry after Retry-After",
}

#: Codes the error middleware gives aiohttp's own refusals (no exception class of ours).
HTTP_CODES: Final = frozenset(
    {"not_found", "method_not_allowed", "payload_too_large", "http_error", "internal_error"}
)


def error_codes(packages: Sequence[str]) -> list[str]:
    """Every code registered by the errors modules of ``packages`` (each imported first,
    so that the list does not depend on what happens to be imported) and the middleware's."""
    for package in packages:
        for folder in importlib.import_module(package).__path__:
            for found in sorted(Path(folder).rglob("errors.py")):
                parts = found.relative_to(folder).with_suffix("").parts
                importlib.import_module(".".join((package, *parts)))
    ours = {
        code
        for code, cls in registered_codes().items()
        if cls.__module__ == "chukan.errorcodes"
        or (
            cls.__module__.endswith(".errors")
            and any(cls.__module__.startswith(package + ".") for package in packages)
        )
    }
    return sorted(ours | HTTP_CODES)


def error_schema(codes: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(codes)},
                    "message": {"type": "string"},
                    "details": {},
                },
            }
        },
    }


def operation_id(method: str, path: str) -> str:
    """``get_staff_v1_review_by_query_id``; a trailing slash is ``_index`` (``/staff/``
    and ``/staff`` are two operations)."""
    words = re.sub(r"[^a-zA-Z0-9]+", "_", path.replace("{", "by_").replace("}", "")).strip("_")
    index = "_index" if path.endswith("/") and len(path) > 1 else ""
    return f"{method.lower()}_{words or 'root'}{index}"


@dataclass(frozen=True, slots=True)
class ApiSpec:
    """One server's API: its faces and what the document says around them."""

    title: str
    version: str
    description: str
    faces: Sequence[Face]
    security_schemes: Mapping[str, Any]
    #: The packages whose error codes the server may answer with.
    packages: Sequence[str]
    #: Routes without authentication.
    public: frozenset[tuple[str, str]] = frozenset()
    parameter_schemas: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def routes(self) -> dict[tuple[str, str], Route]:
        return {key: r for face in self.faces for key, r in face.routes.items()}

    def operation(self, face: Face, method: str, path: str, route: Route) -> dict[str, Any]:
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": self.parameter_schemas.get(name, {"type": "string"}),
            }
            for name in PATH_PARAMETER.findall(path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        responses: dict[str, Any] = {}
        if route.answer == "redirect":
            responses[str(route.status)] = {
                "description": "done; the browser goes on to the next page",
                "headers": {"Location": {"schema": {"type": "string"}}},
            }
        elif route.answer == "json":
            responses[str(route.status)] = {
                "description": "success",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        else:
            responses[str(route.status)] = {
                "description": "success",
                "content": {MEDIA[route.answer]: {"schema": {"type": "string"}}},
            }
        for status, media in route.also:
            responses[str(status)] = {
                "description": "success",
                "content": {
                    MEDIA[media]: {"schema": {"type": "object" if media == "json" else "string"}}
                },
            }
        error_content: dict[str, Any] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        }
        if face.html:
            error_content = {"text/html": {"schema": {"type": "string"}}, **error_content}
        for status in sorted({*face.errors, *route.errors}):
            key = str(status)
            if key in responses:
                continue
            described: dict[str, Any] = {
                "description": ERROR_TEXT.get(status, "refused"),
                "content": error_content,
            }
            if status in (429, 503):
                described["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
            responses[key] = described
        operation: dict[str, Any] = {
            "operationId": operation_id(method, path),
            "summary": route.summary,
            "tags": [face.name],
            "responses": responses,
        }
        if parameters:
            operation["parameters"] = parameters
        if (method, path) in self.public:
            operation["security"] = []
        elif face.security:
            operation["security"] = face.security
        if route.body is not None:
            schema: dict[str, Any] = (
                {"type": "object"} if route.body in ("json", "form") else {"type": "string"}
            )
            if route.required_fields:
                schema["required"] = list(route.required_fields)
                schema["properties"] = {name: {"type": "string"} for name in route.required_fields}
                if "roles" in route.required_fields:
                    schema["properties"]["roles"] = {"type": "array", "items": {"type": "string"}}
            operation["requestBody"] = {
                "required": True,
                "content": {MEDIA[media]: {"schema": schema} for media in route.body.split("|")},
            }
        return operation

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document."""
        paths: dict[str, dict[str, Any]] = {}
        for face in self.faces:
            for (method, path), route in face.routes.items():
                paths.setdefault(path, {})[method.lower()] = self.operation(
                    face, method, path, route
                )
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "tags": [{"name": face.name} for face in self.faces],
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": {"Error": error_schema(error_codes(self.packages))},
                "securitySchemes": dict(self.security_schemes),
            },
        }

    def document_json(self) -> str:
        """The document as ``docs/`` holds it."""
        return json.dumps(self.document(), ensure_ascii=False, indent=2) + "\n"

    async def serve(self, request: web.Request) -> web.Response:
        """``GET /openapi.json``."""
        return web.json_response(self.document(), dumps=lambda v: json.dumps(v, ensure_ascii=False))


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """Every (method, path template) an application answers, sub-applications included
    (HEAD, which aiohttp adds beside each GET, left out)."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            found |= app_routes(sub)
            continue
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method, resource.canonical))
    return found
