"""What several worker processes of one agency share without a server: the ring file, the port.

The database side (notices, leases, the list) is covered with real processes in
``tests/integration/test_workers.py``.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from pathlib import Path

import pytest
from test_config_files import gateway_toml

from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.keyring import (
    create_ring_file,
    file_digest,
    load_or_create_ring,
    read_ring_file,
    ring_path,
)
from chukan.gateway.serve import bind_socket
from chukan.keys.ring import KeyRing

PASSPHRASE = b"a-generated-passphrase-for-tests"
NOW = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)
OWNER = "121002"


def test_a_ring_is_created_once_and_never_replaced_by_a_second_creator(tmp_path: Path) -> None:
    path = ring_path(tmp_path / "keys", OWNER)
    first, second = KeyRing.generate(OWNER, now=NOW), KeyRing.generate(OWNER, now=NOW)
    assert create_ring_file(path, first, PASSPHRASE) is True
    assert create_ring_file(path, second, PASSPHRASE) is False
    ring, digest = read_ring_file(path, PASSPHRASE, owner=OWNER)
    assert ring.current_signing(NOW).key_id == first.current_signing(NOW).key_id
    assert digest == file_digest(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_workers_starting_together_all_use_the_one_ring_created(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    barrier = threading.Barrier(6)
    found: list[str] = []

    def start() -> None:
        barrier.wait()
        ring = load_or_create_ring(key_dir, OWNER, PASSPHRASE, now=NOW)
        found.append(ring.current_signing(NOW).key_id)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk, _ = read_ring_file(ring_path(key_dir, OWNER), PASSPHRASE)
    assert set(found) == {on_disk.current_signing(NOW).key_id}
    assert len(found) == 6
    assert [p.name for p in key_dir.iterdir()] == [f"{OWNER}.ring.json"]


def test_reuse_port_lets_two_workers_bind_one_port() -> None:
    first = bind_socket("127.0.0.1", 0, reuse_port=True)
    try:
        port = first.getsockname()[1]
        second = bind_socket("127.0.0.1", port, reuse_port=True)
        second.close()
        # A worker without the option is refused the port.
        with pytest.raises(OSError, match="in use"):
            bind_socket("127.0.0.1", port).close()
    finally:
        first.close()
    assert hasattr(socket, "SO_REUSEPORT")


def test_reuse_port_is_read_from_the_server_table(tmp_path: Path) -> None:
    assert load_gateway_config(gateway_toml(tmp_path)).reuse_port is False
    config = load_gateway_config(gateway_toml(tmp_path, server="port = 8443\nreuse_port = true"))
    assert config.reuse_port is True and config.port == 8443
    with pytest.raises(Exception, match="reuse_port"):
        load_gateway_config(gateway_toml(tmp_path, server='reuse_port = "yes"'))
