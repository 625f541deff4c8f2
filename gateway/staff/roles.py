"""The staff roles: what each handler of every flow's staff API may demand."""

from __future__ import annotations

from typing import Any, Final

from chukan.gateway.core.errors import ValidationError

ROLE_OPERATOR: Final = "operator"
ROLE_APPROVER: Final = "approver"
ROLE_AUDITOR: Final = "auditor"
ROLE_ADMIN: Final = "admin"
ROLES: Final = (ROLE_OPERATOR, ROLE_APPROVER, ROLE_AUDITOR, ROLE_ADMIN)


def parse_roles(value: Any) -> list[str]:
    """The roles of an account as a request gives them: a non-empty list of known roles."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(r, str) and r in ROLES for r in value)
    ):
        raise ValidationError(f"roles must be a non-empty list of {', '.join(ROLES)}")
    return sorted(set(value))
