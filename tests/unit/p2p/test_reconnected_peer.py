"""A peer that reconnects with its key (a gateway restarted) stays a gossip peer when a write on its
old connection fails after the new one is up: the subscriptions it sent on its live stream are kept."""

from __future__ import annotations

import secrets

from libp2p.peer.id import ID

from node.p2p.host import P2PHost
from tests.support.p2p_hosts import TOPIC, HostFactory, receive, wait_for_mesh


async def a_write_to_it_failed(node: P2PHost, peer: P2PHost) -> None:
    """What py-libp2p's per-peer sending loop does when a write fails: `_handle_dead_peer`, with the peer
    still connected (here on its new connection), on the host's Trio thread."""
    pubsub = node._service.gossip.pubsub  # type: ignore[union-attr]

    async def dead() -> None:
        pubsub._handle_dead_peer(ID.from_base58(peer.peer_id))

    await node._call(dead)


async def test_a_restarted_publisher_stays_in_the_mesh_after_its_old_connection_fails(make_host: HostFactory) -> None:
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

    await a_write_to_it_failed(node, after)

    # Before: the node forgot the subscription for good (no mesh peer 30 s later, every publish refused).
    await wait_for_mesh(node, TOPIC, 1)
    await node.publish(TOPIC, b"a result", require_mesh=True)
    assert (await receive(results)).data == b"a result"
