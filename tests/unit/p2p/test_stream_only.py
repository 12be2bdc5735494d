"""The peers a publisher dialled only for streams are forgotten once gone, and there are never too many."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.id import ID

from node.p2p.host import P2PError, P2PHost
from node.p2p.stream_only import DIAL_GRACE_S, StreamOnlyPeers
from tests.support.p2p_hosts import WAIT_S, HostFactory, wait_until


def stream_only_of(host: P2PHost) -> StreamOnlyPeers:
    return host._service.stream_only


def peer_id(host: P2PHost) -> ID:
    return ID.from_base58(host.peer_id)


async def test_peers_dialled_for_streams_are_forgotten_when_they_disconnect(make_host: HostFactory) -> None:
    """Many nodes dialled (each a new peer id, as anyone can sign heartbeats under), then all gone:
    none is left behind."""
    received: asyncio.Queue[bytes] = asyncio.Queue()
    publisher = await make_host(gossip_with_stream_peers=False)
    nodes = [await make_host(on_inbound_stream=lambda stream, first: received.put_nowait(first)) for _ in range(4)]
    streams = [await publisher.open_stream(node.listen_addrs, b"a task") for node in nodes]
    for _ in nodes:
        assert await asyncio.wait_for(received.get(), WAIT_S) == b"a task"
    held = stream_only_of(publisher)
    assert all(peer_id(node) in held for node in nodes) and len(held) == len(nodes)
    for stream in streams:
        await stream.close()
    for node in nodes:
        await node.stop()

    async def emptied() -> bool:
        return len(held) == 0

    await wait_until(emptied, "the publisher to forget the nodes that disconnected")


async def test_a_peer_whose_dial_failed_is_not_kept(make_host: HostFactory) -> None:
    publisher = await make_host(gossip_with_stream_peers=False)
    gone = await make_host()
    addrs = gone.listen_addrs
    await gone.stop()
    with pytest.raises(P2PError):
        await publisher.open_stream(addrs, b"a task")
    assert len(stream_only_of(publisher)) == 0


async def test_a_node_whose_peers_dial_it_keeps_no_stream_only_set(make_host: HostFactory) -> None:
    """Inbound connections (a node's side) never add to it: only a publisher's own dials do."""
    node = await make_host()
    for _ in range(3):
        other = await make_host(gossip_with_stream_peers=False)
        await other.connect(node.listen_addrs[0])
    assert len(stream_only_of(node)) == 0


def new_peer() -> ID:
    return ID.from_pubkey(create_new_key_pair(secrets.token_bytes(32)).public_key)


def test_the_set_is_bounded_and_makes_room_from_peers_long_disconnected() -> None:
    now = [0.0]
    peers = StreamOnlyPeers(limit=3, clock=lambda: now[0])
    first = [new_peer() for _ in range(3)]
    for peer in first:
        assert peers.add(peer, connected=lambda _: True)
    extra = new_peer()
    assert not peers.add(extra, connected=lambda _: True)  # full of connected peers: refused
    assert extra not in peers and len(peers) == 3
    assert not peers.add(extra, connected=lambda _: False)  # not connected, but dialled too recently to drop
    now[0] = DIAL_GRACE_S + 1
    assert peers.add(extra, connected=lambda peer: peer == first[0])
    assert first[0] in peers and extra in peers and len(peers) == 2
    assert peers.prune(connected=lambda _: True) == 0
