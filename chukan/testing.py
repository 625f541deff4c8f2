"""chukan's pytest plugin: a simulated network and ready core-system clients for vendors' tests.

A vendor builds a core system (a 介護保険システム) against the gateway's internal
API.  Installing chukan registers this module under the ``pytest11`` entry point,
so the vendor's own test suite can start the real servers (the hub, each agency's
gateway, the 国保連 simulator) and call them as its core system does, with no
conftest of its own.  The project's integration tests use the same fixtures, so
what vendors test against is what the project tests.

Fixtures (all session-scoped except ``chukan_people``):

``chukan_network``
    :class:`~chukan.simulators.devnet.network.Network`: the servers on loopback,
    every connection mutual TLS, started by the same harness as the demo.
``chukan_agencies``
    ``{agency code: CoreSystemClient}``, one client per agency of the network.
``chukan_client``
    ``chukan_client(code_or_gateway, system=...)``: a client for any agency or
    core system, including a gateway a test added.
``chukan_people``
    :class:`SyntheticPeople`: synthetic people, seeded per test (never real data).
``chukan_http``
    The aiohttp session the clients use: it trusts the network's CA and presents
    no certificate of its own.
``chukan_logs``
    :class:`LogCapture`: the servers' structlog events.  When a test fails, its
    report shows the latest events.
``chukan_database_url``, ``chukan_db_prefix``
    The PostgreSQL server (``CHUKAN_DATABASE_URL``, else an embedded one) and the
    prefix of this session's databases.

Choose the agencies with ``--chukan-agencies=121002,122041:船橋市`` or the ini
option ``chukan_agencies``.  The default is the two demo agencies.

Safe to have installed: nothing starts unless a test requests one of these
fixtures.  The fixtures are async and run on the session's event loop, so they
need pytest-asyncio, and tests that use them are marked
``pytest.mark.asyncio(loop_scope="session")``.  This module imports pytest-asyncio
only through ``chukan.testing_fixtures``, which :func:`pytest_configure`
registers only when pytest-asyncio is active.  Without it, a test that asks for a
chukan fixture fails with a message that says what to install, and other tests
are not affected.  ``-p no:chukan`` turns the plugin off.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import pytest

from chukan.codecs.catalog import AGENCY_CODE_PATTERN
from chukan.gateway.core.identities import system_identity
from chukan.simulators.devnet.network import CORE_SYSTEM, DEMO_AGENCIES, Gateway
from chukan.simulators.devnet.synthetic import (
    SyntheticPerson,
    synthetic_individual_number,
    synthetic_person,
)

#: The fixtures this plugin provides (all need pytest-asyncio, directly or through others).
FIXTURES: Final = frozenset(
    {
        "chukan_network",
        "chukan_agencies",
        "chukan_client",
        "chukan_people",
        "chukan_http",
        "chukan_logs",
        "chukan_database_url",
        "chukan_db_prefix",
    }
)
AGENCIES_OPTION: Final = "chukan_agencies"
FIXTURES_MODULE: Final = "chukan.testing_fixtures"
#: A body above this size is streamed: aiohttp warns when a large ``bytes`` body is sent whole.
STREAM_ABOVE: Final = 512 * 1024
NEEDS_ASYNCIO: Final = (
    "chukan's fixtures are async and need pytest-asyncio: "
    "pip install pytest-asyncio (and do not disable it with -p no:asyncio)"
)
WRONG_LOOP: Final = (
    "chukan's servers run on the session's event loop: mark the test "
    '@pytest.mark.asyncio(loop_scope="session") (or set pytestmark in the module)'
)


class LogCapture(io.StringIO):
    """Every structlog event of the session, as the JSON lines a deployment would write."""

    def events(self) -> list[dict[str, Any]]:
        # JSON lines end with "\n" only (str.splitlines would also cut at U+2028 and the like).
        return [json.loads(line) for line in self.getvalue().split("\n") if line.strip()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A core system's client certificate on disk, for a system under test that is not Python."""

    ca: Path
    certificate: Path
    #: Encrypted PKCS#8 (mode 0600); opens with the passphrase given to the export.
    key: Path


class CoreSystemClient:
    """One agency's core system calling its gateway's internal API, over real mutual TLS.

    By default each call presents the client certificate of ``system`` (the
    介護保険システム), whose roles are the operations the gateway grants that
    system.  ``system=`` on a call picks another configured system of the
    gateway.  ``token=`` presents no certificate and sends the bearer token
    instead.  An explicit ``ssl=`` context wins over both.

    Calls return ``(HTTP status, body)``: the parsed JSON, or the raw bytes when
    the answer is not JSON.  A refusal is an answer too, so a test asserts the
    status it expects.  :meth:`result` and :meth:`records` are the exceptions:
    they return the body and fail the test unless the status is 200.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway: Gateway,
        *,
        system: str = CORE_SYSTEM,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.session = session
        #: Updated in place when the harness restarts the gateway, so the client keeps working.
        self.gateway = gateway
        self.system = system
        self._loop = loop

    def __repr__(self) -> str:
        return f"CoreSystemClient({self.agency_code}, {self.system}, {self.url})"

    @property
    def agency_code(self) -> str:
        return self.gateway.config.agency_code

    @property
    def url(self) -> str:
        return self.gateway.url

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """Any call to the gateway: ``path`` from the root (``/internal/v1/…``).

        Other keyword arguments go to :meth:`aiohttp.ClientSession.request`
        (``json=``, ``data=``, ``headers=``, ``params=``, ``ssl=``, …).
        """
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            pytest.fail(WRONG_LOOP, pytrace=False)
        headers = dict(kwargs.pop("headers", {}))
        if isinstance(kwargs.get("data"), bytes) and len(kwargs["data"]) > STREAM_ABOVE:
            kwargs["data"] = io.BytesIO(kwargs["data"])
        context = None if token is not None else self.gateway.client_ssl(system or self.system)
        if context is None:  # a bearer-token caller, or a plain-HTTP network
            headers.setdefault("Authorization", f"Bearer {token or self.gateway.token}")
        else:
            kwargs.setdefault("ssl", context)
        async with self.session.request(
            method, self.gateway.url + path, headers=headers, **kwargs
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    #: The name the project's own tests use.
    call = request

    async def register(self, atena_id: str, individual_number: str) -> tuple[int, Any]:
        """符号取得: register a person under this agency's 宛名番号 (201, or 200 when known)."""
        return await self.request(
            "POST",
            "/internal/v1/persons",
            json={"atena_id": atena_id, "individual_number": individual_number},
        )

    async def store(
        self, atena_id: str, item_code: str, xml: bytes, *, manual_review: bool = False
    ) -> tuple[int, Any]:
        """副本登録: store a new version of one of the person's items (the catalog's XML)."""
        return await self.request(
            "PUT",
            f"/internal/v1/persons/{atena_id}/items/{item_code}"
            + ("?manual_review=true" if manual_review else ""),
            data=xml,
            headers={"Content-Type": "application/xml"},
        )

    async def query(
        self, atena_id: str, procedure: str, item_code: str, provider: str, **extra: Any
    ) -> tuple[int, Any]:
        """情報照会: ask ``provider`` (an agency code) for an item (202 and a ``query_id``)."""
        return await self.request(
            "POST",
            "/internal/v1/queries",
            json={
                "atena_id": atena_id,
                "procedure_code": procedure,
                "item_code": item_code,
                "provider": provider,
                **extra,
            },
        )

    async def result(self, query_id: str, wait: float = 20) -> dict[str, Any]:
        """A query's state, after waiting up to ``wait`` seconds for it to settle."""
        path = f"/internal/v1/queries/{query_id}?wait={wait}"
        status, body = await self.request("GET", path)
        if status != 200 or not isinstance(body, dict):
            raise AssertionError(f"GET {path}: HTTP {status} {body!r}")
        return body

    async def records(
        self, *, atena_id: str | None = None, query_id: str | None = None
    ) -> list[dict[str, Any]]:
        """情報提供等記録 of this agency, optionally for one person or one query."""
        params = {
            key: value
            for key, value in (("atena_id", atena_id), ("query_id", query_id))
            if value is not None
        }
        status, body = await self.request("GET", "/internal/v1/records", params=params)
        if status != 200 or not isinstance(body, dict):
            raise AssertionError(f"GET /internal/v1/records: HTTP {status} {body!r}")
        records: list[dict[str, Any]] = body["records"]
        return records

    def ssl_context(self, system: str | None = None) -> ssl.SSLContext | None:
        """The TLS context a call presents (None on a plain-HTTP network)."""
        return self.gateway.client_ssl(system or self.system)

    def export_certificate(
        self, directory: Path, passphrase: bytes, *, system: str | None = None
    ) -> CertificateFiles:
        """Write this system's client certificate, its key and the CA to ``directory``.

        This is for a core system under test that runs outside Python: point it
        at these files and :attr:`url`.  The key is encrypted with ``passphrase``.
        """
        pki = self.gateway.pki
        if pki is None:
            raise ValueError("the network speaks plain HTTP: there is no certificate to export")
        name = system or self.system
        configured = {s.system_id: s for s in self.gateway.config.systems}
        if name not in configured:
            raise ValueError(f"{name} is not a core system of {self.agency_code}")
        identity = system_identity(self.agency_code, name, configured[name].operations)
        certificate, key = pki.export_client(identity, directory, name, passphrase)
        return CertificateFiles(directory / "ca.pem", certificate, key)


class ClientFactory(Protocol):
    """The ``chukan_client`` fixture: a client for an agency code or a gateway object."""

    def __call__(self, gateway: str | Gateway, system: str = CORE_SYSTEM) -> CoreSystemClient: ...


@dataclass
class SyntheticPeople:
    """Synthetic people for a test: random 個人番号 with a valid check digit, never real data.

    Seeded from the test's id, so a failing test sees the same people when it is
    run again.
    """

    rng: random.Random = field(default_factory=random.Random)

    def person(self, atena_prefix: str = "9") -> SyntheticPerson:
        """A new person with a 15-digit 宛名番号 starting with ``atena_prefix``."""
        return synthetic_person(self.rng, atena_prefix)

    def moved(self, person: SyntheticPerson, atena_prefix: str = "6") -> SyntheticPerson:
        """The same person (個人番号, name) under another agency's 宛名番号."""
        other = synthetic_person(self.rng, atena_prefix)
        return SyntheticPerson(
            other.atena_id, person.individual_number, person.kana_name, person.birth_year
        )

    def individual_number(self) -> str:
        return synthetic_individual_number(self.rng)


def parse_agencies(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``CODE`` or ``CODE:NAME`` items, comma- or space-separated, as (code, name) pairs.

    A demo agency's code alone takes its name (121002 → 千葉市); another code
    without a name becomes ``試験機関CODE``.  Raises :class:`pytest.UsageError`
    for a malformed code or a duplicate.
    """
    known = dict(DEMO_AGENCIES)
    agencies: dict[str, str] = {}
    for value in values:
        for item in value.replace(",", " ").split():
            code, _, name = item.partition(":")
            if not AGENCY_CODE_PATTERN.match(code):
                raise pytest.UsageError(
                    f"--chukan-agencies: {code!r} is not an agency code (6 or 16 digits)"
                )
            if code in agencies:
                raise pytest.UsageError(f"--chukan-agencies: {code} is listed twice")
            agencies[code] = name or known.get(code, f"試験機関{code}")
    if not agencies:
        raise pytest.UsageError("--chukan-agencies: name at least one agency")
    return tuple(agencies.items())


def chosen_agencies(config: pytest.Config) -> tuple[tuple[str, str], ...]:
    """The agencies of the network: the command line, else the ini option, else the demo's."""
    option: str | None = config.getoption(AGENCIES_OPTION)
    if option is not None:
        return parse_agencies([option])
    ini: list[str] = config.getini(AGENCIES_OPTION)
    return parse_agencies(ini) if ini else DEMO_AGENCIES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chukan", "chukan simulated network (chukan.testing)")
    group.addoption(
        "--chukan-agencies",
        dest=AGENCIES_OPTION,
        default=None,
        metavar="CODE[:NAME],...",
        help="agencies whose gateways chukan_network starts (default: "
        + ", ".join(f"{code} {name}" for code, name in DEMO_AGENCIES)
        + ")",
    )
    parser.addini(
        AGENCIES_OPTION,
        type="args",
        default=[],
        help="agencies whose gateways chukan_network starts, as CODE or CODE:NAME items",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check the options now, and register the fixtures when pytest-asyncio can run them."""
    chosen_agencies(config)
    if config.pluginmanager.has_plugin("asyncio"):
        config.pluginmanager.import_plugin(FIXTURES_MODULE)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Without pytest-asyncio, a test using our fixtures fails with a useful message."""
    if item.config.pluginmanager.has_plugin(FIXTURES_MODULE):
        return
    if FIXTURES.intersection(getattr(item, "fixturenames", ())):
        pytest.fail(NEEDS_ASYNCIO, pytrace=False)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """On failure, show the latest log events: the servers run in the test process."""
    if call.excinfo is None or call.when != "call":
        return
    capture = getattr(item, "funcargs", {}).get("chukan_logs")
    if isinstance(capture, LogCapture):
        tail = "\n".join(capture.getvalue().splitlines()[-40:])
        item.add_report_section("call", "structlog events", tail)
