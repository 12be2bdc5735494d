"""A healthy node that trims an idle inbound connection (connection_trim.py, past high_water: a busy node, or one an
attacker fills with idle peer ids) is not taken for dead by the publisher whose connection it was: the publisher
probes it with a new connection (TaskSender._probe), keeps waiting for its gossip task, and marks no error."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from node.p2p.connection_trim import ConnectionBudget
from node.p2p.errors import P2PError
from node.p2p.handoff import GossipMessage
from node.publisher.attempts import NODE_GONE
from node.publisher.client import Client
from node.publisher.node_table import NodeTable
from node.publisher.tasks import Task
from node.wire.envelope import seal
from node.wire.inbound import decode
from node.wire.messages import TaskBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.unit.publisher.test_gossip_node_gone import MODEL, GossipNode, Prefer


class SlowNode(GossipNode):
    """Answers its task after 4 s (a generation), on gossip."""

    async def _read(self, tasks: asyncio.Queue[GossipMessage]) -> None:
        while True:
            body = decode(TASK_TOPIC, (await tasks.get()).data).body
            assert isinstance(body, TaskBody)
            if self.identity.address not in (body.picked_nodes or []):
                continue
            self.took.set()
            await asyncio.sleep(4)
            now = time.time_ns()
            output = Output("the busy node's answer", body.public_key, 1, 1)
            result = result_body(body.task_id, MODEL, output, received_at_ns=now, started_at_ns=now, ended_at_ns=now)
            await self.host.publish(RESULTS_TOPIC, seal(self.identity, RESULTS_TOPIC, encode_body(result)))


async def test_a_node_that_trims_our_connection_is_not_taken_for_dead() -> None:
    relay, busy, other = GossipNode(answers=False), SlowNode(answers=True), GossipNode(answers=True)
    service = busy.host._service
    # A node over its high water (here 1 peer: the relay it dialled, plus the publisher's inbound connection).
    service._options = service._options.model_copy(
        update={"connection_budget": ConnectionBudget(high_water=1, low_water=0, grace_s=1.0, check_interval_s=0.2)}
    )
    for node in (relay, busy, other):
        await node.start()
    await busy.host.connect(relay.host.listen_addrs[0])  # outbound at the busy node: never trimmed
    await other.host.connect(relay.host.listen_addrs[0])
    table = NodeTable(rng=Prefer([busy.identity.address, other.identity.address]))
    client = Client(peers=[relay.host.listen_addrs[0]], delivery="gossip", node_table=table, max_retries=1)
    try:
        await client.start()
        for _ in range(100):
            if len(client.nodes.live()) == 2:
                break
            await busy.heartbeat()
            await other.heartbeat()
            await asyncio.sleep(0.2)
        assert len(client.nodes.live()) == 2
        # The publisher is connected to the busy node (a stream dial that did not open a stream, as in
        # "stream not open in time; sending on gossip"): an idle inbound connection there.
        assert client._host is not None
        with contextlib.suppress(P2PError):  # the fake node serves no streams: the connection stays, idle
            await client._host.open_stream(busy.host.listen_addrs, b"{}", timeout=2.0)
        assert busy.host.peer_id in await client._host.peers()
        with structlog.testing.capture_logs() as logs:
            result = await asyncio.wait_for(client.execute(Task(workflow={}, models=[MODEL]), timeout=60), 60)
    finally:
        await client.close()
        for node in (relay, busy, other):
            await node.stop()
    retries = [e["reason"] for e in logs if e["event"] == "retrying on another node"]
    errors = client.reputation.view(busy.identity.address).errors
    assert NODE_GONE not in retries, "a healthy node's trimmed connection was taken for its death"
    assert result.node == busy.identity.address and result.text == "the busy node's answer"
    assert errors == 0
