"""``chukan records verify --witness hub | --receipts FILE`` and ``chukan records receipts
export``: where the witness's receipts come from, for :mod:`chukan.gateway.cli.admin`.

From the witness itself (the hub, with the agency's TLS identity: ``--config`` names the
gateway's TOML file, or ``--hub-url``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``), or
from a JSON-lines file exported earlier (offline audit).  The receipts' countersignature
is checked under the pinned hub key: the gateway file's ``[hub] signing_key`` or
``--hub-key KEY_ID=BASE64``; never a key read from the database under audit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from chukan.gateway.cli.errors import AdminCommandError
from chukan.gateway.core.config_file import load_gateway_config
from chukan.gateway.core.settings import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_WITNESS_MARGIN
from chukan.gateway.core.tls import client_context_from_files
from chukan.gateway.records.errors import WitnessFormatError, WitnessUnavailableError
from chukan.gateway.records.witness_format import Receipt
from chukan.gateway.records.witnessing import fetch_receipts, read_receipts, receipts_of
from chukan.keys import KeysError, PublicSigningKey, b64d, public_signing_key


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach the witness and which key its receipts must verify under."""
    parser.add_argument(
        "--config", type=Path, help="the gateway's TOML file: hub URL, TLS identity, hub key"
    )
    parser.add_argument("--hub-url", help="the witness (hub) URL, instead of --config's")
    parser.add_argument("--tls-ca", type=Path, help="CA of the network (PEM)")
    parser.add_argument("--tls-cert", type=Path, help="the agency's client certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM, unencrypted)")
    parser.add_argument(
        "--hub-key",
        action="append",
        default=[],
        metavar="KEY_ID=BASE64",
        help="the hub's public signing key the receipts must verify under (repeatable)",
    )


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """``records verify``'s witness options."""
    parser.add_argument(
        "--witness",
        choices=("hub",),
        help="check the chain against the receipts the witness (the hub) keeps",
    )
    parser.add_argument(
        "--receipts", type=Path, help="check against receipts exported earlier (JSON lines)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=(DEFAULT_CHECKPOINT_INTERVAL + DEFAULT_WITNESS_MARGIN).total_seconds(),
        help="records older than this many seconds must be witnessed (default: %(default)s)",
    )
    add_hub_arguments(parser)


def add_receipts_command(actions: Any, common: Any) -> None:
    """``records receipts export --out FILE``."""
    receipts = actions.add_parser("receipts", help="the witness's receipts of this agency")
    receipts_actions = receipts.add_subparsers(dest="receipts_action", required=True)
    export = receipts_actions.add_parser("export", help="fetch from the hub, write JSON lines")
    common(export)
    export.add_argument("--out", type=Path, required=True, help="file to write (mode 0600)")
    add_hub_arguments(export)


@dataclass
class Witness:
    """Where receipts come from: the hub (its URL and a client session) and its keys."""

    url: str
    session: aiohttp.ClientSession
    hub_keys: dict[str, PublicSigningKey]


def _hub_keys(args: argparse.Namespace, pinned: PublicSigningKey | None) -> dict[str, Any]:
    keys: dict[str, PublicSigningKey] = {}
    if pinned is not None:
        keys[pinned.key_id] = pinned
    for item in args.hub_key:
        key_id, sep, raw = item.partition("=")
        if not sep:
            raise AdminCommandError("--hub-key takes KEY_ID=BASE64")
        try:
            keys[key_id] = public_signing_key(key_id, b64d(raw))
        except (KeysError, ValueError):
            raise AdminCommandError(f"--hub-key {key_id}: not a public signing key") from None
    return keys


async def open_witness(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> Witness:
    """The hub named by ``--config`` or ``--hub-url`` and a session with the TLS identity."""
    url, context, pinned = args.hub_url, None, None
    if args.config is not None:
        config = load_gateway_config(args.config)
        url = url or config.hub_url
        pinned = config.hub_key
        if config.tls is not None:
            context = config.tls.client_context()
    if args.tls_ca is not None:
        context = client_context_from_files(args.tls_ca, args.tls_cert, args.tls_key)
    if not url:
        raise AdminCommandError("name the witness: --config FILE or --hub-url URL")
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
    session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
    )
    return Witness(url, session, _hub_keys(args, pinned))


async def _checked(receipts: AsyncIterator[Receipt]) -> AsyncIterator[Receipt]:
    """The receipts, a witness that cannot be read being the command's error."""
    try:
        async for receipt in receipts:
            yield receipt
    except (WitnessUnavailableError, WitnessFormatError) as exc:
        raise AdminCommandError(f"receipts: {exc.message}") from None
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, OSError) as exc:
        raise AdminCommandError(f"the witness could not be read ({type(exc).__name__})") from None


async def receipt_source(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> tuple[AsyncIterator[Receipt] | None, dict[str, PublicSigningKey], dt.timedelta]:
    """``records verify``: the receipts to check (None: no witness consulted), the hub keys
    they must verify under, and the window of records that may be unwitnessed."""
    window = dt.timedelta(seconds=args.window)
    if args.witness is None and args.receipts is None:
        return None, {}, window
    if args.witness is not None and args.receipts is not None:
        raise AdminCommandError("--witness and --receipts are alternatives")
    if args.receipts is not None:
        pinned = None
        if args.config is not None:
            pinned = load_gateway_config(args.config).hub_key
        keys = _hub_keys(args, pinned)
        if not keys:
            raise AdminCommandError("--receipts needs the hub's key: --hub-key or --config")
        if not args.receipts.is_file():
            raise AdminCommandError(f"no receipts file {args.receipts}")
        return _checked(receipts_of(read_receipts(args.receipts))), keys, window
    witness = await open_witness(args, stack)
    if not witness.hub_keys:
        raise AdminCommandError("the hub's key is needed: --hub-key or --config")
    source = fetch_receipts(witness.session, witness.url, args.tenant)
    return _checked(source), witness.hub_keys, window


async def export_receipts(args: argparse.Namespace) -> int:
    """Write every receipt the witness keeps for the tenant to ``--out`` (JSON lines,
    0600, complete before it appears under its name); the number written."""
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    count = 0
    async with contextlib.AsyncExitStack() as stack:
        witness = await open_witness(args, stack)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                async for receipt in _checked(
                    fetch_receipts(witness.session, witness.url, args.tenant)
                ):
                    handle.write(json.dumps(receipt.to_json(), separators=(",", ":")) + "\n")
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    return count
