"""A publisher keeps hearing heartbeats when its gossip peers die or stop passing them on
(GossipPeerKeeper), with real libp2p hosts on loopback: a relay peer the Client dials, and
nodes that take tasks on streams and heartbeat through the relay.

Liveness is untouched: the Client still accepts a heartbeat only by its signed timestamp;
what changes is whom it gossips with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.client import Client, Task
from node.publisher.gossip_peers import MAX_DIALLED, GossipPeerKeeper, GossipPeerSettings
from node.publisher.node_table import NodeTable
from node.wire.identity import Identity
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.streaming_peer import StreamingPeer

TOPICS = (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)
FAST = {"check_interval": 0.2, "initial_backoff": 0.5, "max_backoff": 2.0, "dial_timeout": 3.0}


class Relay:
    """A plain gossip peer on all three topics; `muted` makes it drop heartbeats (not relayed)."""

    def __init__(self) -> None:
        self.muted = False
        self.host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])

    async def start(self) -> None:
        await self.host.start()
        for topic in TOPICS:
            await self.host.relay(topic, lambda topic, _data: not (self.muted and topic == HEARTBEAT_TOPIC))


async def heartbeat_forever(node: StreamingPeer, every: float = 0.3) -> None:
    while True:
        with contextlib.suppress(Exception):  # no mesh yet: the next one goes out
            await node.host.publish(HEARTBEAT_TOPIC, node.heartbeat())
        await asyncio.sleep(every)


@asynccontextmanager
async def network(nodes: int) -> AsyncIterator[tuple[Relay, list[StreamingPeer]]]:
    """A relay and `nodes` stream-serving nodes, each connected to the relay and heartbeating."""
    relay = Relay()
    await relay.start()
    peers = [StreamingPeer([], f"from node {i}") for i in range(nodes)]
    beating: list[asyncio.Task[None]] = []
    try:
        for peer in peers:
            await peer.host.start()
            for topic in TOPICS:
                await peer.host.subscribe(topic)
            await peer.host.connect(relay.host.listen_addrs[0])
            beating.append(asyncio.create_task(heartbeat_forever(peer)))
        yield relay, peers
    finally:
        for task in beating:
            task.cancel()
        await asyncio.gather(*beating, return_exceptions=True)
        for peer in peers:
            await peer.host.stop()
        await relay.host.stop()


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        met = condition()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        assert loop.time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.1)


def heard_since(client: Client, node: StreamingPeer, since: float) -> bool:
    known = client.nodes.get(node.identity.address)
    return known is not None and known.last_seen > since


async def test_below_min_peers_it_gossips_with_nodes_its_heartbeats_named() -> None:
    async with network(2) as (relay, nodes):
        settings = GossipPeerSettings(min_peers=3, **FAST)
        async with Client(peers=[relay.host.listen_addrs[0]], gossip_peers=settings) as client:
            assert client._host is not None
            host = client._host
            wanted = {relay.host.peer_id, *(n.host.peer_id for n in nodes)}

            async def all_gossip() -> bool:
                return set(await host.gossip_peers()) == wanted

            await until(all_gossip, what="the client gossips with the relay and both nodes")
            # the relay dies: both nodes still reach the client, each as its own gossip peer
            await relay.host.stop()
            since = time.time()
            await until(
                lambda: all(heard_since(client, n, since) for n in nodes), what="heartbeats after the relay died"
            )


async def test_when_its_only_gossip_peer_dies_it_redials_a_node_it_heard_of() -> None:
    async with network(1) as (relay, (node,)):
        settings = GossipPeerSettings(min_peers=1, **FAST)
        async with Client(peers=[relay.host.listen_addrs[0]], gossip_peers=settings) as client:
            await until(lambda: bool(client.nodes.live()), what="the node's heartbeat through the relay")
            assert client.gossip_keeper is not None and client.gossip_keeper.dialled == []  # one peer is enough
            await relay.host.stop()
            since = time.time()
            await until(lambda: heard_since(client, node, since), what="a heartbeat after the relay died")
            keeper = client.gossip_keeper
            await until(lambda: bool(keeper.dialled), what="the dial to return")  # its heartbeat may come first
            assert keeper.dialled == [node.host.peer_id]
            result = await client.execute(Task(workflow={}, models=["m"]), timeout=20)
            assert result.text == "from node 0"


async def test_a_quiet_view_promotes_a_node_it_only_sent_tasks_to() -> None:
    # The relay stays up but stops passing heartbeats on (a mesh that pruned the publisher, a
    # frozen peer). The node was dialled only for a task stream: no gossip peer until promoted.
    async with network(1) as (relay, (node,)):
        settings = GossipPeerSettings(min_peers=1, quiet_after=1.0, **FAST)
        async with Client(peers=[relay.host.listen_addrs[0]], gossip_peers=settings) as client:
            assert client._host is not None
            host = client._host
            await until(lambda: bool(client.nodes.live()), what="the node's heartbeat through the relay")
            await client.execute(Task(workflow={}, models=["m"]), timeout=20)  # a stream to the node
            assert node.host.peer_id in await host.peers()
            assert node.host.peer_id not in await host.gossip_peers()
            relay.muted = True
            muted = time.time()
            await asyncio.sleep(0.5)  # heartbeats already on their way may still land
            await until(lambda: heard_since(client, node, muted + 0.5), what="a heartbeat once the view went quiet")
            keeper = client.gossip_keeper
            assert keeper is not None
            await until(lambda: bool(keeper.dialled), what="the dial to return")  # its heartbeat may come first
            assert keeper.dialled == [node.host.peer_id]
            assert set(await host.gossip_peers()) == {relay.host.peer_id, node.host.peer_id}


class AcceptsThenDrops:
    """A host whose every dial succeeds and whose gossip peers are always gone again (a peer that accepts
    a connection and drops it)."""

    peer_id = "self"

    async def gossip_peers(self) -> list[str]:
        return []

    async def connect(self, addr: str, timeout: float) -> str:
        return addr.rsplit("/", 1)[-1]


async def test_the_record_of_dials_keeps_the_latest_only() -> None:
    peer = Identity.generate().peer_id
    keeper = GossipPeerKeeper(
        AcceptsThenDrops(),  # type: ignore[arg-type]
        [f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"],
        NodeTable(),
        GossipPeerSettings(**FAST),
    )
    for _ in range(MAX_DIALLED + 50):
        assert await keeper.check() == [peer]  # dialled again at every check, for as long as the publisher runs
    assert keeper.dialled == [peer] * MAX_DIALLED


class RefusingHost:
    """A host whose every dial fails (a listener that is not a libp2p node), counting the dials by address."""

    peer_id = "self"

    def __init__(self, takes: float = 0.0) -> None:
        self.dials: list[str] = []
        self.takes = takes  # seconds a dial takes to fail

    async def gossip_peers(self) -> list[str]:
        return []

    async def connect(self, addr: str, timeout: float) -> str:
        self.dials.append(addr)
        if self.takes:
            await asyncio.sleep(self.takes)
        raise P2PError(f"could not dial {addr}: handshake failed")


async def test_many_peer_ids_naming_one_host_get_it_dialled_once_a_backoff() -> None:
    # A heartbeat's addrs must end in its signer's peer id, but the host and port may be anyone's: 50 free
    # keys naming one host made a publisher dial it ~9 times a second, each key backing off on its own.
    host = RefusingHost()
    victim = "/ip4/127.0.0.1/tcp/9"
    sybils = [f"{victim}/p2p/{Identity.generate().peer_id}" for _ in range(50)]
    keeper = GossipPeerKeeper(host, sybils, NodeTable(), GossipPeerSettings(**FAST))  # type: ignore[arg-type]
    for _ in range(10):
        assert await keeper.check() == []
    assert len(host.dials) == 1, len(host.dials)  # then its backoff; without it, 3 new peer ids a check


async def test_the_peer_ids_of_one_check_naming_one_host_get_it_dialled_once() -> None:
    # A real dial takes a while to fail: the 3 peers one check dials were all dialled there at once, before
    # the first failure backed the address off.
    host = RefusingHost(takes=0.05)
    victim = "/ip4/127.0.0.1/tcp/9"
    sybils = [f"{victim}/p2p/{Identity.generate().peer_id}" for _ in range(50)]
    keeper = GossipPeerKeeper(host, sybils, NodeTable(), GossipPeerSettings(**FAST))  # type: ignore[arg-type]
    assert await keeper.check() == []
    assert len(host.dials) == 1, len(host.dials)
