"""Failures of system management (システム管理)."""

from __future__ import annotations

from chukan.gateway.core.errors import NotFoundError


class JobUnknownError(NotFoundError):
    code = "job_unknown"
