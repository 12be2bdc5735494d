"""What peers can make a host's peerstore hold (node/p2p/bounded_peerstore.py), at a host with default
settings: a thousand peer ids must not evict the host's own keys; a signed record of thousands of
addresses in a pubsub RPC, an identify push of thousands of protocol names, and the same in the identify
answer of a peer the host connected to, keep a peer's budget."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.identity.identify.identify import ID as IDENTIFY
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.identity.identify_push.identify_push import ID_PUSH
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, create_signed_peer_record
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import encode_varint_prefixed

from node.p2p.bounded_peerstore import MAX_ADDRS, MAX_PROTOCOLS, BoundedPeerStore
from node.p2p.host import P2PHost
from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive, wait_until
from tests.support.raw_pubsub import raw_host, raw_pubsub_peers, subscriptions


def peerstore(node: P2PHost) -> PeerStore:
    assert node._service._host is not None
    return node._service._host.get_peerstore()  # type: ignore[return-value]


def fake_addrs(count: int) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(f"/ip4/10.{i // 62_500}.{i // 250 % 250}.{i % 250}/tcp/4001") for i in range(count)]


async def test_a_thousand_peer_ids_do_not_evict_the_hosts_own_keys(make_host: HostFactory) -> None:
    node, _, _, honest_queue = await pair(make_host)

    async def meet_many() -> int:
        store = peerstore(node)
        for addr in fake_addrs(1_100):  # as identify does for each peer that connects
            store.add_addrs(ID.from_pubkey(create_new_key_pair(secrets.token_bytes(32)).public_key), [addr], 7200)
        return len(store.peer_data_map)

    assert await node._trio.call(meet_many) == 1_000
    await node.publish(TOPIC, b"ok from the node")  # signed with its own key, still held
    while (await receive(honest_queue)).data != b"ok from the node":
        pass


async def test_a_record_of_thousands_of_addresses_in_a_pubsub_rpc_is_not_kept(make_host: HostFactory) -> None:
    node, _, _, _ = await pair(make_host)
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        peer = peers[0]
        record = create_signed_peer_record(peer.peer_id, fake_addrs(20_000), peer.key_pair.private_key)
        await peers.send(
            0, rpc_pb2.RPC(senderRecord=record.marshal_envelope(), subscriptions=subscriptions([TOPIC]).subscriptions)
        )
        small = create_signed_peer_record(peer.peer_id, fake_addrs(MAX_ADDRS + 1), peer.key_pair.private_key)
        await peers.send(0, rpc_pb2.RPC(senderRecord=small.marshal_envelope()))  # past the count, under the bytes
        await peers.send(0, subscriptions([TOPIC + "-2"]))  # read after both

        async def read() -> bool:
            return peer.peer_id in node._service.gossip.pubsub.peer_topics.get(TOPIC + "-2", set())  # type: ignore[union-attr]

        async def addrs_kept() -> tuple[int, bool]:
            store = peerstore(node)
            record_kept = store.get_peer_record(peer.peer_id)
            return len(store.addrs(peer.peer_id)), record_kept is not None and len(
                record_kept.record().addrs
            ) > MAX_ADDRS

        await wait_until(read, "the RPCs after the records")
        kept, big_record = await node._trio.call(addrs_kept)
        assert kept <= MAX_ADDRS
        assert not big_record


async def test_an_identify_push_keeps_the_protocol_and_address_budget(make_host: HostFactory) -> None:
    node, _, _, _ = await pair(make_host)
    push = Identify(
        protocols=[f"/made-up/{i:08d}" for i in range(50_000)],  # 1 MiB with the addresses: what py-libp2p reads
        listen_addrs=[addr.to_bytes() for addr in fake_addrs(1_000)],
    )
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        peer = peers[0].peer_id

        async def protocols() -> list[Any]:
            store = peerstore(node)
            return [store.get_protocols(peer) if store.has_peer(peer) else [], store.addrs(peer)]

        async def identified() -> bool:  # the node's own identify of the peer, which a push after it replaces
            names, _ = await node._trio.call(protocols)
            return str(ID_PUSH) in names

        async def pushed() -> bool:
            names, _ = await node._trio.call(protocols)
            return any(name.startswith("/made-up/") for name in names)

        await wait_until(identified, "the node's identify of the peer")
        await peers.write_stream(0, str(ID_PUSH), encode_varint_prefixed(push.SerializeToString()))

        await wait_until(pushed, "the push read")
        names, addrs = await node._trio.call(protocols)
        assert len(names) <= MAX_PROTOCOLS
        assert len(addrs) <= MAX_ADDRS


async def test_an_identify_answer_the_host_asked_for_keeps_the_budget_too(make_host: HostFactory) -> None:
    node = await make_host()
    key_pair = create_new_key_pair(secrets.token_bytes(32))
    peer = ID.from_pubkey(key_pair.public_key)
    record = create_signed_peer_record(peer, fake_addrs(1_000), key_pair.private_key)
    answer = Identify(
        protocols=[f"/made-up/{i:08d}" for i in range(40_000)],
        listen_addrs=[addr.to_bytes() for addr in fake_addrs(1_000)],
        signedPeerRecord=record.marshal_envelope(),
    )
    async with identify_answering_host(key_pair, encode_varint_prefixed(answer.SerializeToString())) as addr:
        await node.connect(addr)  # the host identifies every peer it connects to

        async def kept() -> tuple[int, int, bool]:
            store = peerstore(node)
            protocols = store.get_protocols(peer) if store.has_peer(peer) else []
            return len(protocols), len(store.addrs(peer)), store.get_peer_record(peer) is not None

        async def identified() -> bool:
            return (await node._trio.call(kept))[0] > 0

        await wait_until(identified, "the node's identify of the peer")
        protocols, addrs, record_kept = await node._trio.call(kept)
        assert protocols <= MAX_PROTOCOLS
        assert addrs <= MAX_ADDRS
        assert not record_kept  # 1,000 addresses: refused


@asynccontextmanager
async def identify_answering_host(key_pair: KeyPair, answer: bytes) -> AsyncIterator[str]:
    """A libp2p host in a Trio thread of its own that answers every identify request with `answer`; yields its address."""
    host, listen = raw_host(key_pair)
    started, stop = threading.Event(), threading.Event()

    async def reply(stream: INetStream) -> None:
        await stream.write(answer)
        await stream.close()

    async def run() -> None:
        host.set_stream_handler(IDENTIFY, reply)
        async with host.run([listen]):
            started.set()
            await trio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=trio.run, args=(run,), name="identify-answering", daemon=True)
    thread.start()
    try:
        await asyncio.to_thread(started.wait, 30)
        yield str(host.get_addrs()[0])
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)


def test_a_peer_keeps_at_most_its_budget_however_it_is_told() -> None:
    store = BoundedPeerStore()
    peer = ID.from_pubkey(create_new_key_pair(secrets.token_bytes(32)).public_key)
    for start in range(0, 100, 10):
        store.add_addrs(peer, fake_addrs(100)[start : start + 10], 7200)
    assert store.addrs(peer) == fake_addrs(MAX_ADDRS)  # the first kept, repeats not counted
    store.add_protocols(peer, ["/a"] * 100 + [f"/p/{i}" for i in range(100)] + ["/" + "x" * 1_000])
    assert store.get_protocols(peer) == ["/a"] + [f"/p/{i}" for i in range(MAX_PROTOCOLS - 1)]
    store.set_protocols(peer, [f"/q/{i}" for i in range(100)])
    assert store.get_protocols(peer) == [f"/q/{i}" for i in range(MAX_PROTOCOLS)]


def test_peers_known_only_by_their_key_are_evicted_past_the_peer_limit_too() -> None:
    # py-libp2p's eviction runs when addresses or protocols are noted, not keys: peer ids known by their key
    # alone stayed for good past max_peers.
    store = BoundedPeerStore()
    own = create_new_key_pair(secrets.token_bytes(32))
    own_id = ID.from_pubkey(own.public_key)
    store.add_key_pair(own_id, own)
    for i in range(store.max_peers + 200):
        pair = create_new_key_pair((i + 1).to_bytes(32, "big"))
        peer = ID.from_pubkey(pair.public_key)
        store.add_pubkey(peer, pair.public_key)
    assert len(store.peer_data_map) <= store.max_peers
    assert store.privkey(own_id) == own.private_key
