"""The console's defences: the session cookie, CSRF tokens, security headers, and the
wrapper every console page runs in (:func:`page`).

* The session is the staff API's own (:mod:`chukan.gateway.staff.sessions`): its
  token travels in an HttpOnly, Secure, SameSite=Strict cookie limited to
  ``/staff/``, so idle timeout, lifetime, revocation and expiry apply unchanged.
* CSRF: every POST form carries a token in a hidden field, compared in constant
  time.  With a session, the token is an HMAC of the session token (nothing to
  store, the same in every process of the agency); before login, a random value
  also set as a cookie (double submit).  A missing or wrong token is 403
  ``csrf_token_invalid``.
* Headers: a Content-Security-Policy without any script or inline style, no
  framing, no referrer, no caching of pages (they show personal data).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp_jinja2
import structlog
from aiohttp import web

from chukan.gateway.core.errors import GatewayError
from chukan.gateway.core.oplog import ANSWER_CODE
from chukan.gateway.staff.errors import CsrfTokenInvalidError, RoleRequiredError
from chukan.gateway.staff.errors import SessionInvalidError as _SessionInvalid
from chukan.gateway.staff.sessions import COOKIE_TOKEN, STAFF_SESSION

log = structlog.get_logger("chukan.staff.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where the console lives; its cookies are sent to nothing else.
BASE: Final = "/staff/"
SESSION_COOKIE: Final = "chukan_staff_session"
LOGIN_COOKIE: Final = "chukan_staff_login"
CSRF_FIELD: Final = "csrf_token"
#: The CSRF token of the request's session (or login form), for the templates.
CSRF_TOKEN: Final = web.RequestKey("console_csrf_token", str)

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def csrf_for_session(token: str) -> str:
    """The CSRF token of a session: derived from its (secret) token, revealing nothing of it."""
    return hmac.new(token.encode("utf-8"), b"chukan-staff-console-csrf", hashlib.sha256).hexdigest()


def set_cookie(response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=BASE, secure=True, httponly=True, samesite="Strict", max_age=None
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=BASE, secure=True, httponly=True, samesite="Strict")


def _expected_csrf(request: web.Request) -> str | None:
    token = request.get(COOKIE_TOKEN)
    if token:
        return csrf_for_session(token)
    return request.cookies.get(LOGIN_COOKIE) or None


async def check_csrf(request: web.Request) -> None:
    """403 ``csrf_token_invalid`` unless the form's token is the one this browser holds."""
    expected = _expected_csrf(request)
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if (
        expected is None
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8"))
    ):
        log.warning(
            "console_csrf_refused",
            path=request.match_info.route.resource.canonical
            if request.match_info.route.resource is not None
            else "unmatched",
        )
        raise CsrfTokenInvalidError("the form was sent without its valid CSRF token")


def secure(response: web.StreamResponse, *, cache: bool = False) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "private, max-age=3600" if cache else "no-store"
    return response


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """A page of the console with what every page shows (the user, the CSRF token)."""
    session = request.get(STAFF_SESSION)
    return aiohttp_jinja2.render_template(
        template,
        request,
        {
            **context,
            "session": session,
            "csrf_token": request.get(CSRF_TOKEN, ""),
            "csrf_field": CSRF_FIELD,
        },
        status=status,
    )


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser fetches the next page with GET."""
    return web.Response(status=303, headers={"Location": location})


ERROR_TITLES: Final[Mapping[int, str]] = {
    400: "入力に誤りがあります",
    401: "ログインが必要です",
    403: "この操作は許可されていません",
    429: "しばらくしてから再度お試しください",
    404: "見つかりません",
    409: "すでに処理されています",
    422: "入力に誤りがあります",
}


def page(handler: Handler) -> Handler:
    """Run a console page: the cookie's session, CSRF on POST, errors as pages, headers.

    The page itself calls :func:`require_staff` (directly or through the staff API
    handler it shows), so its roles are the API's.  A missing or ended session leads
    to the login page; any other refusal is a page with the status and code.
    """

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            request[COOKIE_TOKEN] = token
            request[CSRF_TOKEN] = csrf_for_session(token)
        fresh_login_token: str | None = None
        if not token:
            request[CSRF_TOKEN] = request.cookies.get(LOGIN_COOKIE) or ""
            if not request[CSRF_TOKEN]:
                fresh_login_token = secrets.token_urlsafe(32)
                request[CSRF_TOKEN] = fresh_login_token
        try:
            if request.method == "POST":
                await check_csrf(request)
            response = await handler(request)
        except _SessionInvalid:
            response = redirect(BASE + "login")
            if token:
                clear_cookie(response, SESSION_COOKIE)
        except GatewayError as exc:
            status, code = exc.wire()
            request[ANSWER_CODE] = code  # the operation log's code of a refused page
            if isinstance(exc, RoleRequiredError):
                message = "この画面・操作に必要な役割がありません。"
            else:
                message = exc.message
            response = render(
                request,
                "error.html",
                {"title": ERROR_TITLES.get(status, "エラー"), "code": code, "message": message},
                status=status,
            )
            retry_after = getattr(exc, "retry_after", None)  # 429 rate_limited
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
        if fresh_login_token is not None:
            set_cookie(response, LOGIN_COOKIE, fresh_login_token)
        return secure(response)

    return wrapped
