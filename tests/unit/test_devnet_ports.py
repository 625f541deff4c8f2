"""Ports for servers started as their own processes are chosen below the ephemeral range,
so that no outgoing connection on the machine can take one before its server binds it."""

from __future__ import annotations

import socket

from chukan.simulators.devnet import ports


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = int(ports.RANGE_FILE.read_text().split()[0]) if ports.RANGE_FILE.exists() else 32768
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST <= port < low
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.free_port()))
        sock.listen()
        assert not ports.port_free("127.0.0.1", sock.getsockname()[1])
