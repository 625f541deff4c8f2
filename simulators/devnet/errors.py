"""Exceptions of the offline network harness."""

from __future__ import annotations

from chukan.gateway.core.errors import CommandError, GatewayError


class DemoFailedError(GatewayError):
    """A demo step did not give the expected result (the demo then exits non-zero)."""

    code = "demo_failed"


class DevnetServeError(CommandError):
    """``chukan serve`` cannot set up or start the network (a port in use, a server that
    exits while starting, a refused admin call): one line on stderr, exit status 1."""

    code = "devnet_serve_failed"
