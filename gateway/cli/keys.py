"""``chukan keys``: generate, rotate and list an agency's key ring on disk.

The ring lives in ``--key-dir`` as ``<owner>.ring.json`` (mode 0600, private
keys encrypted, see :mod:`chukan.gateway.core.keyring`).  The passphrase is read
from ``CHUKAN_KEY_PASSPHRASE`` only (never a command-line argument, which other
users could see); nothing printed contains key material or the passphrase.

After ``rotate``, tell the running gateway: ``POST /internal/v1/keys/reload``
(operation ``keys.manage``), which publishes the new public keys to the hub and
switches to them; a gateway also reads its ring at every start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from chukan.gateway.cli.errors import KeyCommandError
from chukan.gateway.core.keyring import RING_SUFFIX, key_status, read_ring, ring_path, write_ring
from chukan.keys import KeysError
from chukan.keys.ring import DEFAULT_OVERLAP, KeyRing

PASSPHRASE_ENV: Final = "CHUKAN_KEY_PASSPHRASE"  # noqa: S105 -- a variable name, not a secret
KEY_DIR_ENV: Final = "CHUKAN_KEY_DIR"


def add_keys_parser(commands: Any) -> None:
    """Register ``keys`` and its subcommands on the top-level subparsers."""
    keys = commands.add_parser(
        "keys",
        help="generate, rotate and list an agency's key ring",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    keys.add_argument(
        "--key-dir",
        type=Path,
        default=os.environ.get(KEY_DIR_ENV),
        help=f"folder of the ring files (default ${KEY_DIR_ENV})",
    )
    sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = sub.add_parser("generate", help="create a new ring (refuses to overwrite one)")
    generate.add_argument("--owner", required=True, help="agency code owning the ring")
    generate.add_argument(
        "--overlap-hours",
        type=float,
        default=DEFAULT_OVERLAP.total_seconds() / 3600,
        help="how long a replaced key still opens answers (default 168 = 7 days)",
    )
    rotate = sub.add_parser("rotate", help="add new keys; the current ones start retiring")
    rotate.add_argument("--owner", help="agency code (default: the only ring in the folder)")
    rotate.add_argument(
        "--prune", action="store_true", help="also drop keys whose overlap has ended"
    )
    listing = sub.add_parser("list", help="show every key with its state (no key material)")
    listing.add_argument("--owner", help="agency code (default: the only ring in the folder)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")


def _passphrase(env: Mapping[str, str]) -> bytes:
    value = env.get(PASSPHRASE_ENV)
    if not value:
        raise KeyCommandError(f"set {PASSPHRASE_ENV} to the key passphrase")
    return value.encode("utf-8")


def _owner(key_dir: Path, owner: str | None) -> str:
    if owner:
        return owner
    rings = sorted(p.name[: -len(RING_SUFFIX)] for p in key_dir.glob(f"*{RING_SUFFIX}"))
    if len(rings) != 1:
        raise KeyCommandError(
            f"{len(rings)} key rings in {key_dir}; name one with --owner"
            if rings
            else f"no key ring in {key_dir}"
        )
    return rings[0]


def _print_keys(ring: KeyRing, now: dt.datetime, out: TextIO, *, as_json: bool) -> None:
    keys = key_status(ring, now)
    if as_json:
        document = {
            "owner": ring.owner,
            "overlap_seconds": ring.overlap.total_seconds(),
            "keys": keys,
        }
        print(json.dumps(document, indent=2), file=out)
        return
    print(f"key ring of {ring.owner} (overlap {ring.overlap})", file=out)
    for key in keys:
        print(
            f"  {key['purpose']}  {key['state']:<8}  {key['key_id']}  "
            f"from {key['activated_at']}  until {key['valid_until'] or '-'}",
            file=out,
        )


def run_keys(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Run one ``chukan keys`` subcommand; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    moment = now or dt.datetime.now(dt.UTC)
    try:
        if args.key_dir is None:
            raise KeyCommandError(f"give --key-dir or set {KEY_DIR_ENV}")
        key_dir = Path(args.key_dir)
        passphrase = _passphrase(os.environ if env is None else env)
        if args.keys_command == "generate":
            path = ring_path(key_dir, args.owner)
            if path.exists():
                raise KeyCommandError(f"{path} exists; use rotate")
            if args.overlap_hours < 0:
                raise KeyCommandError("--overlap-hours must not be negative")
            overlap = dt.timedelta(hours=args.overlap_hours)
            ring = KeyRing.generate(args.owner, now=moment, overlap=overlap)
            write_ring(path, ring, passphrase)
            print(f"generated {path}", file=out)
        else:
            owner = _owner(key_dir, args.owner)
            path = ring_path(key_dir, owner)
            ring = read_ring(path, passphrase, owner=owner)
            if args.keys_command == "rotate":
                ring = ring.rotate(moment)
                if args.prune:
                    ring = ring.prune(moment)
                write_ring(path, ring, passphrase)
                print(
                    f"rotated {path}; reload the gateway (POST /internal/v1/keys/reload)",
                    file=out,
                )
        _print_keys(ring, moment, out, as_json=getattr(args, "json", False))
    except (KeyCommandError, KeysError, ValueError, OSError) as exc:
        print(f"chukan keys: error: {exc}", file=err)
        return 1
    return 0
