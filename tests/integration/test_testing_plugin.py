"""chukan's pytest plugin (``chukan.testing``) as vendors get it: registered by installing
chukan, harmless to a run that does not use it, and the README's example passing in a
project of its own (pytest-asyncio's strict mode, ``filterwarnings = error``).

The vendor projects run as their own pytest processes against this session's
PostgreSQL.  The in-process tests check what a vendor's test would do with a client:
records, certificate files for a core system that is not Python, and synthetic people.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import random
import re
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

import chukan.testing
import chukan.testing_fixtures
from chukan.codecs import catalog
from chukan.codecs.individual_number import check_digit
from chukan.codecs.sample_items import certification_item
from chukan.simulators.devnet.network import DEMO_AGENCIES, REPORTING_SYSTEM, Network
from chukan.testing import ClientFactory, CoreSystemClient, SyntheticPeople

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path(__file__).with_name("test_vendor_example.py")
#: What a vendor's project typically says: strict mode, function-scoped loops, no warnings.
VENDOR_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""
#: A PostgreSQL that does not exist: a run that starts nothing never notices.
NOWHERE = "postgresql://nobody@127.0.0.1:9/nothing"


def vendor_project(root: Path, tests: dict[str, str], ini: str = VENDOR_INI) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(ini, encoding="utf-8")
    for name, source in tests.items():
        (root / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def run_pytest(project: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in the vendor's project, as the vendor runs it (the plugin comes from the install)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["CHUKAN_DATABASE_URL"] = database_url
    return subprocess.run(  # noqa: S603 -- our own interpreter and pytest, fixed arguments
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    """The summary line ("1 passed, 1 error in 2.01s"), without the time."""
    lines = [line for line in result.stdout.splitlines() if re.search(r" in [0-9.]+s", line)]
    assert lines, result.stdout + result.stderr
    return re.sub(r" in [0-9.]+s.*", "", lines[-1]).strip("= ")


def test_installing_chukan_registers_the_plugin(pytestconfig: pytest.Config) -> None:
    entry = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert entry.get("chukan") == "chukan.testing"
    # This very run loaded it from there, and its fixtures with it (pytest-asyncio is active).
    assert pytestconfig.pluginmanager.get_plugin("chukan") is chukan.testing
    assert pytestconfig.pluginmanager.is_registered(chukan.testing_fixtures)


def test_readme_prints_the_example_that_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your core system against chukan (pytest plugin)", 1)[1]
    printed = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert printed == EXAMPLE.read_text(encoding="utf-8")


def test_the_example_passes_in_a_vendor_project(pg_server_url: str, tmp_path: Path) -> None:
    project = vendor_project(
        tmp_path / "vendor", {"test_core_system.py": EXAMPLE.read_text(encoding="utf-8")}
    )
    result = run_pytest(project, pg_server_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == "1 passed"


def test_a_run_without_the_fixtures_starts_nothing(tmp_path: Path) -> None:
    """The plugin is loaded in every run of a vendor who installed chukan: it must stay inert."""
    project = vendor_project(
        tmp_path / "vendor",
        {
            "test_plain.py": """
                import asyncio

                import pytest


                def test_sync() -> None:
                    assert 1 + 1 == 2


                @pytest.mark.asyncio
                async def test_async() -> None:
                    await asyncio.sleep(0)
            """
        },
    )
    result = run_pytest(project, NOWHERE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == "2 passed"
    # Had anything asked for the network, it would have failed (and said why).
    (project / "test_network.py").write_text(
        "def test_network(chukan_network: object) -> None: ...\n", encoding="utf-8"
    )
    used = run_pytest(project, NOWHERE, "test_network.py")
    assert outcome(used) == "1 error", used.stdout + used.stderr
    assert "chukan_network: PostgreSQL (CHUKAN_DATABASE_URL) unreachable" in used.stdout
    assert "nobody@" not in used.stdout  # the URL is not printed
    help_text = run_pytest(project, NOWHERE, "--help").stdout
    assert "--chukan-agencies=CODE[:NAME],..." in help_text
    assert "chukan_agencies" in help_text  # the ini option


def test_without_pytest_asyncio_only_the_tests_using_the_fixtures_fail(tmp_path: Path) -> None:
    project = vendor_project(
        tmp_path / "vendor",
        {
            "test_mixed.py": """
                def test_plain() -> None:
                    assert True


                def test_network(chukan_network: object) -> None:
                    raise AssertionError("never reached")
            """
        },
        ini="[pytest]\nfilterwarnings = error\n",
    )
    result = run_pytest(project, NOWHERE, "-p", "no:asyncio")
    assert result.returncode == 1, result.stdout + result.stderr
    assert outcome(result) == "1 passed, 1 error"
    assert chukan.testing.NEEDS_ASYNCIO in result.stdout


def test_a_malformed_agency_option_stops_the_run_at_once(tmp_path: Path) -> None:
    project = vendor_project(tmp_path / "vendor", {"test_a.py": "def test_a() -> None: ...\n"})
    result = run_pytest(project, NOWHERE, "--chukan-agencies=12100")
    assert result.returncode == 4, result.stdout + result.stderr  # a usage error
    assert "'12100' is not an agency code" in result.stderr


def test_agencies_from_the_ini_and_a_test_on_the_wrong_loop(
    pg_server_url: str, tmp_path: Path
) -> None:
    """The ini option picks the gateways; a test outside the session loop is told what to mark."""
    funabashi, _ = DEMO_AGENCIES[1]
    project = vendor_project(
        tmp_path / "vendor",
        {
            "test_agencies.py": f"""
                import pytest

                from chukan.testing import CoreSystemClient


                @pytest.mark.asyncio(loop_scope="session")
                async def test_chosen(chukan_agencies: dict[str, CoreSystemClient]) -> None:
                    names = {{c: a.gateway.config.agency_name for c, a in chukan_agencies.items()}}
                    assert names == {{"{funabashi}": "船橋", "129981": "試験機関129981"}}
                    for client in chukan_agencies.values():
                        status, body = await client.request("GET", "/internal/v1/records")
                        assert status == 200 and body == {{"records": []}}


                @pytest.mark.asyncio
                async def test_function_loop(chukan_agencies: dict[str, CoreSystemClient]) -> None:
                    await chukan_agencies["129981"].request("GET", "/internal/v1/records")
            """
        },
        ini=VENDOR_INI + f"chukan_agencies = {funabashi}:船橋 129981\n",
    )
    result = run_pytest(project, pg_server_url)
    assert outcome(result) == "1 failed, 1 passed", result.stdout + result.stderr
    assert "PASSED test_agencies.py::test_chosen" in result.stdout
    assert chukan.testing.WRONG_LOOP in result.stdout


async def test_records_read_by_the_client(
    chukan_agencies: dict[str, CoreSystemClient], chukan_people: SyntheticPeople
) -> None:
    chiba, funabashi = chukan_agencies[catalog.CHIBA_CITY], chukan_agencies[catalog.FUNABASHI_CITY]
    here = chukan_people.person()
    there = chukan_people.moved(here)
    assert there.individual_number == here.individual_number
    assert there.atena_id != here.atena_id
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    item = certification_item(chukan_people.rng, dt.date.today())
    assert (await chiba.store(here.atena_id, catalog.CERTIFICATION.code, item))[0] == 201
    status, sent = await funabashi.query(
        there.atena_id,
        catalog.LTC_CERTIFICATION_PROCEDURE,
        catalog.CERTIFICATION.code,
        catalog.CHIBA_CITY,
    )
    assert status == 202
    assert (await funabashi.result(sent["query_id"]))["status"] == "answered"

    [asked] = await funabashi.records(query_id=sent["query_id"])
    [answered] = await chiba.records(atena_id=here.atena_id)
    assert asked["role"] == "requester" and asked["atena_id"] == there.atena_id
    assert answered["role"] == "provider" and answered["query_id"] == sent["query_id"]
    assert asked["permit_id"] == answered["permit_id"]
    assert await funabashi.records(atena_id=here.atena_id) == []  # Chiba's 宛名番号 is not theirs


async def test_certificate_files_for_a_core_system_outside_python(
    chukan_client: ClientFactory, chukan_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    reporting = chukan_client(catalog.CHIBA_CITY, system=REPORTING_SYSTEM)
    files = reporting.export_certificate(tmp_path / "certs", b"vendor-passphrase")
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in files.key.read_bytes()
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(files.certificate, files.key, password=b"vendor-passphrase")
    async with chukan_http.get(reporting.url + "/internal/v1/records", ssl=context) as response:
        assert response.status == 200
    # The certificate carries that system's roles: records only, not queries.
    async with chukan_http.post(
        reporting.url + "/internal/v1/queries", json={}, ssl=context
    ) as response:
        assert response.status == 403
    with pytest.raises(ValueError, match="not a core system"):
        reporting.export_certificate(tmp_path / "other", b"x", system="nobody")


def test_an_agency_outside_the_network_is_named(
    chukan_client: ClientFactory, chukan_network: Network
) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"agency 999999 is not in the network"):
        chukan_client("999999")
    assert set(chukan_network.gateways) >= {code for code, _ in DEMO_AGENCIES}


def test_synthetic_people_are_seeded_by_the_test(
    chukan_people: SyntheticPeople, request: pytest.FixtureRequest
) -> None:
    replay = SyntheticPeople(random.Random(request.node.nodeid))
    person = chukan_people.person()
    assert replay.person() == person  # a failing test sees the same people when run again
    number = person.individual_number
    assert len(person.atena_id) == 15 and person.atena_id.startswith("9")
    assert int(number[-1]) == check_digit(number[:11])
    assert number not in repr(person)  # the repr keeps the 個人番号 out
    assert chukan_people.individual_number() != number
