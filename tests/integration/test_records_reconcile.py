"""Three-party reconciliation through the real servers: requester, hub and provider agree
after real queries; a record a database superuser rewrote on one side is named, with its
query id and field, by the agency's command and by the hub's; the hub tells an agency
only about its own queries, as a gateway tells only the hub; and ``chukan records
reconcile`` runs from the gateway's own TOML file."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from process_support import Files, without_password
from test_exactly_once import answered_query

from chukan.codecs import catalog
from chukan.gateway.cli import admin as admin_cli
from chukan.gateway.cli import main as gateway_cli
from chukan.gateway.cli.main import GATEWAY_DATABASE
from chukan.gateway.cli.reconcile import reconcile_agency, run_reconcile
from chukan.gateway.core.tls import client_session
from chukan.keys import b64e
from chukan.simulators.hub import HUB_STATE
from chukan.simulators.hub.checkpoints import verify_hub_chain
from chukan.simulators.hub.reconcile import reconcile_all

pytestmark = pytest.mark.integration

MARGIN = dt.timedelta(minutes=5)


def period(start: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """From ``start`` (this test's own queries only) to a moment from now."""
    return start, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


async def agency_report(api: Any, start: dt.datetime) -> dict[str, Any]:
    """``chukan records reconcile`` of one agency, through its gateway's TLS identity."""
    report = await reconcile_agency(
        api.gateway.config, *period(start), margin=MARGIN, actor="auditor"
    )
    result: dict[str, Any] = report.to_json()
    return result


async def hub_report(network: Any, start: dt.datetime) -> dict[str, Any]:
    """``chukan hub records reconcile``: every agency, with the hub's client certificate."""
    config = network.hub_config
    async with client_session(config.tls) as session:
        return await reconcile_all(
            network.hub.app[HUB_STATE].pool,
            session,
            *period(start),
            margin=MARGIN,
            tls=config.tls is not None,
            timeout=30.0,
        )


@asynccontextmanager
async def hub_outcome_rewritten(network: Any, query_id: str, outcome: str) -> AsyncIterator[None]:
    """A database superuser sets the hub's conclusion of a query (append-only trigger off);
    put back afterwards, so the hub's chain verifies again."""
    owner = await asyncpg.connect(network.hub_config.migration_database_url)
    statement = (
        "UPDATE hub_record_events SET outcome = $2 WHERE query_id = $1 AND kind = 'concluded' "
        "RETURNING (SELECT outcome FROM hub_record_events "
        "WHERE query_id = $1 AND kind = 'concluded')"
    )
    try:
        await owner.execute("SET session_replication_role = replica")
        before = await owner.fetchval(statement, query_id, outcome)
        assert before is not None
        try:
            yield
        finally:
            await owner.fetchval(statement, query_id, before)
    finally:
        await owner.close()


async def test_after_real_queries_requester_hub_and_provider_agree(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    start = dt.datetime.now(dt.UTC)
    queries = [await answered_query(chiba, funabashi, rng) for _ in range(2)]
    for api, role in ((funabashi, "requester"), (chiba, "provider")):
        report = await agency_report(api, start)
        assert report["ok"], report
        assert report["compared"] >= len(queries) and report["differences"] == []
        rows = await api.gateway.state.pool.fetch(
            "SELECT DISTINCT query_id FROM provision_records WHERE role = $1 "
            "AND query_id = ANY($2::text[])",
            role,
            queries,
        )
        assert len(rows) == len(queries)
    everyone = await hub_report(network, start)
    assert everyone["differences"] == [], everyone
    # Gateways other tests added and stopped stay registered: those alone are unreachable.
    gone = {u["agency"] for u in everyone["unreachable"]}
    assert not gone & {catalog.CHIBA_CITY, catalog.FUNABASHI_CITY}
    assert everyone["ok"] == (not gone)
    by_agency = {a["agency"]: a for a in everyone["agencies"]}
    assert by_agency[catalog.CHIBA_CITY]["agree"] >= len(queries)
    assert by_agency[catalog.FUNABASHI_CITY]["agree"] >= len(queries)


async def test_a_rewritten_hub_record_is_named_by_every_command(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random
) -> None:
    start = dt.datetime.now(dt.UTC)
    query_id = await answered_query(chiba, funabashi, rng)
    untouched = await answered_query(chiba, funabashi, rng)
    async with hub_outcome_rewritten(network, query_id, "refused"):
        expected = {"outcome": {"hub": "refused", "agency": "provided"}}
        for api, role in ((funabashi, "requester"), (chiba, "provider")):
            report = await agency_report(api, start)
            assert not report["ok"]
            assert report["differences"] == [
                {
                    "agency": api.gateway.config.agency_code,
                    "query_id": query_id,
                    "role": role,
                    "kind": "differs",
                    "fields": expected,
                }
            ]
        everyone = await hub_report(network, start)
        assert not everyone["ok"]
        named = {(d["agency"], d["query_id"], d["role"]) for d in everyone["differences"]}
        assert named == {
            (catalog.FUNABASHI_CITY, query_id, "requester"),
            (catalog.CHIBA_CITY, query_id, "provider"),
        }
        assert untouched not in {d["query_id"] for d in everyone["differences"]}
        # The hub's own chain names the event too (its hash no longer matches).
        async with network.hub.app[HUB_STATE].pool.acquire() as conn:
            chain = (await verify_hub_chain(conn, None)).to_json()
        assert {(i["kind"], i.get("query_id")) for i in chain["issues"]} == {("altered", query_id)}
    assert (await agency_report(funabashi, start))["ok"]


async def test_an_agency_reads_only_its_own_records_and_a_gateway_answers_only_the_hub(
    chiba: Any, funabashi: Any, network: Any, http: Any, rng: random.Random
) -> None:
    start = dt.datetime.now(dt.UTC)
    query_id = await answered_query(chiba, funabashi, rng)
    params = {"from": start.isoformat(), "to": period(start)[1].isoformat()}
    funabashi_ssl = network.agency_client_ssl(catalog.FUNABASHI_CITY)
    url = network.hub.url + "/network/v1/records"
    async with http.get(
        url, params={**params, "agency": catalog.CHIBA_CITY}, ssl=funabashi_ssl
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "peer_mismatch"
    async with http.get(url, params=params, ssl=funabashi_ssl) as response:
        assert response.status == 200
        records = (await response.json())["records"]
    assert {(r["query_id"], r["role"]) for r in records} >= {(query_id, "requester")}
    assert all(catalog.FUNABASHI_CITY in (r["requester"], r["provider"]) for r in records)
    assert all(
        r["requester"] == catalog.FUNABASHI_CITY for r in records if r["role"] == "requester"
    )
    async with http.get(url, params={**params, "from": "yesterday"}, ssl=funabashi_ssl) as bad:
        assert bad.status == 422
        assert (await bad.json())["error"]["code"] == "validation_failed"
    # A gateway's records: the hub's certificate only (an agency's or a core system's: 403).
    gateway = chiba.gateway.url + "/network/v1/records"
    for ssl in (funabashi_ssl, chiba.gateway.client_ssl()):
        async with http.get(gateway, params=params, ssl=ssl) as response:
            assert response.status == 403
    async with http.get(gateway, params=params, ssl=network.hub_client_ssl()) as response:
        assert response.status == 200
        theirs = (await response.json())["records"]
    assert (query_id, "provider") in {(r["query_id"], r["role"]) for r in theirs}


def gateway_file(api: Any, network: Any, root: Path) -> Path:
    """The gateway's TOML file, as its operator keeps it (secrets and PEMs in files)."""
    config = api.gateway.config
    files = Files(root, network.pki)
    url, password = without_password(config.database_url)
    password_line = f'password_file = "{files.secret("db", password)}"' if password else ""
    hub_key = f"{config.hub_key.key_id}={b64e(config.hub_key.raw)}"
    return files.write(
        "gateway",
        f"""[agency]
code = "{config.agency_code}"
name = "{config.agency_name}"

[database]
url = "{url}"
{password_line}

[keys]
dir = "{config.key_dir}"
passphrase_file = "{files.secret("passphrase", config.key_passphrase.decode())}"

[hub]
url = "{config.hub_url}"
signing_key = "{hub_key}"
enrolment_token_file = "{files.secret("enrolment", config.enrolment_token)}"

{files.tls_table(config.agency_code, config.tls)}
""",
    )


def reconcile_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chukan")
    admin_cli.add_commands(
        parser.add_subparsers(dest="command", required=True), database_default=GATEWAY_DATABASE
    )
    return parser.parse_args(["records", "reconcile", *argv])


async def test_chukan_records_reconcile_runs_from_the_gateways_file(
    chiba: Any, funabashi: Any, network: Any, rng: random.Random, tmp_path: Path, capsys: Any
) -> None:
    start = dt.datetime.now(dt.UTC)
    query_id = await answered_query(chiba, funabashi, rng)
    toml = gateway_file(funabashi, network, tmp_path)
    bounds = ("--from", start.isoformat(), "--to", period(start)[1].isoformat())
    args = reconcile_args("--config", str(toml), *bounds)
    out, err = io.StringIO(), io.StringIO()
    assert await asyncio.to_thread(run_reconcile, args, out, err) == 0, err.getvalue()
    report = json.loads(out.getvalue())
    assert report["ok"] and report["agency"] == catalog.FUNABASHI_CITY
    async with hub_outcome_rewritten(network, query_id, "expired"):
        out = io.StringIO()
        assert await asyncio.to_thread(run_reconcile, args, out, err) == 1
    (finding,) = json.loads(out.getvalue())["differences"]
    assert (finding["query_id"], finding["fields"]) == (
        query_id,
        {"outcome": {"hub": "expired", "agency": "provided"}},
    )
    # Through the command line's dispatch: no database URL, no embedded server, the file's
    # problem as exit status 2.
    missing = reconcile_args("--config", str(tmp_path / "missing.toml"), *bounds)
    assert gateway_cli.run(missing) == 2
    assert "missing.toml" in capsys.readouterr().err
