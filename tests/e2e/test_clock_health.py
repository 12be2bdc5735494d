"""A running node whose clock is off: every message it hears is refused for its time, and /healthz says
why; replays of old messages among accepted ones do not make a healthy node unhealthy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node.daemon.clock_watch import MIN_REJECTED
from node.wire.identity import Identity
from node.wire.topics import HEARTBEAT_TOPIC
from tests.support.cluster import node_settings, running_node
from tests.support.heartbeats import heartbeat_message
from tests.support.live_hostile import connected_peer

pytestmark = pytest.mark.slow


def heartbeat(identity: Identity, at_ns: int) -> bytes:
    return heartbeat_message(identity, ["m"], free=1, at_ns=at_ns)


async def until(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_clock_off_by_hours_makes_the_node_unhealthy_and_says_why(tmp_path: Path) -> None:
    async with running_node(node_settings(tmp_path / "node", startup_grace=0)) as node:
        peer_identity = Identity.generate()
        peer, _ = await connected_peer(node, peer_identity)
        try:
            monitor = node.running.parts.monitor
            # What a node two hours ahead hears from every honest peer: messages two hours old.
            for _ in range(MIN_REJECTED + 2):
                await peer.publish(HEARTBEAT_TOPIC, heartbeat(Identity.generate(), time.time_ns() - 2 * 3600 * 10**9))
            await until(lambda: "clock" in (monitor.health().reason or ""), "the old heartbeats never told")
            health = monitor.health()
            assert not health.ok and "clock" in (health.reason or ""), health
            assert monitor.status()["clock_problem"] == health.reason

            # One message that passes (the clock agrees with the network's): the old ones were replays.
            await peer.publish(HEARTBEAT_TOPIC, heartbeat(peer_identity, time.time_ns()))
            await until(lambda: "clock" not in (monitor.health().reason or ""), "a valid heartbeat did not count")
        finally:
            await peer.stop()
