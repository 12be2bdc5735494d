"""A healthy node that trims an idle inbound connection (connection_trim.py, past high_water: a busy node, or one an
attacker fills with idle peer ids) is not taken for dead by the publisher whose connection it was: the publisher
probes it with a new connection (TaskSender._probe), keeps waiting for its gossip task, and marks no error."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from node.p2p.errors import P2PError
from node.publisher.attempts import NODE_GONE
from node.publisher.tasks import Task
from tests.support.gossip_nodes import MODEL, GossipNode, client_behind_a_relay


async def test_a_node_that_trims_our_connection_is_not_taken_for_dead() -> None:
    relay, other = GossipNode(answers=False), GossipNode(answers=True)
    busy = GossipNode(answers=True, text="the busy node's answer", delay=4)  # a generation of 4 s
    client = await client_behind_a_relay(relay, busy, other, max_retries=1)
    try:
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
