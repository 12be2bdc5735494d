"""The monitor's samples: gossip a full queue dropped reaches /metrics, counted once."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from node.daemon.admission import Admission
from node.daemon.journal import Journal
from node.daemon.monitor import NodeMonitor
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SystemdNotifier
from node.p2p.host import P2PHost
from node.wire.identity import Identity

TOPIC = "task"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


async def _meshed(host: P2PHost, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await host.mesh_sizes()).get(TOPIC, 0) < 1:
        assert time.monotonic() < deadline, "no mesh peer"
        await asyncio.sleep(0.02)


async def _never(*_: object) -> None:
    raise AssertionError("nothing is admitted here")


async def test_dropped_gossip_is_counted_in_the_metric_once(tmp_path: Path) -> None:
    sender = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    node = P2PHost(secrets.token_bytes(32), [LOOPBACK], queue_size=5)
    await sender.start()
    await node.start()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    try:
        await sender.subscribe(TOPIC)
        queue = await node.subscribe(TOPIC)
        await node.connect(sender.listen_addrs[0])
        await _meshed(sender)
        for i in range(20):
            await sender.publish(TOPIC, f"m{i}".encode())
        deadline = time.monotonic() + 10
        while queue.qsize() + node.dropped_messages < 20:
            assert time.monotonic() < deadline, "messages neither delivered nor dropped"
            await asyncio.sleep(0.02)

        metrics = NodeMetrics()
        admission = Admission(_never, _never, {"m": 1}, max_queue=0)
        monitor = NodeMonitor(
            Identity.generate(), node, admission, journal, metrics, SystemdNotifier.from_env({}), lambda: ["m"]
        )

        def dropped() -> float | None:
            return metrics.registry.get_sample_value("compute_node_gossip_dropped_total")

        await monitor.sample()
        assert dropped() == 15 == node.dropped_messages
        await monitor.sample()
        assert dropped() == 15  # a second sample adds only what was dropped since
    finally:
        journal.close()
        await asyncio.gather(sender.stop(), node.stop())
