"""Exceptions of ``chukan.permits``: one root, one class per failure kind.

Every class carries a stable machine-readable ``code`` that the HTTP boundary
returns unchanged, so peers and core systems can branch on it without parsing
messages.  Messages name agencies, codes, row numbers and fields only — never a
符号, a 個人番号 or any other personal data.
"""

from __future__ import annotations

from typing import ClassVar

from chukan.errorcodes import LocatedError


class PermitsError(LocatedError):
    """Root of every failure of the authorization list (照会許可照合リスト) and permits."""

    code: ClassVar[str] = "permits_error"


# -- the authorization list -----------------------------------------------------------


class AuthorizationListError(PermitsError):
    """The list (CSV, XML or signed document) is malformed or inconsistent.

    ``row`` is the 1-based number of the offending data row (the CSV header and
    the XML root are not rows) and ``field`` the column / attribute name, so an
    operator can fix the source file without guessing.
    """

    code: ClassVar[str] = "authorization_list_invalid"

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        parts = ([f"row {row}"] if row is not None else []) + (
            [f"field {field}"] if field is not None else []
        )
        super().__init__(message, where=", ".join(parts) or None)
        self.row = row
        self.field = field


class ListSignatureError(AuthorizationListError):
    """The distributed list is unsigned, signed by an unknown key, or the signature fails."""

    code: ClassVar[str] = "authorization_list_signature"


class ListExpiredError(AuthorizationListError):
    """The list is past its ``expires_at``: a stale list must not authorize anything."""

    code: ClassVar[str] = "authorization_list_expired"


class NotAuthorizedError(PermitsError):
    """No row of the list authorizes this requester/provider/procedure/item on that date."""

    code: ClassVar[str] = "not_authorized"


# -- permits (情報提供許可証) ------------------------------------------------------------


class PermitError(PermitsError):
    """Base of every reason a permit is refused; catch it to refuse a provision."""

    code: ClassVar[str] = "permit_invalid"


class PermitMalformedError(PermitError):
    """The token or the permit's values do not have the required shape."""

    code: ClassVar[str] = "permit_malformed"


class PermitSignatureError(PermitError):
    """The signature does not verify (forged or altered permit), or a wrong algorithm."""

    code: ClassVar[str] = "permit_signature_invalid"


class PermitUnknownKeyError(PermitError):
    """The permit names a key id that is not a trusted hub key."""

    code: ClassVar[str] = "permit_key_unknown"


class PermitExpiredError(PermitError):
    """The permit's lifetime (plus the allowed clock skew) is over."""

    code: ClassVar[str] = "permit_expired"


class PermitNotYetValidError(PermitError):
    """The permit is issued in the future beyond the allowed clock skew."""

    code: ClassVar[str] = "permit_not_yet_valid"


class PermitAudienceError(PermitError):
    """The permit is for another provider agency than the one verifying it."""

    code: ClassVar[str] = "permit_audience"


class PermitBodyMismatchError(PermitError):
    """The request body is not the one the permit was issued for."""

    code: ClassVar[str] = "permit_body_mismatch"


class PermitReplayedError(PermitError):
    """The permit was used before (raised by the gateway's stateful replay store)."""

    code: ClassVar[str] = "permit_replayed"


class DuplicateJsonKeyError(PermitsError):
    """A JSON object that repeats a key (control flow: the permit decoder refuses it as malformed).

    ``json.loads`` keeps the last of repeated keys; a signed payload must mean one thing.
    """

    code: ClassVar[str] = "json_key_repeated"
