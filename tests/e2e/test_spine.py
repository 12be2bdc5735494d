"""The spine: a task published on gossip runs on a node's llama.cpp model and comes back
signed by that node and encrypted to the publisher. Two real nodes and one client over
TCP on 127.0.0.1, the real SmolLM2 model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import pytest_asyncio
import structlog

from node.daemon.server import NodeServer
from node.publisher.client import Client, Task, TaskFailedError, TaskTimeoutError
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


class Cluster:
    def __init__(self, nodes: list[NodeServer], client: Client) -> None:
        self.nodes = nodes
        self.client = client

    @property
    def addresses(self) -> set[str]:
        return {node.running.identity.address for node in self.nodes}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_node(node_settings(tmp_path_factory.mktemp("node1"))))
        second = await stack.enter_async_context(
            running_node(node_settings(tmp_path_factory.mktemp("node2"), bootstrap=[dialable(first)]))
        )
        client = Client(peers=[dialable(first), dialable(second)])
        await client.start()
        stack.push_async_callback(client.close)
        yield Cluster([first, second], client)


async def test_simple_task_returns_text_signed_by_a_node_and_encrypted_to_us(cluster: Cluster) -> None:
    simple = Simple()
    task = Task(workflow=simple.workflow(prompt="Hey there!", max_tokens=32), models=["smollm2:135m"])
    res = await cluster.client.execute(task, timeout=60)
    assert simple.parse_result(res).strip()
    assert res.node in cluster.addresses
    assert res.model == "smollm2:135m"
    stats = res.stats
    assert 0 < stats.received_at <= stats.execution_started_at <= stats.execution_ended_at <= stats.published_at


async def test_picked_node_executes_and_signs(cluster: Cluster) -> None:
    second = cluster.nodes[1].running.identity.address
    task = Task(workflow=Simple().workflow(prompt="Say hello.", max_tokens=16), models=["*"], nodes=[second])
    res = await cluster.client.execute(task, timeout=60)
    assert res.node == second
    assert res.text.strip()


async def test_task_for_a_model_no_node_hosts_times_out_naming_the_task(cluster: Cluster) -> None:
    # Both nodes are named, so the task is published and each node decides for itself.
    task = Task(workflow=Simple().workflow(prompt="Hi"), models=["gemma3:270m"], nodes=sorted(cluster.addresses))
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(TaskTimeoutError) as caught:
            await cluster.client.execute(task, timeout=3)
    assert caught.value.task_id in str(caught.value)
    not_taken = [
        entry for entry in logs if entry["event"] == "task ignored" and entry.get("task_id") == caught.value.task_id
    ]
    assert len(not_taken) == 2, logs  # each node logged it
    assert all(entry["reason"] == "no_model" and "gemma3:270m" in entry["detail"] for entry in not_taken)


async def test_failing_workflow_returns_an_error_result_with_the_reason(cluster: Cluster) -> None:
    workflow = Simple().workflow(prompt="unused")
    workflow["tasks"][0]["messages"] = [{"role": "user", "content": "{{question}}"}]
    workflow["tasks"][0]["inputs"] = [
        {"name": "question", "value": {"type": "read", "key": "nowhere"}, "required": True}
    ]
    first = cluster.nodes[0].running.identity.address
    with pytest.raises(TaskFailedError) as caught:
        await cluster.client.execute(Task(workflow=workflow, models=["smollm2:135m"], nodes=[first]), timeout=60)
    assert caught.value.node == first
    assert "question" in caught.value.reason or "nowhere" in caught.value.reason


async def test_invalid_workflow_is_refused_with_the_field(cluster: Cluster) -> None:
    workflow = Simple().workflow(prompt="unused")
    workflow["tasks"][0]["operator"] = "teleport"
    first = cluster.nodes[0].running.identity.address
    with pytest.raises(TaskFailedError) as caught:
        await cluster.client.execute(Task(workflow=workflow, models=["smollm2:135m"], nodes=[first]), timeout=30)
    assert "invalid workflow" in caught.value.reason
    assert "operator" in caught.value.reason
