"""Stand-in nodes on real libp2p hosts that take their tasks on gossip, and a gossip Client that knows them: the
publisher's tests of a node whose connection closes (it went, or it trimmed ours)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from node.p2p.connection_trim import ConnectionBudget
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.publisher.client import Client
from node.publisher.node_table import NodeTable
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import TaskBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.heartbeats import heartbeat_message

MODEL = "m"


class Prefer(random.Random):
    """Chooses the first node of `order` still a candidate, so a test knows who is tried first."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def choices(self, population, weights=None, *, cum_weights=None, k=1):  # type: ignore[override]
        return [next((n for a in self.order for n in population if n.address == a), population[0])]

    def choice(self, seq):  # type: ignore[override]
        return self.choices(seq)[0]


class GossipNode:
    """A peer that takes tasks picked for it on gossip and, if `answers`, publishes `text` as their result on
    gossip, `delay` s later."""

    def __init__(self, answers: bool, text: str = "from the node that stayed", delay: float = 0.0) -> None:
        self.identity = Identity.generate()
        self.answers = answers
        self.text, self.delay = text, delay
        self.host = P2PHost(self.identity.secret, ["/ip4/127.0.0.1/tcp/0"])
        self.took = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.host.start()
        tasks = await self.host.subscribe(TASK_TOPIC)
        for topic in (RESULTS_TOPIC, HEARTBEAT_TOPIC):
            await self.host.subscribe(topic)
        self._reader = asyncio.create_task(self._read(tasks))

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.host.stop()

    async def _read(self, tasks: asyncio.Queue[GossipMessage]) -> None:
        while True:
            body = decode(TASK_TOPIC, (await tasks.get()).data).body
            assert isinstance(body, TaskBody)
            if self.identity.address not in (body.picked_nodes or []):
                continue
            self.took.set()
            if self.answers:
                if self.delay:
                    await asyncio.sleep(self.delay)
                now = time.time_ns()
                output = Output(self.text, body.public_key, 1, 1)
                result = result_body(
                    body.task_id, MODEL, output, received_at_ns=now, started_at_ns=now, ended_at_ns=now
                )
                await self.host.publish(RESULTS_TOPIC, seal(self.identity, RESULTS_TOPIC, encode_body(result)))

    async def heartbeat(self) -> None:
        if (await self.host.mesh_sizes()).get(HEARTBEAT_TOPIC):
            await self.host.publish(HEARTBEAT_TOPIC, heartbeat_message(self.identity, [MODEL], free=1))


async def started_client(*nodes: GossipNode, peers: list[str] | None = None, **options: Any) -> Client:
    """A started gossip Client that tries `nodes` in their order, its peers theirs (or `peers`), once it has
    seen each one's heartbeat; closed again if it never does."""
    table = NodeTable(rng=Prefer([node.identity.address for node in nodes]))
    peers = peers or [node.host.listen_addrs[0] for node in nodes]
    client = Client(peers=peers, delivery="gossip", node_table=table, **options)
    await client.start()
    for _ in range(100):
        if len(client.nodes.live()) == len(nodes):
            return client
        for node in nodes:
            await node.heartbeat()
        await asyncio.sleep(0.2)
    await client.close()
    raise AssertionError("the client never saw both heartbeats")


async def client_behind_a_relay(relay: GossipNode, busy: GossipNode, other: GossipNode, **options: Any) -> Client:
    """Starts the three nodes, `busy` over its high water (1 peer: the relay it dials, plus the publisher's
    inbound connection: trimmed after a 1 s grace), and `other` connected to `relay` too; then a started gossip
    Client (see `started_client`) whose one peer is `relay` and that tries `busy` first."""
    service = busy.host._service
    service._options = service._options.model_copy(
        update={"connection_budget": ConnectionBudget(high_water=1, low_water=0, grace_s=1.0, check_interval_s=0.2)}
    )
    for node in (relay, busy, other):
        await node.start()
    await busy.host.connect(relay.host.listen_addrs[0])  # outbound at the busy node: never trimmed
    await other.host.connect(relay.host.listen_addrs[0])
    return await started_client(busy, other, peers=[relay.host.listen_addrs[0]], **options)
