"""One server of the fault suite, as an OS process of its own.

``python fault_serve.py ROLE CONFIG READY LOG PARENT_PID``: ``ROLE`` is ``hub`` or
``gateway``; ``CONFIG`` a pickled :class:`~chukan.simulators.hub.HubConfig` or
:class:`~chukan.gateway.core.config.GatewayConfig` written by the test process (a
test-side launcher until servers have commands of their own).  The server
listens on the configured port (0 the first time: the test process then fixes
the port it got, so that a restarted server comes back at the same URL), writes
one JSON line to ``READY`` (its URL, its pid and, for the hub, its signing
key), logs structlog JSON events to ``LOG`` (appended across restarts) and runs
until SIGTERM or SIGINT.  It dies with the test process (``PR_SET_PDEATHSIG``),
so a crashed test run leaves no server behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the test process ends, however it ends (Linux)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent was gone before the line above
        os._exit(1)


async def serve(role: str, config: Any, ready: Path) -> None:
    from chukan.gateway.serve import serve as serve_app
    from chukan.gateway.serve import start_gateway
    from chukan.keys import b64e
    from chukan.simulators.hub import HUB_STATE, create_hub_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    line: dict[str, Any]
    if role == "hub":
        server = await serve_app(
            create_hub_app(config),
            config.host,
            config.port,
            ssl_context=None if config.tls is None else config.tls.server_context(),
        )
        key = server.app[HUB_STATE].keys.signing.public
        line = {"hub_key": {"key_id": key.key_id, "raw": b64e(key.raw)}}
    elif role == "gateway":
        server = await start_gateway(config)
        line = {}
    else:
        raise SystemExit(f"unknown role {role!r}")
    line.update(url=server.url, pid=os.getpid())
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps(line) + "\n", encoding="utf-8")
    partial.replace(ready)  # the test process never reads half a line
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    role, config_file, ready_file, log_file, parent_pid = sys.argv[1:]
    die_with_parent(int(parent_pid))
    from chukan.gateway.core.logs import configure_logging

    # Written by the test process that started us, in its own private folder.
    config = pickle.loads(Path(config_file).read_bytes())  # noqa: S301
    with Path(log_file).open("a", buffering=1, encoding="utf-8") as log:
        configure_logging(logging.INFO, stream=log)
        asyncio.run(serve(role, config, Path(ready_file)))


if __name__ == "__main__":
    main()
