"""The gateway's HTTP contract as an OpenAPI 3.1 document, served at ``/openapi.json`` and
kept in ``docs/openapi.json``.

One table, :data:`ROUTES`, describes every route of every face (internal, staff API and
console, network, operations); tests/unit/test_openapi.py checks that the table and the
application's routes are the same set and that the document is valid OpenAPI 3.1, and
tests/integration/test_openapi_fuzz.py runs schemathesis against the internal API.  Every
error answer is the one shape ``{"error": {"code", "message", "details"?}}`` with ``code``
one of the project's registered codes (:mod:`chukan.errorcodes`), so the document lists
them all instead of a README table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from chukan.codecs.message_batch import MAX_BATCH_MESSAGES
from chukan.gateway.core.apidoc import ApiSpec, Face, Route, Security, app_routes
from chukan.gateway.core.apidoc import route as _r

__all__ = ["ROUTES", "SPEC", "Route", "app_routes", "document", "document_json"]

#: Raise when a route is added, changed or removed.
VERSION: Final = "1.17.0"

_PARAMETER_SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "atena_id": {"type": "string", "pattern": "^[0-9]{1,15}$", "description": "団体内統合宛名番号"},
    "item_code": {"type": "string", "description": "特定個人情報名コード (TM + 14 digits)"},
    "query_id": {"type": "string", "description": "the query id a submission answered"},
}

#: Security requirements per face.
INTERNAL_SECURITY: Final[Security] = [{"mutualTLS": []}, {"systemToken": []}]
STAFF_SECURITY: Final[Security] = [{"staffSession": []}]
CONSOLE_SECURITY: Final[Security] = [{"consoleCookie": []}]
NETWORK_SECURITY: Final[Security] = [{"mutualTLS": []}]


_INTERNAL: Final[Mapping[tuple[str, str], Route]] = {
    ("POST", "/internal/v1/persons"): _r(
        "符号取得: register a person (宛名番号 + 個人番号; only 符号 ↔ 宛名番号 is kept)",
        body="json",
        status=201,
        errors=(409, 502),
        required_fields=("atena_id", "individual_number"),
    ),
    ("GET", "/internal/v1/persons/{atena_id}"): _r(
        "団体内統合宛名: a person's lifecycle state and events (never the 符号)"
    ),
    ("POST", "/internal/v1/persons/{atena_id}/events"): _r(
        "団体内統合宛名: report 転出 / 死亡 / merge / unregistration (docs/persons.md)",
        body="json",
        status=201,
        errors=(409,),
        required_fields=("event",),
    ),
    ("POST", "/internal/v1/persons/purge"): _r(
        "消去: erase superseded 副本 versions and unregistered persons' data (job report)",
        body="json",
    ),
    ("PUT", "/internal/v1/persons/{atena_id}/items/{item_code}"): _r(
        "副本: store a new version of one item (data-standard-layout XML)",
        body="xml",
        status=201,
        query=("manual_review", "valid_from", "valid_to", "record_key"),
        errors=(409,),
    ),
    ("GET", "/internal/v1/persons/{atena_id}/items/{item_code}"): _r(
        "副本: an item's history and the version in force", query=("on",)
    ),
    ("PUT", "/internal/v1/persons/{atena_id}/items/{item_code}/manual-review"): _r(
        "自動応答不可フラグ: set or clear the manual-review flag", body="json"
    ),
    ("GET", "/internal/v1/replica/export"): _r(
        "副本 export for reconciliation with the 原本 (CSV)",
        answer="csv",
        query=("item_code", "history"),
    ),
    ("POST", "/internal/v1/replica/registrations"): _r(
        "副本: one IF_DBM_20113_R01 registration message (up to 32 MiB)",
        body="xml",
        status=201,
        errors=(409,),
    ),
    ("GET", "/internal/v1/replica/registrations/{message_id}"): _r(
        "副本: the outcome of a registration message"
    ),
    ("POST", "/internal/v1/queries"): _r(
        "情報照会: submit a query (202 with its id; Idempotency-Key honoured; with"
        " Prefer: wait=N, 200 with the result when it comes within N seconds)",
        body="json",
        status=202,
        also=((200, "json"),),
        errors=(409, 503),
        required_fields=("atena_id", "procedure_code", "item_code", "provider"),
    ),
    ("GET", "/internal/v1/queries/{query_id}"): _r(
        "情報照会: a query's state and result (?wait= long-polls)", query=("wait",)
    ),
    ("GET", "/internal/v1/review"): _r("自動応答不可: the queue", query=("status",)),
    ("GET", "/internal/v1/review/{query_id}"): _r("自動応答不可: one held provision"),
    ("POST", "/internal/v1/review/{query_id}/approve"): _r(
        "自動応答不可: approve (the item is sent)", errors=(409,)
    ),
    ("POST", "/internal/v1/review/{query_id}/refuse"): _r(
        "自動応答不可: refuse with an optional reason code", body="json", errors=(409,)
    ),
    ("GET", "/internal/v1/records"): _r(
        "情報提供等記録 of one person or query", query=("atena_id", "query_id")
    ),
    ("POST", "/internal/v1/kokuhoren/recipient-changes"): _r(
        "受給者異動: record changes for the next 伝送", body="json", status=201
    ),
    ("POST", "/internal/v1/kokuhoren/transmissions"): _r(
        "伝送: build and send a 受給者異動連絡票 file", body="json", status=201, errors=(502,)
    ),
    ("GET", "/internal/v1/kokuhoren/transmissions/{transmission_id}"): _r(
        "伝送: a transmission and its intake result", query=("wait",)
    ),
    ("POST", "/internal/v1/kokuhoren/transmissions/{transmission_id}/resend"): _r(
        "伝送: send a transmission again", errors=(409, 502)
    ),
    ("POST", "/internal/v1/kokuhoren/flows/{flow}/records"): _r(
        "伝送: records of a flow (給付管理票, 償還払い実績, 特別徴収依頼) for the next file",
        body="json",
        status=201,
        errors=(409,),
    ),
    ("GET", "/internal/v1/kokuhoren/flows/{flow}/records"): _r(
        "伝送: a flow's records with their intake", query=("month",)
    ),
    ("POST", "/internal/v1/kokuhoren/returns"): _r(
        "伝送: fetch 国保連's returned files", body="json", status=201, errors=(502,)
    ),
    ("GET", "/internal/v1/kokuhoren/returns/{job_id}"): _r("伝送: a returns job"),
    ("GET", "/internal/v1/status"): _r("the gateway's status (list, keys, queues)"),
    ("POST", "/internal/v1/keys/reload"): _r("reload the key ring from disk"),
    ("POST", "/internal/v1/authorization-list/refresh"): _r(
        "fetch the authorization list from the hub now", errors=(502,)
    ),
}

_STAFF: Final[Mapping[tuple[str, str], Route]] = {
    ("POST", "/staff/v1/login"): _r(
        "log in (401 login_failed alike for every failure; 429 per source)",
        body="json",
        required_fields=("username", "password"),
    ),
    ("POST", "/staff/v1/logout"): _r("end the session"),
    ("GET", "/staff/v1/me"): _r("the logged-in account"),
    ("POST", "/staff/v1/me/password"): _r("change one's own password", body="json"),
    ("GET", "/staff/v1/accounts"): _r("accounts (admin; another office's admin: its own)"),
    ("POST", "/staff/v1/accounts"): _r(
        "create an account (admin); office required",
        body="json",
        status=201,
        errors=(409,),
        required_fields=("username", "password", "roles", "office"),
    ),
    ("GET", "/staff/v1/accounts/{username}"): _r("one account (admin)"),
    ("PATCH", "/staff/v1/accounts/{username}"): _r(
        "change roles, name, expiry, password, office, item classes; unlock", body="json"
    ),
    ("DELETE", "/staff/v1/accounts/{username}"): _r("revoke an account, ending its sessions"),
    ("POST", "/staff/v1/accounts/{username}/revoke"): _r("revoke an account (as DELETE)"),
    ("GET", "/staff/v1/reviews/accounts"): _r(
        "periodic account review: unused and expired accounts", query=("unused_days",)
    ),
    ("GET", "/staff/v1/audit"): _r("the audit trail", query=("actor", "action", "limit")),
    ("GET", "/staff/v1/offices"): _r("offices (所属) and their item classes"),
    ("POST", "/staff/v1/offices"): _r(
        "add an office (central admin)",
        body="json",
        status=201,
        errors=(409,),
        required_fields=("code", "name"),
    ),
    ("PATCH", "/staff/v1/offices/{code}"): _r(
        "rename an office or change its item classes (central admin)", body="json"
    ),
    ("GET", "/staff/v1/operations"): _r(
        "操作内容の記録: the operation log (auditor)",
        query=("from", "to", "caller", "operation", "target", "office", "limit"),
    ),
    ("GET", "/staff/v1/review"): _r(
        "自動応答不可: the queue (approver, auditor)", query=("status",)
    ),
    ("GET", "/staff/v1/review/{query_id}"): _r("自動応答不可: one held provision and its item"),
    ("POST", "/staff/v1/review/{query_id}/approve"): _r("approve (approver)", errors=(409,)),
    ("POST", "/staff/v1/review/{query_id}/refuse"): _r(
        "refuse with an optional reason code (approver)", body="json", errors=(409,)
    ),
    ("GET", "/staff/v1/disclosures/{atena_id}"): _r(
        "開示: every query and provision of one person (auditor); JSON or CSV",
        query=("format", "audience"),
    ),
    ("GET", "/staff/v1/records/verify"): _r("verify the record chain (auditor)"),
    ("POST", "/staff/v1/records/checkpoints"): _r("sign a checkpoint now", errors=(409,)),
    ("GET", "/staff/v1/statistics"): _r(
        "counts per procedure, item, outcome and month; JSON or CSV",
        query=("from", "to", "format"),
    ),
    ("GET", "/staff/v1/jobs"): _r("batch jobs", query=("kind", "status", "limit")),
    ("GET", "/staff/v1/jobs/{job_id}"): _r("one job"),
    ("POST", "/staff/v1/jobs/purge"): _r("run the result-deletion job now", status=201),
}

_CONSOLE: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/staff"): _r(
        "the console without its slash: redirected to /staff/", status=308, answer="redirect"
    ),
    ("GET", "/staff/"): _r("メニュー", answer="html"),
    ("GET", "/staff/login"): _r("ログイン画面", answer="html"),
    ("POST", "/staff/login"): _r("ログイン", body="form", status=303, answer="redirect"),
    ("POST", "/staff/logout"): _r("ログアウト", body="form", status=303, answer="redirect"),
    ("GET", "/staff/static/console.css"): _r("style sheet", answer="text"),
    ("GET", "/staff/review"): _r("自動応答不可の一覧", answer="html", query=("status",)),
    ("GET", "/staff/review/{query_id}"): _r("手動審査", answer="html"),
    ("POST", "/staff/review/{query_id}/decide"): _r(
        "承認・拒否", body="form", status=303, answer="redirect"
    ),
    ("GET", "/staff/records"): _r(
        "提供等記録の検索", answer="html", query=("atena_id", "from", "to", "outcome")
    ),
    ("GET", "/staff/disclosure"): _r("開示（宛名番号の入力）", answer="html", query=("atena_id",)),
    ("GET", "/staff/disclosure/{atena_id}"): _r(
        "開示報告（印刷可）", answer="html", query=("audience", "format")
    ),
    ("GET", "/staff/statistics"): _r("統計", answer="html", query=("from", "to", "format")),
    ("GET", "/staff/jobs"): _r("ジョブ", answer="html"),
    ("GET", "/staff/replica"): _r("副本の確認", answer="html", query=("atena_id",)),
    ("GET", "/staff/accounts"): _r("アカウント管理", answer="html"),
    ("POST", "/staff/accounts"): _r("アカウントの作成", body="form", status=303, answer="redirect"),
    ("POST", "/staff/accounts/{username}/revoke"): _r(
        "アカウントの失効", body="form", status=303, answer="redirect"
    ),
    ("POST", "/staff/accounts/{username}/office"): _r(
        "所属・情報区分の変更", body="form", status=303, answer="redirect"
    ),
    ("GET", "/staff/accounts/review"): _r(
        "アカウント棚卸し", answer="html", query=("unused_days",)
    ),
    ("GET", "/staff/sessions"): _r("長時間ログオン（所属ごと）", answer="html", query=("hours",)),
    ("GET", "/staff/offices"): _r("所属", answer="html"),
    ("POST", "/staff/offices"): _r("所属の追加", body="form", status=303, answer="redirect"),
    ("POST", "/staff/offices/{code}"): _r("所属の変更", body="form", status=303, answer="redirect"),
    ("GET", "/staff/operations"): _r(
        "操作内容の記録",
        answer="html",
        query=("from", "to", "caller", "operation", "target", "office"),
    ),
}

_NETWORK: Final[Mapping[tuple[str, str], Route]] = {
    ("POST", "/network/v1/messages"): _r(
        "the hub's messages: provision requests with permits, answers, refusals "
        "(signed XML envelopes)",
        body="xml",
        answer="xml",
        errors=(409, 503),
    ),
    ("POST", "/network/v1/messages/batch"): _r(
        "several of the hub's messages in one exchange (schema MessageBatch: each envelope "
        "in base64 with its signature and request id): each handled exactly as alone, "
        "answered in order with the status, body and signature it would have had alone "
        "(MessageBatchReplies); a malformed batch is 400 message_batch_invalid",
        body="json",
    ),
    ("POST", "/network/v1/authorization-list"): _r(
        "the hub pushes a signed authorization list", body="json", errors=(409,)
    ),
    ("GET", "/network/v1/records"): _r(
        "record digests for three-party reconciliation (the hub only)",
        query=("from", "to", "after", "limit"),
    ),
}

_OPS: Final[Mapping[tuple[str, str], Route]] = {
    ("GET", "/health"): _r("liveness: the process answers"),
    ("GET", "/ready"): _r("readiness: database, keys, list, records", errors=(503,)),
    ("GET", "/metrics"): _r("Prometheus metrics", answer="text"),
    ("GET", "/openapi.json"): _r("this document"),
}

#: Errors any authenticated route of a face may answer.
_COMMON_ERRORS: Final[Mapping[str, Sequence[int]]] = {
    "internal": (400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503),
    "staff": (400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503),
    "console": (400, 401, 403, 404, 405, 413, 422, 429, 500, 503),
    "network": (400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503),
    "ops": (500,),
}

#: The faces: tag, routes, security, the errors any of their routes may answer.
FACES: Final[Sequence[Face]] = (
    Face("internal", _INTERNAL, INTERNAL_SECURITY, _COMMON_ERRORS["internal"]),
    Face("staff", _STAFF, STAFF_SECURITY, _COMMON_ERRORS["staff"]),
    Face("console", _CONSOLE, CONSOLE_SECURITY, _COMMON_ERRORS["console"], html=True),
    Face("network", _NETWORK, NETWORK_SECURITY, _COMMON_ERRORS["network"]),
    Face("ops", _OPS, [], _COMMON_ERRORS["ops"]),
)
#: Routes without authentication.
PUBLIC: Final = frozenset(
    {
        ("POST", "/staff/v1/login"),
        ("GET", "/staff"),
        ("GET", "/staff/login"),
        ("POST", "/staff/login"),
        ("GET", "/staff/static/console.css"),
    }
)

SPEC: Final = ApiSpec(
    title="chukan gateway (中間サーバー)",
    version=VERSION,
    description=(
        "One agency's intermediate server. Faces: /internal/v1 (core systems: mutual "
        "TLS client certificate or a bearer token, per-operation grants), /staff/v1 "
        "(staff: bearer session token from /staff/v1/login), /staff/ (the console: "
        "HTML, session cookie, CSRF token on every form), /network/v1 (the hub only), "
        "and /health, /ready, /metrics. Every refusal is "
        '{"error": {"code", "message"}} with a code listed in the Error schema. '
        "Bodies: JSON at most 256 KiB, registration messages at most 32 MiB. Every "
        "answer carries X-Request-Id (the caller's when well-formed)."
    ),
    faces=FACES,
    security_schemes={
        "mutualTLS": {
            "type": "mutualTLS",
            "description": "a client certificate of the agency's CA",
        },
        "systemToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "a core system's configured token",
        },
        "staffSession": {
            "type": "http",
            "scheme": "bearer",
            "description": "a session token from POST /staff/v1/login",
        },
        "consoleCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": "chukan_staff_session",
        },
    },
    #: The gateway answers with the codes of what it runs, never the simulators'.
    packages=("chukan.codecs", "chukan.keys", "chukan.permits", "chukan.gateway"),
    public=PUBLIC,
    parameter_schemas=_PARAMETER_SCHEMAS,
)
#: Every route: (method, path) → what the document says.
ROUTES: Final[Mapping[tuple[str, str], Route]] = SPEC.routes

_BATCH_PATH: Final = "/network/v1/messages/batch"
_BASE64: Final[dict[str, Any]] = {"type": "string", "contentEncoding": "base64"}
_NULLABLE_TEXT: Final[dict[str, Any]] = {"type": ["string", "null"], "maxLength": 400}
#: The container of :mod:`chukan.codecs.message_batch`, both directions.
BATCH_SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "MessageBatch": {
        "type": "object",
        "required": ["messages"],
        "additionalProperties": False,
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_MESSAGES,
                "items": {
                    "type": "object",
                    "required": ["body"],
                    "additionalProperties": False,
                    "properties": {
                        "body": {**_BASE64, "description": "the signed XML envelope's bytes"},
                        "signature": {
                            **_NULLABLE_TEXT,
                            "description": "the Chukan-Signature header's value for body",
                        },
                        "request_id": {
                            "type": ["string", "null"],
                            "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$",
                            "description": "the X-Request-Id the message would carry alone",
                        },
                    },
                },
            }
        },
    },
    "MessageBatchReplies": {
        "type": "object",
        "required": ["replies"],
        "additionalProperties": False,
        "properties": {
            "replies": {
                "type": "array",
                "description": "one reply per message, in order",
                "items": {
                    "type": "object",
                    "required": ["status", "body"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"type": "integer", "minimum": 100, "maximum": 599},
                        "content_type": {"type": ["string", "null"]},
                        "body": {**_BASE64, "description": "the answer's bytes, as alone"},
                        "signature": {
                            **_NULLABLE_TEXT,
                            "description": "the answer's Chukan-Signature, if signed",
                        },
                    },
                },
            }
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway (the batch route with its container's
    schemas, which the generic route table cannot say)."""
    doc = SPEC.document()
    operation = doc["paths"][_BATCH_PATH]["post"]
    operation["requestBody"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/MessageBatch"
    }
    operation["responses"]["200"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/MessageBatchReplies"
    }
    doc["components"]["schemas"].update(BATCH_SCHEMAS)
    return doc


def document_json() -> str:
    """The document as ``docs/openapi.json`` holds it."""
    return json.dumps(document(), ensure_ascii=False, indent=2) + "\n"


async def serve_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(document(), dumps=lambda v: json.dumps(v, ensure_ascii=False))


if __name__ == "__main__":  # python -m chukan.gateway.openapi > docs/openapi.json
    import sys

    sys.stdout.write(document_json())
