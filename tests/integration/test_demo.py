"""The README's first command runs this demo: it must complete and say what it did."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from chukan.simulators.devnet.demo import run_demo

pytestmark = pytest.mark.integration


async def test_demo_runs_both_directions(pg_server_url: str, tmp_path: Path) -> None:
    out = io.StringIO()
    await run_demo(pg_server_url, tmp_path, out)
    text = out.getvalue()
    assert text.count("outcome    answered") == 3
    assert "HTTP 403 not_authorized" in text
    assert "no item plaintext appears in any message the hub stored" in text
    assert (
        "121002 千葉市: provider/provided: 2, requester/provided: 1, requester/refused: 1" in text
    )
    assert "122041 船橋市: provider/provided: 1, requester/provided: 1" in text
    assert "122033 市川市: requester/provided: 1" in text  # a second city asks 千葉市
    assert "file       10_531122010" in text  # 国保連 伝送 of 千葉市's 受給者異動連絡票
    assert "intake     partially_accepted: 2 accepted, 1 rejected" in text
    assert "被保険者番号 recipient_unknown (change demo-3)" in text
    assert "records ingested" in text  # 給付実績 back from 国保連
    assert "demo finished" in text
