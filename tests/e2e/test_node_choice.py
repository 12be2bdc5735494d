"""Publisher node choice by heartbeat, exactly-once execution, and retry of a busy node elsewhere."""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import AsyncExitStack

import pytest
import structlog

from node.publisher.client import Client, NoNodeError, Task, TaskFailedError
from node.publisher.node_table import NodeTable
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = pytest.mark.slow


class Heaviest(random.Random):
    """Always the highest-weight choice, so the test knows which node is tried first."""

    def choices(self, population, weights=None, *, cum_weights=None, k=1):  # type: ignore[override]
        return [max(zip(weights, population), key=lambda pair: pair[0])[1]]


class Alternating(random.Random):
    """Draws 0.25, 0.75, 0.25, ...: a weighted choice between two nodes of weights within 3:1 of each
    other takes each in turn, so the test does not hang on chance (six fair draws all land on one
    node 3% of the time)."""

    def __init__(self) -> None:
        super().__init__(0)
        self._draws = 0

    def random(self) -> float:
        self._draws += 1
        return 0.75 if self._draws % 2 == 0 else 0.25


async def wait_for_nodes(client: Client, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(client.nodes.live()) < count:
        assert time.monotonic() < deadline, f"client saw {len(client.nodes.live())} of {count} nodes"
        await asyncio.sleep(0.1)


async def test_client_picks_one_node_per_task_from_heartbeats(tmp_path) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_node(node_settings(tmp_path / "a")))
        second = await stack.enter_async_context(
            running_node(node_settings(tmp_path / "b", bootstrap=[dialable(first)]))
        )
        client = Client(peers=[dialable(first)])
        client.nodes = NodeTable(reputation=client.reputation, rng=Alternating())  # measured weights, fixed draws
        await stack.enter_async_context(client)
        await wait_for_nodes(client, 2)
        with structlog.testing.capture_logs() as logs:
            results = await asyncio.gather(
                *(
                    client.execute(
                        Task(workflow=Simple().workflow(f"Say {i}.", max_tokens=8), models=["smollm2:135m"]), timeout=60
                    )
                    for i in range(6)
                )
            )
        started = [entry["task_id"] for entry in logs if entry["event"] == "task started"]
        assert sorted(started) == sorted(r.task_id for r in results)  # each task ran exactly once
        assert {r.node for r in results} == {first.running.identity.address, second.running.identity.address}


async def test_no_node_for_the_model_fails_after_the_timeout_with_a_clear_error(tmp_path) -> None:
    async with running_node(node_settings(tmp_path / "a")) as node, Client(peers=[dialable(node)]) as client:
        await wait_for_nodes(client, 1)
        started = time.monotonic()
        with pytest.raises(NoNodeError, match=r"no live node hosting any of \['gemma3:270m'\] seen within 2 s") as no:
            await client.execute(Task(workflow=Simple().workflow("Hi"), models=["gemma3:270m"]), timeout=2)
        assert str(no.value).endswith("(1 live node known, hosting 'smollm2:135m')"), no.value  # a misspelt name shows
        assert 1.9 < time.monotonic() - started < 5


async def test_busy_node_is_retried_on_another_node_but_a_workflow_error_is_not(tmp_path) -> None:
    # Node A announces itself as fast and free, then gets busy: the client's stale view picks it,
    # gets "busy", and retries on B with a new task id.
    async with AsyncExitStack() as stack:
        busy = await stack.enter_async_context(
            running_node(
                node_settings(
                    tmp_path / "a",
                    max_concurrent=1,
                    max_queue=0,
                    startup_benchmark=True,
                    heartbeat_interval=600,
                )
            )
        )
        spare = await stack.enter_async_context(
            running_node(
                node_settings(
                    tmp_path / "b",
                    bootstrap=[dialable(busy)],
                    max_concurrent=1,
                    max_queue=0,
                    heartbeat_interval=600,
                )
            )
        )
        client = await stack.enter_async_context(Client(peers=[dialable(busy)], node_table=NodeTable(rng=Heaviest())))
        await wait_for_nodes(client, 2)
        # A first start measures its speed after READY; its heartbeat says it within seconds.
        deadline = time.monotonic() + 30
        while not (seen := client.nodes.get(busy.running.identity.address)) or not seen.tps:
            assert time.monotonic() < deadline, "node A's measured speed never reached the client"
            await asyncio.sleep(0.1)
        assert client.nodes.choose(["*"]).address == busy.running.identity.address  # benchmarked tps: the heavier one
        workflow = Simple().workflow("List booleans.", max_tokens=900)
        workflow["tasks"][0]["schema"] = json.dumps(
            {"type": "array", "items": {"type": "boolean"}, "minItems": 300, "maxItems": 300}
        )
        long_id = await client.submit(
            Task(workflow=workflow, models=["*"], nodes=[busy.running.identity.address]), timeout=60
        )
        await asyncio.sleep(0.5)  # the long task is running on A
        with structlog.testing.capture_logs() as logs:
            result = await client.execute(
                Task(workflow=Simple().workflow("Hi", max_tokens=8), models=["*"]), timeout=60
            )
        assert result.node == spare.running.identity.address
        retries = [entry for entry in logs if entry["event"] == "retrying on another node"]
        assert [(entry["node"], entry["reason"].split(":")[0]) for entry in retries] == [
            (busy.running.identity.address, "busy")
        ]
        assert retries[0]["task_id"] != result.task_id  # the retry is a new task

        bad = Simple().workflow("unused")
        bad["tasks"][0]["inputs"] = [{"name": "q", "value": {"type": "read", "key": "missing"}, "required": True}]
        bad["tasks"][0]["messages"] = [{"role": "user", "content": "{{q}}"}]
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(TaskFailedError) as caught:
                await client.execute(Task(workflow=bad, models=["*"]), timeout=30)
        assert not caught.value.retryable and caught.value.node == spare.running.identity.address
        # A (still busy) may be tried first; B's workflow error is final: no retry after it.
        retries = [entry for entry in logs if entry["event"] == "retrying on another node"]
        assert all(entry["node"] == busy.running.identity.address for entry in retries)
        await client.wait(long_id, timeout=60, nodes=[busy.running.identity.address])
