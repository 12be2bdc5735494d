"""The monitor's samples: gossip a full queue dropped reaches /metrics, counted once; a failing journal."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from node.daemon.admission import Admission
from node.daemon.build import free_places
from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError
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


async def test_a_journal_that_sqlite_refuses_makes_the_node_unhealthy_counted_and_full(tmp_path: Path) -> None:
    """A full disk refuses every task at intake (`journal_error`): the node says so in /healthz and the
    metrics, and its heartbeat offers no free places, so publishers go elsewhere until it works again."""
    node = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    await node.start()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    try:
        metrics = NodeMetrics()
        admission = Admission(_never, _never, {"m": 2}, max_queue=0)
        monitor = NodeMonitor(
            Identity.generate(), node, admission, journal, metrics, SystemdNotifier.from_env({}), lambda: ["m"]
        )
        assert free_places(admission, journal, ["m"]) == (2, 2)
        assert journal.failing() is None

        journal._conn.execute(f"PRAGMA max_page_count = {journal._conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(JournalError):
            journal.record_accepted("t1", "p", time.time_ns() + 10**10, "m", b"x" * 50_000, time.time_ns())
        await monitor.sample()

        health = monitor.health()
        assert not health.ok and "database or disk is full" in (health.reason or "")
        assert metrics.registry.get_sample_value("compute_node_journal_errors_total") == 1
        assert monitor.status()["journal_errors"] == 1
        assert free_places(admission, journal, ["m"]) == (0, 2)
        assert journal.failing(within_s=0) is None  # it passes: once writes work again, the node offers places
    finally:
        journal.close()
        await node.stop()


async def test_status_and_the_capacity_metric_count_what_heartbeats_advertise(tmp_path: Path) -> None:
    """A model out of service (its file gone, its process down) is in no heartbeat: /status and the metric
    counted its places anyway (18 free of 18 where the heartbeat said 9 of 9)."""
    node = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    await node.start()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    try:
        metrics = NodeMetrics()
        admission = Admission(_never, _never, {"a": 2, "b": 2}, max_queue=1)
        serving = ["a"]  # b is out of service
        monitor = NodeMonitor(
            Identity.generate(),
            node,
            admission,
            journal,
            metrics,
            SystemdNotifier.from_env({}),
            lambda: serving,
            capacity=lambda: free_places(admission, journal, serving),
        )
        await monitor.sample()
        advertised = free_places(admission, journal, serving)
        assert advertised == (3, 3)
        assert (monitor.status()["capacity"]["free"], monitor.status()["capacity"]["max"]) == advertised
        assert metrics.registry.get_sample_value("compute_node_capacity_free") == advertised[0]
    finally:
        journal.close()
        await node.stop()
