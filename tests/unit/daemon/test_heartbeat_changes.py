"""The heartbeat loop publishes a change of what the node offers (models, speeds) within seconds, not at
the next interval: a first start's speed, measured after READY, reaches publishers soon after."""

from __future__ import annotations

import asyncio
import time

from node.daemon.heartbeat import Heartbeat
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.topics import HEARTBEAT_TOPIC
from tests.support.p2p_hosts import LOOPBACK, wait_for_mesh


async def _next_tps(received: asyncio.Queue, timeout: float) -> dict[str, float]:  # type: ignore[type-arg]
    message = await asyncio.wait_for(received.get(), timeout)
    return dict(decode(HEARTBEAT_TOPIC, message.data).body.tps)


async def test_a_measured_speed_is_published_at_once_and_at_most_once_per_change_interval() -> None:
    node = Identity.generate()
    host, listener = P2PHost(node.secret, [LOOPBACK]), P2PHost(Identity.generate().secret, [LOOPBACK])
    await host.start()
    await listener.start()
    tps: dict[str, float] = {}
    heartbeat = Heartbeat(
        node, host, lambda: ["m"], capacity=lambda: (1, 1), pending=lambda: 0, tps=lambda: dict(tps), interval=600
    )
    try:
        await host.subscribe(HEARTBEAT_TOPIC)
        received = await listener.subscribe(HEARTBEAT_TOPIC)
        await listener.connect(host.listen_addrs[0])
        await wait_for_mesh(host, HEARTBEAT_TOPIC, 1)
        loop = asyncio.create_task(heartbeat.run(tick=0.1, settle=0.0, changed_after=1.0))
        assert await _next_tps(received, 10) == {}  # the first one: nothing measured yet

        tps["m"] = 42.0  # the speed measured after READY
        changed = time.monotonic()
        assert await _next_tps(received, 5) == {"m": 42.0}  # long before the 600 s interval
        assert time.monotonic() - changed < 2.0

        tps["m"] = 43.0
        tps["m"] = 44.0  # two changes within one change interval: one heartbeat, no sooner than the interval
        published = time.monotonic()
        assert await _next_tps(received, 5) == {"m": 44.0}
        assert time.monotonic() - published >= 0.9 - 0.1  # the last one went out < 0.1 s before `published`
        await asyncio.sleep(1.5)
        assert received.empty()  # nothing changed since: nothing more before the interval
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    finally:
        await listener.stop()
        await host.stop()
