"""The hub's 個人番号 HMAC key at rest: encrypted, 0600 in 0700, long enough, created once."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from chukan.keys import KeyFormatError
from chukan.keys.secretfile import open_secret, seal_secret
from chukan.simulators.errors import HubSecretError, HubSecretExposedError
from chukan.simulators.hub.state import HMAC_KEY_FILE, HMAC_KEY_PURPOSE, load_secret

PASSPHRASE = b"a-generated-passphrase-0123456789"


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_sealed_secret_opens_only_with_its_passphrase_and_purpose() -> None:
    secret = os.urandom(32)
    sealed = seal_secret(secret, PASSPHRASE, purpose="test")
    assert secret not in sealed and secret.hex().encode() not in sealed
    assert open_secret(sealed, PASSPHRASE, purpose="test") == secret
    with pytest.raises(KeyFormatError, match="wrong passphrase"):
        open_secret(sealed, b"another-passphrase-01234567", purpose="test")
    with pytest.raises(KeyFormatError, match="not a other secret"):
        open_secret(sealed, PASSPHRASE, purpose="other")
    document = json.loads(sealed)
    document["kdf"]["n"] = 2**16  # any edit of the header fails authentication
    with pytest.raises(KeyFormatError):
        open_secret(json.dumps(document).encode(), PASSPHRASE, purpose="test")
    with pytest.raises(KeyFormatError, match="at least"):
        seal_secret(secret, b"short", purpose="test")


def test_the_key_is_created_encrypted_0600_in_0700_and_loaded_again(tmp_path: Path) -> None:
    key_dir = tmp_path / "hub"
    key = load_secret(key_dir, PASSPHRASE)
    path = key_dir / HMAC_KEY_FILE
    assert len(key) == 32
    assert key not in path.read_bytes()
    assert _mode(path) == 0o600 and _mode(key_dir) == 0o700
    assert load_secret(key_dir, PASSPHRASE) == key
    assert [p.name for p in key_dir.iterdir()] == [HMAC_KEY_FILE]  # no temporary left


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    key_dir = tmp_path / "hub"
    load_secret(key_dir, PASSPHRASE)
    path = key_dir / HMAC_KEY_FILE
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(HubSecretExposedError, match="chmod 600"):
            load_secret(key_dir, PASSPHRASE)
    path.chmod(0o600)
    key_dir.chmod(0o750)
    with pytest.raises(HubSecretExposedError, match="chmod 700"):
        load_secret(key_dir, PASSPHRASE)


def test_a_short_plain_or_foreign_key_is_refused(tmp_path: Path) -> None:
    key_dir = tmp_path / "hub"
    key_dir.mkdir(mode=0o700)
    path = key_dir / HMAC_KEY_FILE
    path.write_bytes(seal_secret(os.urandom(31), PASSPHRASE, purpose=HMAC_KEY_PURPOSE))
    path.chmod(0o600)
    with pytest.raises(HubSecretError, match="31 bytes; at least 32"):
        load_secret(key_dir, PASSPHRASE)
    path.write_bytes(os.urandom(32))  # the former plaintext file
    with pytest.raises(HubSecretError, match="not an encrypted key file"):
        load_secret(key_dir, PASSPHRASE)
    path.write_bytes(seal_secret(os.urandom(32), PASSPHRASE, purpose="something.else"))
    with pytest.raises(HubSecretError):
        load_secret(key_dir, PASSPHRASE)
    path.write_bytes(seal_secret(os.urandom(32), PASSPHRASE, purpose=HMAC_KEY_PURPOSE))
    with pytest.raises(HubSecretError, match="wrong passphrase"):
        load_secret(key_dir, b"another-passphrase-01234567")


def test_concurrent_threads_create_one_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "hub"
    start = threading.Barrier(4)
    keys: list[bytes] = []

    def run() -> None:
        start.wait()
        keys.append(load_secret(key_dir, PASSPHRASE))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 4 and len(set(keys)) == 1
    assert [p.name for p in key_dir.iterdir()] == [HMAC_KEY_FILE]


def _load_in_process(key_dir: str, start: threading.Barrier, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait()
    out.put(load_secret(Path(key_dir), PASSPHRASE).hex())


def test_concurrent_processes_create_one_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "hub"
    context = multiprocessing.get_context("fork")
    count = 3
    start = context.Barrier(count)
    out = context.Queue()
    processes = [
        context.Process(target=_load_in_process, args=(str(key_dir), start, out))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    keys = {out.get(timeout=60) for _ in range(count)}
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert len(keys) == 1
    assert bytes.fromhex(keys.pop()) == load_secret(key_dir, PASSPHRASE)
    assert [p.name for p in key_dir.iterdir()] == [HMAC_KEY_FILE]
