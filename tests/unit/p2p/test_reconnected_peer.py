"""A peer still connected stays a gossip peer when our stream to it fails: a publisher restarted with its
key reconnects, and a write on its old connection can fail after the new one is up. py-libp2p forgot the
subscriptions the peer had sent on its own, live stream, and never meshed it again."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from libp2p.peer.id import ID

from node.p2p.errors import NoMeshPeersError
from node.p2p.host import P2PHost
from node.p2p.pubsub import StreamPeerAwarePubsub
from tests.support.p2p_hosts import TOPIC, HostFactory, receive, wait_for_mesh


def pubsub_of(host: P2PHost) -> StreamPeerAwarePubsub:
    return host._service.gossip.pubsub  # type: ignore[union-attr]


async def reconnected(make_host: HostFactory) -> tuple[P2PHost, P2PHost, Any]:
    """A node meshed with a publisher that stopped and came back with its key; the publisher's queue."""
    node = await make_host()
    await node.subscribe(TOPIC)
    key = secrets.token_bytes(32)
    before = await make_host(key)
    await before.subscribe(TOPIC)
    await before.connect(f"{node.listen_addrs[0]}/p2p/{node.peer_id}")
    await wait_for_mesh(node, TOPIC, 1)
    await before.stop()
    after = await make_host(key)  # the same peer id
    results = await after.subscribe(TOPIC)
    await after.connect(f"{node.listen_addrs[0]}/p2p/{node.peer_id}")
    await wait_for_mesh(node, TOPIC, 1)
    return node, after, results


async def delivered(results: Any, wanted: bytes) -> list[bytes]:
    """What the publisher receives up to `wanted` (the new stream replays recent messages first)."""
    got = [(await receive(results)).data]
    while got[-1] != wanted and len(got) < 4:
        got.append((await receive(results)).data)
    return got


async def test_a_reconnected_publisher_is_meshed_again_after_a_write_to_it_fails(make_host: HostFactory) -> None:
    node, publisher, results = await reconnected(make_host)
    pubsub, peer = pubsub_of(node), ID.from_base58(publisher.peer_id)

    async def write_on_a_broken_stream() -> None:
        await pubsub.peers[peer].reset()  # as a connection that died under it
        await pubsub.publish(TOPIC, b"lost")  # py-libp2p's sending loop: the write fails, the peer is "dead"

    await node._call(write_on_a_broken_stream)

    # Before: its subscription was forgotten for good (no mesh peer 30 s later, every publish refused). The mesh
    # can still show the peer for a moment before the failed write's handling drops it and gossip meshes it again
    # (the next heartbeat): a publish is tried until it goes, for 10 s at most.
    await wait_for_mesh(node, TOPIC, 1)
    for _ in range(200):
        try:
            await node.publish(TOPIC, b"a result", require_mesh=True)
            break
        except NoMeshPeersError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the reconnected publisher was never meshed again")
    assert (await delivered(results, b"a result"))[-1] == b"a result"
