"""Failures of staff authentication and account administration (職員認証・権限管理)."""

from __future__ import annotations

from chukan.gateway.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)


class LoginFailedError(UnauthenticatedError):
    """Unknown user, wrong password, locked, expired or revoked account: one answer for
    all, so that it never tells whether a username exists."""

    code = "login_failed"


class CsrfTokenInvalidError(ForbiddenError):
    """A console form sent without its session's CSRF token, or with another one."""

    code = "csrf_token_invalid"


class SessionInvalidError(UnauthenticatedError):
    """No session, an unknown token, or one that ended (idle, lifetime, revoked, logout)."""

    code = "session_invalid"


class RoleRequiredError(ForbiddenError):
    code = "role_required"


class AccountExistsError(ConflictError):
    code = "account_exists"


class AccountUnknownError(NotFoundError):
    code = "account_unknown"


class WeakPasswordError(ValidationError):
    code = "password_too_weak"


class OfficeExistsError(ConflictError):
    code = "office_exists"


class OfficeUnknownError(NotFoundError):
    code = "office_unknown"


class OfficeScopeError(ForbiddenError):
    """An administrator of one office acting on another office's account, or on offices."""

    code = "office_scope"
