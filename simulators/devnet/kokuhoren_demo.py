"""The demo's 国保連 steps: a month-end 受給者異動連絡票 from 千葉市, then 給付実績 back.

Kept beside the demo (:mod:`chukan.simulators.devnet.demo`) so that the demo script
stays a readable list of steps.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from chukan.codecs import catalog
from chukan.simulators.devnet.demo_client import Demo
from chukan.simulators.devnet.errors import DemoFailedError
from chukan.simulators.devnet.synthetic import SyntheticPerson


def _insured_number(rng: random.Random) -> str:
    return f"{rng.randint(1, 9)}{rng.randrange(10**9):09d}"


def _change(
    rng: random.Random,
    change_id: str,
    person: SyntheticPerson,
    day: dt.date,
    *,
    change_kind: str,
    reason: str,
    care_level: str,
    limit: int,
) -> dict[str, Any]:
    end = dt.date(day.year + 1, day.month, 1) - dt.timedelta(days=1)
    return {
        "change_id": change_id,
        "changed_on": day.isoformat(),
        "change_kind": change_kind,
        "change_reason": reason,
        "insured_number": _insured_number(rng),
        "name_kana": person.kana_name,
        "birth_date": dt.date(person.birth_year, 4, 1).isoformat(),
        "sex": rng.choice(["1", "2"]),
        "qualified_on": dt.date(person.birth_year + 65, 4, 1).isoformat(),
        "care_level": care_level,
        "certification_start": day.isoformat(),
        "certification_end": end.isoformat(),
        "benefit_limit": limit,
        "limit_start": day.isoformat(),
        "limit_end": end.isoformat(),
        "burden_ratio": "1",
        "special_address": False,
    }


async def month_end_transmission(
    demo: Demo, rng: random.Random, people: Sequence[SyntheticPerson]
) -> None:
    """千葉市 posts recipient changes, sends the month's file, then ingests 給付実績."""

    network = demo.network
    chiba = network.gateways[catalog.CHIBA_CITY]
    today = dt.date.today()
    month = f"{today.year:04d}{today.month:02d}"
    first_day = today.replace(day=1)
    changes = [
        _change(
            rng,
            "demo-1",
            people[0],
            first_day,
            change_kind="1",
            reason="03",
            care_level="22",
            limit=19705,
        ),
        _change(
            rng,
            "demo-2",
            people[1],
            first_day,
            change_kind="1",
            reason="03",
            care_level="12",
            limit=5032,
        ),
        # A 変更 for someone 国保連 has never registered: refused on its own.
        _change(
            rng,
            "demo-3",
            people[0],
            first_day,
            change_kind="2",
            reason="06",
            care_level="21",
            limit=16765,
        ),
    ]
    demo.say(
        "\n8. 国保連 伝送: 千葉市 (保険者番号 "
        f"{chiba.config.insurer_number}) sends the month's 受給者異動連絡票"
    )
    await demo.call(
        chiba, "POST", "/internal/v1/kokuhoren/recipient-changes", 201, json={"changes": changes}
    )
    demo.say(f"   {len(changes)} recipient changes posted (one is a 変更 国保連 cannot know)")
    built = await demo.call(
        chiba,
        "POST",
        "/internal/v1/kokuhoren/transmissions",
        202,
        json={"month": month, "kind": "change"},
    )
    demo.say(
        f"   file       {built['file_name']}  ファイル管理番号 {built['file_management_number']}"
        f"  {built['record_count']} records"
    )
    done = await demo.call(
        chiba,
        "GET",
        f"/internal/v1/kokuhoren/transmissions/{built['transmission_id']}?wait=20",
        200,
    )
    intake = done["intake"]
    if done["status"] != "delivered" or intake is None:
        raise DemoFailedError(f"the 国保連 file was not delivered: {done['last_error']}")
    assert chiba.config.kokuhoren is not None
    demo.say(
        f"   delivered  sealed for {chiba.config.kokuhoren.encryption_key.key_id}, "
        f"signed by {chiba.state.keys.signing.key_id}, attempts {done['attempts']}"
    )
    demo.say(
        f"   intake     {intake['status']}: {intake['accepted']} accepted, "
        f"{intake['rejected']} rejected"
    )
    for error in intake["errors"]:
        demo.say(
            f"   record {error['record_number']}   {error['field']} {error['code']}"
            f" (change {error['change_id']})"
        )
    if (intake["accepted"], intake["rejected"]) != (2, 1):
        raise DemoFailedError(f"unexpected intake result {intake}")

    demo.say("\n9. 給付実績: 国保連 returns the month's 給付実績; 千葉市 fetches and ingests it")
    assert network.kokuhoren is not None
    assert network.kokuhoren_config is not None
    async with demo.session.post(
        network.kokuhoren.url + "/admin/v1/returns",
        json={"insurer_number": chiba.config.insurer_number, "month": month},
        headers={"Authorization": f"Bearer {network.kokuhoren_config.admin_token}"},
        ssl=network.anonymous_ssl() or True,
    ) as response:
        if response.status not in (200, 201):
            raise DemoFailedError(f"国保連 did not produce 給付実績: HTTP {response.status}")
    started = await demo.call(
        chiba, "POST", "/internal/v1/kokuhoren/returns", 202, json={"month": month}
    )
    ingested = await demo.call(
        chiba, "GET", f"/internal/v1/kokuhoren/returns/{started['job_id']}?wait=20", 200
    )
    if ingested["status"] != "done" or not ingested["files"]:
        raise DemoFailedError(f"給付実績 were not ingested: {ingested['job']['error']}")
    for file in ingested["files"]:
        units = sum(r["units"] for r in file["records"])
        demo.say(
            f"   file {file['file_name']}: {file['record_count']} records ingested, "
            f"{units} 単位 in total"
        )
