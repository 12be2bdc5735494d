"""A call whose only node dies waits out its timeout (the node may still publish its result on gossip, PROTOCOL.md
section 8), and then its TaskTimeoutError says what became of the node: its stream closed, or it disconnected,
and after how long, and that no other node serves the task's models. `compute-node run-task` said only "no result
within 60 s" (a fault review's find). The AttemptLoop against stand-in hooks, then a Client's `wait` for a task
that picked its node."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import pytest

from node.p2p.frame_stream import FrameStream
from node.publisher.attempt import Attempt
from node.publisher.attempts import AttemptHooks, AttemptLoop
from node.publisher.client import Client
from node.publisher.direct import DirectDelivery
from node.publisher.errors import TaskTimeoutError
from node.publisher.node_table import KnownNode, NodeTable
from node.publisher.reputation import Reputation
from node.publisher.tasks import Task, TaskResult
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody
from tests.support.gossip_nodes import MODEL
from tests.support.heartbeats import signed_heartbeat

NODE = Identity.generate()


def heard(table: NodeTable, identity: Identity) -> None:
    inbound = signed_heartbeat(identity, [MODEL])
    assert isinstance(inbound.body, HeartbeatBody) and table.update(inbound.sender, inbound.body)


class OneNode:
    """The only node serving MODEL; each task sent to it is an attempt on a stream, or on gossip."""

    def __init__(self, direct: bool) -> None:
        self.nodes = NodeTable()
        heard(self.nodes, NODE)
        self.direct = direct
        self.sent: list[Attempt] = []

    async def choose(self, models: list[str], tried: set[str], *_: Any) -> KnownNode:
        node = self.nodes.choose(models, exclude=tried)
        assert node is not None
        return node

    async def send(self, task: Task, node: KnownNode, remaining: float, on_delta: Any) -> Attempt:
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        task_id = f"t{len(self.sent)}"
        direct = DirectDelivery(task_id, cast(FrameStream, None)) if self.direct else None
        self.sent.append(Attempt(task_id, node.address, future, direct, peer_id=node.peer_id))
        return self.sent[-1]

    async def verify(self, result: TaskResult) -> TaskResult:
        return result

    async def end(self, attempt: Attempt) -> None:
        pass

    def loop(self, timeout: float) -> AttemptLoop:
        hooks = AttemptHooks(self.nodes, Reputation(None), self.choose, self.send, self.verify, self.end)
        return AttemptLoop(hooks, Task(workflow={}, models=[MODEL]), timeout, 2, None)


@pytest.mark.parametrize(
    ("direct", "went"),
    [
        (True, f"the stream of node {NODE.address} closed without a result"),
        (False, f"node {NODE.address} disconnected"),
    ],
    ids=["stream", "gossip"],
)
async def test_a_timeout_says_the_only_nodes_stream_closed_and_no_other_node_serves(direct: bool, went: str) -> None:
    net = OneNode(direct)
    running = asyncio.ensure_future(net.loop(timeout=1.0).run())
    while not net.sent:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    (attempt,) = net.sent
    attempt.lost.set()  # its node was killed
    with pytest.raises(TaskTimeoutError) as caught:
        await running  # the whole timeout: its result may still come on gossip
    text = str(caught.value)
    assert text.startswith("task t0: no result within 1 s: ") and went in text, text
    assert float(re.findall(r"after (\d+\.\d) s", text)[0]) == pytest.approx(0.2, abs=0.15)
    assert text.endswith("; no other node serves its models")
    assert len(net.sent) == 1


async def test_a_wait_for_a_task_that_picked_its_node_says_when_the_node_became_unreachable() -> None:
    client = Client(peers=[])
    heard(client.nodes, NODE)
    try:
        # PeerWatch marks the node so once its last connection closed and a probe of it failed.
        asyncio.get_running_loop().call_later(0.3, client.nodes.mark_gone, NODE.peer_id)
        with pytest.raises(TaskTimeoutError) as caught:
            await client.wait("t1", 1.0, nodes=[NODE.address])
    finally:
        await client.close()
    text = str(caught.value)
    assert text.startswith(f"task t1: no result within 1 s: node {NODE.address} became unreachable after "), text
    assert float(re.findall(r"after (\d+\.\d) s", text)[0]) == pytest.approx(0.3, abs=0.2)


async def test_a_wait_for_nodes_that_are_live_says_no_more() -> None:
    client = Client(peers=[])
    heard(client.nodes, NODE)
    try:
        with pytest.raises(TaskTimeoutError) as caught:
            await client.wait("t1", 0.3, nodes=[NODE.address, Identity.generate().address])
    finally:
        await client.close()
    assert str(caught.value) == "task t1: no result within 0.3 s"
