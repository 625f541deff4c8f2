"""Shared by the 国保連 tests (異動連絡票 and the other flows): routes and transmission calls."""

from __future__ import annotations

from typing import Any

CHANGES = "/internal/v1/kokuhoren/recipient-changes"
TRANSMISSIONS = "/internal/v1/kokuhoren/transmissions"
RETURNS = "/internal/v1/kokuhoren/returns"
CHIBA_INSURER = "122010"


async def post_changes(api: Any, *changes: dict[str, Any]) -> tuple[int, Any]:
    answer: tuple[int, Any] = await api.call("POST", CHANGES, json={"changes": list(changes)})
    return answer


async def transmit_month(api: Any, month: str, kind: str = "change") -> dict[str, Any]:
    status, body = await api.call("POST", TRANSMISSIONS, json={"month": month, "kind": kind})
    assert status == 202, body
    assert isinstance(body, dict)
    return body


async def wait_transmission(api: Any, transmission_id: int, wait: float = 15) -> dict[str, Any]:
    status, body = await api.call("GET", f"{TRANSMISSIONS}/{transmission_id}?wait={wait}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body
