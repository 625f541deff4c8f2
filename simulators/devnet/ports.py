"""Loopback ports for servers that run as their own processes (demo, benches, tests).

A port found free by binding port 0 comes from the kernel's ephemeral range, which
every outgoing connection on the machine draws from too: between that check and the
server's own bind in another process, a client socket (a database connection, another
test suite's request) can take it, and the server fails with ``EADDRINUSE``.  Ports
below the ephemeral range are never handed out implicitly, so a free one chosen there
stays free unless another process names the same port (chosen at random, that is
unlikely even with several suites running at once).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Final

#: The lowest port chosen (below: well-known and registered services, often in use).
LOWEST: Final = 10000
#: Where Linux keeps the ephemeral range (``low high``).
RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_TRIES: Final = 200


def _below_ephemeral() -> int:
    """The highest port below the ephemeral range (Linux's default 32768 elsewhere)."""
    try:
        low = int(RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(LOWEST + 1000, low - 1)


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port``: bound as the servers bind
    (SO_REUSEADDR), so that the connections of a server just stopped (TIME_WAIT) do not
    count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server another process will bind."""
    chooser = random.SystemRandom()
    highest = _below_ephemeral()
    for _ in range(_TRIES):
        port = chooser.randint(LOWEST, highest)
        if port_free(host, port):
            return port
    raise OSError(f"no free port between {LOWEST} and {highest} on {host}")
