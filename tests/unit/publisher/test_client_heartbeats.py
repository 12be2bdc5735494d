"""A publisher's Client against hostile heartbeats: extreme values, replays and stale bodies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from node.p2p.host import P2PHost
from node.publisher.heartbeat_claims import MAX_CAPACITY, MAX_TPS
from node.publisher.node_table import NodeTable
from node.wire.identity import Identity
from node.wire.topics import TASK_TOPIC


async def test_publisher_survives_extreme_and_replayed_heartbeats() -> None:
    """Signed heartbeats with extreme values, replays and stale bodies, sent at a real Client;
    its observer (the gateway's /rpc/get_alive_peers) sees only the ones the node table took."""
    from node.publisher.client import Client
    from node.wire.envelope import seal

    fake_node = Identity.generate()
    peer = P2PHost(fake_node.secret, ["/ip4/127.0.0.1/tcp/0"])
    await peer.start()
    await peer.subscribe(TASK_TOPIC)
    await peer.subscribe("heartbeat")
    client = Client(peers=[peer.listen_addrs[0]], node_table=NodeTable(ttl=3))
    observed: list[int] = []  # timestamps of the heartbeats the observer was shown
    client.on_message = lambda inbound: observed.append(inbound.body.timestamp)
    try:
        await client.start()
        for _ in range(100):
            if (await peer.mesh_sizes()).get("heartbeat"):
                break
            await asyncio.sleep(0.1)

        def heartbeat(at_ns: int, free: int, tps: float) -> bytes:
            body = {
                "address": fake_node.address,
                "peerId": fake_node.peer_id,
                "models": ["m"],
                "capacity": {"free": free, "max": free},
                "pendingTasks": 0,
                "pending_tasks": [0, 0],
                "tps": {"m": tps},
                "version": "0.3.0",
                "timestamp": at_ns,
            }
            return json.dumps(body).encode()

        async def send(body: bytes) -> None:
            await peer.publish("heartbeat", seal(fake_node, "heartbeat", body))

        async def known() -> list[Any]:
            for _ in range(30):
                if nodes := client.nodes.live():
                    return nodes
                await asyncio.sleep(0.1)
            return []

        first = time.time_ns()
        await send(heartbeat(first, 2**63 - 1, 1e308))
        [node] = await known()
        assert (node.free, node.tps["m"]) == (MAX_CAPACITY, MAX_TPS)
        assert client.nodes.choose(["m"]) is not None  # weighing did not raise
        assert observed == [first]
        # An older body (validly signed, freshly enveloped) does not replace the newer one.
        await send(heartbeat(first - 10**9, 0, 1.0))
        await asyncio.sleep(0.5)
        assert client.nodes.live()[0].free == MAX_CAPACITY
        assert observed == [first]
        # The same signed body re-sent after the TTL keeps nothing alive.
        await asyncio.sleep(3.2)
        envelope = json.loads(seal(fake_node, "heartbeat", heartbeat(first, 5, 1.0)))
        await peer.publish("heartbeat", json.dumps(envelope).encode())
        await asyncio.sleep(0.5)
        assert client.nodes.live() == []
        assert observed == [first]  # the re-wrapped old body reached no observer
        # A fresh one brings it back.
        fresh = time.time_ns()
        await send(heartbeat(fresh, 3, 10.0))
        [node] = await known()
        assert observed == [first, fresh]
        assert node.free == 3 and not any(loop.done() for loop in client._loops)
    finally:
        await client.close()
        await peer.stop()
