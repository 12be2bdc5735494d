"""A node takes at most `direct_streams_per_peer` streams from one publisher, and a gateway is one publisher for
all its clients: past that, its tasks go on gossip (node/publisher/sender.py), where only the node's task places
count. Before, each task past the 16th was declined `busy: too_many_streams_from_peer` and, with no other node, failed
(a gateway soak: tasks ended `error` while the node had 36 places)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog

from node.publisher.client import Client, Task
from node.publisher.sender import STREAMS_PER_NODE
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = [pytest.mark.slow]

MODEL = "smollm2:135m"


async def run_at_once(tmp_path: Path, tasks: int, **settings: object) -> tuple[list[object], list[str]]:
    """`tasks` small tasks executed at once by one Client against one node: their outcomes, and the Client's log."""
    node_config = node_settings(tmp_path, max_concurrent=2, max_queue=64, **settings)
    async with running_node(node_config) as node, Client(peers=[dialable(node)]) as client:
        deadline = time.monotonic() + 20
        while not client.nodes.live():
            assert time.monotonic() < deadline, "the node's heartbeat never came"
            await asyncio.sleep(0.1)
        task = Task(workflow=Simple().workflow("Say hi.", max_tokens=4), models=[MODEL])
        with structlog.testing.capture_logs() as logs:
            outcomes = await asyncio.gather(
                *(client.execute(task, timeout=60) for _ in range(tasks)), return_exceptions=True
            )
    return outcomes, [entry["event"] for entry in logs]


async def test_tasks_past_a_nodes_streams_per_publisher_go_on_gossip(tmp_path: Path) -> None:
    outcomes, _ = await run_at_once(tmp_path, STREAMS_PER_NODE + 8)  # the node's default: 16 streams per peer
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed == []  # was: 8 of 24 'declined: busy: too_many_streams_from_peer'


async def test_a_node_that_takes_fewer_streams_gets_the_rest_on_gossip(tmp_path: Path) -> None:
    outcomes, events = await run_at_once(tmp_path, 6, direct_streams_per_peer=2)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert "node takes no more streams from us; sending on gossip" in events
