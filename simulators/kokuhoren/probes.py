"""The 国保連 simulator's ``/health``, ``/ready`` and ``/metrics``.

* ``/health``: liveness and the database (``SELECT 1`` with a deadline).
* ``/ready``: the database answers and the keys at rest are usable: both key
  files are there, readable by the owner only, and open (with the configured
  passphrase) to the keys the mailbox signs and unseals with — a restart would
  come back with them.  Opening them costs an scrypt, so the outcome is kept
  for the files' exact bytes and modes.
* ``/metrics``: Prometheus text — the HTTP answers and large bodies every
  server counts, and the files received by intake status (from the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import stat
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from aiohttp import web

from chukan.gateway.core import db
from chukan.gateway.core.keystore import AgencyKeys
from chukan.gateway.core.metrics import CONTENT_TYPE, Gauge, HttpMetrics
from chukan.gateway.core.probes import Check, health_answer, ready_answer, timed
from chukan.gateway.core.settings import DEFAULT_READY_TIMEOUT
from chukan.gateway.core.web import observe
from chukan.gateway.kokuhoren.mailbox import KOKUHOREN_PARTY
from chukan.keys import KeysError, load_encryption_key, load_signing_key
from chukan.simulators.kokuhoren.config import KokuhorenConfig
from chukan.simulators.kokuhoren.state import KOKUHOREN_STATE


@dataclass
class KokuhorenMetrics(HttpMetrics):
    """What a 国保連 simulator process exposes on ``/metrics``."""

    files: Gauge = field(
        default_factory=lambda: Gauge(
            "chukan_kokuhoren_received_files",
            "Files received at the mailbox, by intake status.",
            ("status",),
        )
    )

    def render(self, files: dict[tuple[str, ...], float]) -> str:
        lines = self.http_lines()
        lines.extend(self.files.render(files))
        return "\n".join(lines) + "\n"


KOKUHOREN_METRICS: Final = web.AppKey("kokuhoren_metrics", KokuhorenMetrics)

#: Outcomes of :func:`check_keys` by (files' digests and modes, keys in use).
_KEY_CHECKS: dict[tuple[Any, ...], str | None] = {}


def check_keys(config: KokuhorenConfig, keys: AgencyKeys) -> Check:
    """The key files at rest are private and hold the keys in use."""
    paths = [config.key_dir / f"{KOKUHOREN_PARTY}.{kind}.pem" for kind in ("sig", "enc")]
    try:
        files = [(p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in paths]
    except OSError:
        return {"ok": False, "reason": "a key file cannot be read"}
    in_use = (keys.signing.key_id, keys.encryption.key_id)
    memo = (tuple((hashlib.sha256(d).digest(), m) for d, m in files), in_use)
    if memo not in _KEY_CHECKS:
        reason: str | None = None
        if any(mode & 0o077 for _, mode in files):
            reason = "a key file is readable by others"
        else:
            try:
                signing = load_signing_key(KOKUHOREN_PARTY, files[0][0], config.key_passphrase)
                sealing = load_encryption_key(KOKUHOREN_PARTY, files[1][0], config.key_passphrase)
            except (KeysError, ValueError):
                reason = "the key files do not open with the configured passphrase"
            else:
                if (signing.key_id, sealing.key_id) != in_use:
                    reason = "the key files do not hold the keys in use"
        if len(_KEY_CHECKS) >= 64:
            _KEY_CHECKS.clear()
        _KEY_CHECKS[memo] = reason
    reason = _KEY_CHECKS[memo]
    if reason is not None:
        return {"ok": False, "reason": reason}
    return {"ok": True, "signing_key": keys.signing.key_id}


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the database answers, 503 when it does not."""
    state = request.config_dict[KOKUHOREN_STATE]
    return health_answer(await db.probe(state.pool, DEFAULT_READY_TIMEOUT), service="kokuhoren")


async def ready(request: web.Request) -> web.Response:
    """200 when the database answers and the keys at rest are usable; 503 otherwise."""
    state = request.config_dict[KOKUHOREN_STATE]
    database, keys = await asyncio.gather(
        db.probe(state.pool, DEFAULT_READY_TIMEOUT),
        timed(asyncio.to_thread(check_keys, state.config, state.keys), DEFAULT_READY_TIMEOUT),
    )
    return ready_answer({"database": database, "keys": keys}, service="kokuhoren")


async def metrics(request: web.Request) -> web.Response:
    state = request.config_dict[KOKUHOREN_STATE]
    files: dict[tuple[str, ...], float] = {}
    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        rows = await state.pool.fetch("SELECT status, count(*) AS n FROM received_files GROUP BY 1")
        files = {(r["status"],): float(r["n"]) for r in rows}
    text = request.config_dict[KOKUHOREN_METRICS].render(files)
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def setup_probes(app: web.Application) -> None:
    """The simulator's metrics, large-body bound and access log setup, and its probe routes."""
    metrics_registry = app[KOKUHOREN_METRICS] = KokuhorenMetrics()
    observe(app, "kokuhoren", metrics_registry)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
