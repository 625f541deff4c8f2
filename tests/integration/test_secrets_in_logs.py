"""No key material, passphrase or token ever reaches the logs (run late: checks the session)."""

from __future__ import annotations

from typing import Any

import pytest

from chukan.simulators.hub import HUB_STATE

pytestmark = pytest.mark.integration


async def test_no_key_material_passphrase_or_token_in_the_logs(
    network: Any, chiba: Any, log_capture: Any
) -> None:
    text = log_capture.getvalue()
    assert log_capture.named("key_ring_generated")  # the capture saw key handling
    assert "PRIVATE KEY" not in text
    secrets = [
        network.hub_config.key_passphrase.decode(),
        network.hub_config.admin_token,
        *(g.token for g in network.gateways.values()),
        *(g.config.key_passphrase.decode() for g in network.gateways.values()),
        *(g.config.enrolment_token for g in network.gateways.values()),
        network.hub.app[HUB_STATE].secret.hex(),  # the hub's 個人番号 HMAC key
    ]
    for secret in secrets:
        assert secret not in text
