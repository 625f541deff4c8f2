"""Exceptions of the offline network harness."""

from __future__ import annotations

from chukan.gateway.core.errors import GatewayError


class DemoFailedError(GatewayError):
    """A demo step did not give the expected result (the demo then exits non-zero)."""

    code = "demo_failed"
