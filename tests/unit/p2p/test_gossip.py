"""Gossip between real libp2p hosts on 127.0.0.1: delivery, meshes, relaying, duplicates, who gossips."""

from __future__ import annotations

import asyncio

import pytest

from node.p2p.errors import NoMeshPeersError
from node.p2p.handoff import GossipMessage
from node.p2p.seen_cache import WindowedSeenCache
from node.p2p.steady_addrs import SteadyAddrs
from node.wire.envelope import MAX_AGE_NS, MAX_SKEW_NS
from node.wire.topics import SEEN_WINDOW_S
from tests.support.p2p_hosts import (
    TOPIC,
    WAIT_S,
    HostFactory,
    line,
    link,
    pair,
    receive,
    wait_for_mesh,
    wait_for_mesh_to_empty,
    wait_until,
)


async def test_two_hosts_exchange_both_ways(make_host: HostFactory) -> None:
    a, b, qa, qb = await pair(make_host)
    assert await a.peers() == [b.peer_id]
    await a.publish(TOPIC, b"from a")
    assert await receive(qb) == GossipMessage(TOPIC, b"from a", a.peer_id)
    await b.publish(TOPIC, b"from b")
    assert await receive(qa) == GossipMessage(TOPIC, b"from b", b.peer_id)
    # Own messages are not delivered locally (a's own would have queued before b's).
    assert qa.empty() and qb.empty()


async def test_publish_that_requires_a_mesh_sends_nothing_without_one(make_host: HostFactory) -> None:
    alone = await make_host()
    await alone.subscribe(TOPIC)
    with pytest.raises(NoMeshPeersError, match=TOPIC):
        await alone.publish(TOPIC, b"into the void", require_mesh=True)
    await alone.publish(TOPIC, b"no check asked")  # without the flag it publishes (to nobody)
    a, b, _, qb = await pair(make_host)
    await a.publish(TOPIC, b"meshed", require_mesh=True)
    assert (await receive(qb)).data == b"meshed"
    await b.stop()
    await wait_for_mesh_to_empty(a, TOPIC)
    with pytest.raises(NoMeshPeersError):
        await a.publish(TOPIC, b"after the peer left", require_mesh=True)


async def test_wait_for_mesh_says_whether_the_mesh_formed_in_time(make_host: HostFactory) -> None:
    alone = await make_host()
    await alone.subscribe(TOPIC)
    assert await alone.wait_for_mesh(TOPIC, 0.1) is False
    a, b, _, _ = await pair(make_host)
    assert await a.wait_for_mesh(TOPIC, 0.1) is True
    assert await a.wait_for_mesh(TOPIC, 0.1, peers=2) is False  # one peer only
    assert await a.wait_for_mesh("no-such-topic", 0.1) is False


async def test_stopped_host_leaves_its_peers_mesh(make_host: HostFactory) -> None:
    # Regression: stop() used to end the Trio thread with its sockets still open,
    # so peers kept a stopped host in their mesh and published into the void.
    a, b, _, _ = await pair(make_host)
    await a.stop()

    async def gone() -> bool:
        return not await b.peers() and (await b.mesh_sizes()).get(TOPIC, 0) == 0

    await wait_until(gone, "b to notice that a stopped")


async def test_message_is_relayed_along_a_line(make_host: HostFactory) -> None:
    a, b, c = await make_host(), await make_host(), await make_host()
    qc = await c.subscribe(TOPIC)
    await a.subscribe(TOPIC)
    await b.subscribe(TOPIC)
    await line(a, b, c)
    assert a.peer_id not in await c.peers()
    await a.publish(TOPIC, b"via b")
    assert await receive(qc) == GossipMessage(TOPIC, b"via b", a.peer_id)


async def test_burst_of_300_messages_all_arrive(make_host: HostFactory) -> None:
    a, _, _, qb = await pair(make_host)
    sent = [f"message {i:03d} ".encode() + b"." * 200 for i in range(300)]
    for data in sent:
        await a.publish(TOPIC, data)
    received = [(await receive(qb)).data for _ in sent]
    assert sorted(received) == sorted(sent)


async def test_same_data_twice_is_delivered_once(make_host: HostFactory) -> None:
    a, b, qa, qb = await pair(make_host)
    await a.publish(TOPIC, b"same envelope")
    await a.publish(TOPIC, b"same envelope")
    await a.publish(TOPIC, b"marker")
    assert (await receive(qb)).data == b"same envelope"
    assert (await receive(qb)).data == b"marker"
    await b.publish(TOPIC, b"same envelope")  # b has seen it: not sent back to a
    await b.publish(TOPIC, b"marker from b")
    assert (await receive(qa)).data == b"marker from b"
    assert qa.empty() and qb.empty()


async def test_a_message_is_remembered_as_seen_for_as_long_as_its_envelope_is_accepted(make_host: HostFactory) -> None:
    """A copy delayed longer than the seen window (a starved peer's socket buffers) would pass as new
    and be flooded again: under load that feedback took heartbeat delays from seconds to minutes."""
    host = await make_host()
    seen = host._service.gossip.pubsub.seen_messages  # type: ignore[union-attr]
    assert isinstance(seen, WindowedSeenCache)  # no sweeping thread walking every id under the GIL
    assert seen.ttl == SEEN_WINDOW_S
    assert SEEN_WINDOW_S * 1_000_000_000 > MAX_AGE_NS + MAX_SKEW_NS


async def test_a_peer_dialled_only_for_streams_is_no_gossip_peer_of_a_publisher(make_host: HostFactory) -> None:
    """A publisher dials every node it sends a task to; as a gossip peer of each it would sit in every
    node's mesh and relay the whole network's traffic. With gossip_with_stream_peers off it does not:
    the stream works, gossip goes through the peers it `connect`ed to."""
    inbound: asyncio.Queue[object] = asyncio.Queue()
    node = await make_host(on_inbound_stream=lambda stream, first: inbound.put_nowait(first))
    relay = await make_host()
    publisher = await make_host(gossip_with_stream_peers=False)
    for host in (node, relay, publisher):
        await host.subscribe(TOPIC)
    await link(node, relay)
    await publisher.connect(relay.listen_addrs[0])
    await wait_for_mesh(publisher, TOPIC, 1)
    stream = await publisher.open_stream(node.listen_addrs, b"a task")
    assert await asyncio.wait_for(inbound.get(), WAIT_S) == b"a task"
    await asyncio.sleep(3.5)  # gossipsub heartbeats (1 s) that would graft it
    assert node.peer_id in await publisher.peers()  # connected for the stream...
    assert (await publisher.mesh_sizes()).get(TOPIC) == 1  # ...but it gossips only with the relay
    assert (await node.mesh_sizes()).get(TOPIC) == 1
    await stream.close()


async def test_signed_peer_records_still_travel_with_rpcs_while_the_addresses_are_kept_steady(
    make_host: HostFactory,
) -> None:
    a, b, _, qb = await pair(make_host)
    a_host = a._service._host  # type: ignore[attr-defined]
    assert isinstance(a_host.get_addrs, SteadyAddrs)
    assert [str(addr) for addr in a_host.get_addrs()] == a.listen_addrs
    await a.publish(TOPIC, b"with a record")
    assert (await receive(qb)).data == b"with a record"
    # b checked the record a sent (its signature and signer) and keeps a's certified addresses.
    envelope = b._service._host.get_peerstore().get_peer_record(a_host.get_id())  # type: ignore[attr-defined]
    assert envelope is not None
    assert [str(addr) for addr in envelope.record().addrs] == a.listen_addrs
