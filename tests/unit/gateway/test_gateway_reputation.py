"""The gateway's node reputation: kept in its data dir across restarts, served at GET /v1/reputation,
with the ban length from its settings."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.topics import TASK_TOPIC

A, B = "a" * 40, "b" * 40


async def test_reputation_is_served_and_survives_a_gateway_restart(tmp_path: Path) -> None:
    peer = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    await peer.start()
    await peer.subscribe(TASK_TOPIC)
    settings = GatewaySettings.load(
        data_dir=tmp_path, peers=[str(peer.listen_addrs[0])], port=0, verify_ban_seconds=600
    )
    try:
        gateway = Gateway(settings)
        await gateway.start()
        try:
            reputation = gateway.service.client.reputation
            reputation.record_result(A, 1.0, 30, 0.8, 40.0)
            reputation.record_verification(B, passed=False)
        finally:
            await gateway.stop()
        assert settings.reputation_path == tmp_path / "reputation.sqlite3" and settings.reputation_path.exists()

        again = Gateway(settings)
        await again.start()
        try:
            async with httpx.AsyncClient(base_url=again.url, timeout=30) as http:
                rows = {row["address"]: row for row in (await http.get("/v1/reputation")).json()["nodes"]}
        finally:
            await again.stop()
    finally:
        await peer.stop()
    assert rows[A]["answered"] > 0.99 and rows[A]["measured_tps"] > 37 and rows[A]["penalty"] == 1.0
    assert rows[B]["verify_failed"] == 1 and time.time() + 590 < rows[B]["banned_until"] < time.time() + 600
