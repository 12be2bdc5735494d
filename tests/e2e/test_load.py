"""Load: 5 nodes and 2 publishers on 127.0.0.1 run 100 small tasks on the real model.

Nodes 2-5 bootstrap to node 1 (a star); publisher A joins through node 1 and
publisher B through node 5, so tasks and results are relayed. Each publisher
picks a node per task from the heartbeats it has seen (weighted by free
capacity). Every result must arrive, every task must start exactly once over all
nodes (counted in the logs), and the tasks must spread over several nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import structlog

from node.daemon.server import NodeServer
from node.publisher.client import Client, Task, TaskResult
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = pytest.mark.slow

NODES = 5
TASKS = 100
MAX_TOKENS = 8
TASK_TIMEOUT_S = 120.0
MESH_TIMEOUT_S = 20.0


async def wait_for_meshes(nodes: list[NodeServer], minimum: list[int]) -> None:
    """Until node i has at least minimum[i] mesh peers on the task and results topics."""
    deadline = time.monotonic() + MESH_TIMEOUT_S
    while True:
        sizes = [await node.running.host.mesh_sizes() for node in nodes]
        if all(min(s.get(TASK_TOPIC, 0), s.get(RESULTS_TOPIC, 0)) >= want for s, want in zip(sizes, minimum)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gossip meshes did not form: {sizes}, wanted {minimum}")
        await asyncio.sleep(0.1)


async def wait_for_heartbeats(publishers: list[Client], addresses: set[str]) -> None:
    """Until every publisher knows every node from its heartbeats."""
    deadline = time.monotonic() + MESH_TIMEOUT_S
    while any({node.address for node in client.nodes.live()} != addresses for client in publishers):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"publishers saw {[len(c.nodes.live()) for c in publishers]} of {len(addresses)} nodes"
            )
        await asyncio.sleep(0.1)


async def test_100_tasks_on_5_nodes_each_run_exactly_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(
                running_node(node_settings(tmp_path / "node0", n_ctx=512, max_queue=TASKS))
            )
            nodes = [hub]
            for i in range(1, NODES):
                settings = node_settings(tmp_path / f"node{i}", n_ctx=512, max_queue=TASKS, bootstrap=[dialable(hub)])
                nodes.append(await stack.enter_async_context(running_node(settings)))
            publishers = [Client(peers=[dialable(hub)]), Client(peers=[dialable(nodes[-1])])]
            for client in publishers:
                await client.start()
                stack.push_async_callback(client.close)
            await wait_for_meshes(nodes, [NODES, 1, 1, 1, 2])  # the hub: 4 nodes + publisher A
            addresses = {node.running.identity.address for node in nodes}
            await wait_for_heartbeats(publishers, addresses)
            ready = time.monotonic()
            simple = Simple()

            async def one(i: int) -> TaskResult:
                task = Task(
                    workflow=simple.workflow(prompt=f"Count to {i % 7 + 2}.", max_tokens=MAX_TOKENS),
                    models=["smollm2:135m"],
                )
                return await publishers[i % 2].execute(task, timeout=TASK_TIMEOUT_S)

            results = await asyncio.gather(*(one(i) for i in range(TASKS)))
            done = time.monotonic()

    started_per_task = Counter(entry["task_id"] for entry in logs if entry["event"] == "task started")
    per_node = Counter(result.node for result in results)
    print(
        f"\nload: {TASKS} tasks on {NODES} nodes in {done - ready:.1f} s "
        f"(setup {ready - started:.1f} s); per node {sorted(per_node.values())}"
    )
    assert len(results) == TASKS and all(simple.parse_result(result) for result in results)
    assert {result.node for result in results} <= addresses
    assert set(started_per_task) == {result.task_id for result in results}
    assert set(started_per_task.values()) == {1}  # each task executed exactly once over all nodes
    assert len(per_node) >= 3 and max(per_node.values()) < TASKS / 2  # spread by the publishers' choice
