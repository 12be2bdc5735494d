"""Hostile yamux frames at a host with default settings (node/p2p/bounded_yamux.py): a peer that opens
thousands of streams on one connection, and one that sends past a stream's receive window, whether the
stream is open, reset or new. The host holds at most its caps for that peer, and an honest peer's message
still arrives."""

from __future__ import annotations

import math
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any, cast

import pytest
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.stream_muxer.yamux.yamux import (
    DEFAULT_WINDOW_SIZE,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
)

from node.p2p.bounded_yamux import CLOSED_STREAM_FLOOD, CLOSED_WINDOW, MuxerLimits
from node.p2p.host import P2PHost
from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive, wait_until
from tests.support.raw_pubsub import RawPeers, raw_pubsub_peers

CAP = MuxerLimits().max_inbound_streams
PINGS = MuxerLimits().pings_per_second
FIRST_STREAM = 10_001  # odd: the raw peer dialled, so its streams are odd; far above the ones py-libp2p opened


def syn(stream_id: int, data: bytes = b"") -> bytes:
    kind = TYPE_DATA if data else TYPE_WINDOW_UPDATE
    return struct.pack(YAMUX_HEADER_FORMAT, 0, kind, FLAG_SYN, stream_id, len(data)) + data


def data_frame(stream_id: int, data: bytes) -> bytes:
    return struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, stream_id, len(data)) + data


@dataclass(frozen=True)
class MuxerView:
    """The node's view of its connections with one peer."""

    connections: int
    peer_streams: int  # streams the peer opened (odd ids: it dialled), still held
    buffered: int  # bytes received and not read, over all streams


async def muxer_state(node: P2PHost, peer: ID) -> MuxerView:
    async def read() -> MuxerView:
        assert node._service._host is not None
        conns = node._service._host.get_network().connections.get(peer, [])
        muxers = [cast(Yamux, conn.muxed_conn) for conn in conns]
        return MuxerView(
            connections=len(muxers),
            peer_streams=sum(1 for m in muxers for sid in m.streams if sid % 2 == 1),
            buffered=sum(len(b) for m in muxers for b in m.stream_buffers.values()),
        )

    return await node._trio.call(read)


async def honest_message_arrives(honest: P2PHost, node_queue: Any) -> None:
    await honest.publish(TOPIC, b"ok honest")
    while (await receive(node_queue)).data != b"ok honest":
        pass


async def test_streams_past_the_connections_cap_are_reset_then_the_flooding_peer_is_cut_off(
    make_host: HostFactory,
) -> None:
    node, honest, node_queue, _ = await pair(make_host)
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        peer = peers[0].peer_id
        await peers_own_streams_settled(node, peers)  # its pubsub stream, held from here on
        await peers.send_frames(0, [syn(FIRST_STREAM + 2 * i) for i in range(CAP - 1)])
        await wait_until(lambda: streams_judged(node, peer, CAP), "the streams up to the cap taken or reset")
        assert ((await muxer_state(node, peer)).peer_streams, node.refused_streams) == (CAP, 0)
        await peers.send_frames(0, [syn(FIRST_STREAM + 2 * (CAP + i)) for i in range(CAP)])
        await wait_until(lambda: streams_judged(node, peer, 2 * CAP), "the streams past the cap taken or reset")
        assert node.refused_streams == CAP
        state = await muxer_state(node, peer)
        assert state.connections == 1  # a reset the peer heeds is not a reason to drop it
        assert state.peer_streams == CAP
        await send_until_closed(peers, [syn(FIRST_STREAM + 2 * (2 * CAP + i)) for i in range(3_000)])
        await wait_until(lambda: _closed(node, peer), "the connection of a peer flooding streams closed")
        assert node.refused_streams == CAP + 1  # the first past its resets ends the connection
        assert node.refused_connections[CLOSED_STREAM_FLOOD] == 1
        await honest_message_arrives(honest, node_queue)


async def test_streams_opened_with_the_hosts_own_ids_are_refused_too(make_host: HostFactory) -> None:
    node, honest, node_queue, _ = await pair(make_host)
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        peer = peers[0].peer_id
        own_ids = [syn(FIRST_STREAM + 1 + 2 * i) for i in range(CAP - 1)]  # even: the ids the node opens streams with
        await peers.send_frames(0, own_ids + [syn(0)])

        async def all_judged() -> bool:
            return node.refused_streams + len(await streams_with_own_ids(node, peer)) >= CAP

        await wait_until(all_judged, "the streams with the node's ids taken or reset")
        assert not await streams_with_own_ids(node, peer)
        assert node.refused_streams == CAP
        state = await muxer_state(node, peer)
        assert state.connections == 1
        await honest_message_arrives(honest, node_queue)


async def streams_with_own_ids(node: P2PHost, peer: ID) -> list[int]:
    return [sid for sid in await stream_ids(node, peer) if sid == 0 or sid >= FIRST_STREAM]


async def stream_ids(node: P2PHost, peer: ID) -> list[int]:
    async def read() -> list[int]:
        assert node._service._host is not None
        conns = node._service._host.get_network().connections.get(peer, [])
        return [sid for conn in conns for sid in cast(Yamux, conn.muxed_conn).streams]

    return await node._trio.call(read)


async def peers_own_streams_settled(node: P2PHost, peers: RawPeers) -> None:
    """Wait until the raw peer holds only its pubsub stream at the node. py-libp2p's identify of the node opens a
    stream of the peer's too, in the background: a count taken while it was open, or that it opened into, was off
    by one, and the test waited for a count never reached (the moment is load's to decide)."""
    await wait_until(lambda: peers.identify_over(0), "the peer's identify of the node over")

    async def pubsub_stream_only() -> bool:
        return (await muxer_state(node, peers[0].peer_id)).peer_streams == 1

    await wait_until(pubsub_stream_only, "its identify stream closed")


async def streams_judged(node: P2PHost, peer: ID, count: int) -> bool:
    """Whether the node took or reset at least `count` streams of the peer (its pubsub stream is one): each SYN sent
    was acted on, however it was, and the caller's asserts say whether rightly. Not a count to reach exactly: a
    node that took one too many reaches it too, and fails at once, not after a wait."""
    return (await muxer_state(node, peer)).peer_streams + node.refused_streams >= count


@pytest.mark.parametrize(
    "how",
    [
        "open stream, never negotiated",  # the node waits for its protocol name: nobody reads the data
        "stream reset by the node",  # a failed negotiation: py-libp2p kept its bytes, and all sent after
        "new stream, first frame past the window",
    ],
)
async def test_data_past_a_streams_window_is_never_held(make_host: HostFactory, how: str) -> None:
    node, honest, node_queue, _ = await pair(make_host)
    megabyte = b"\xee" * (1 << 20)
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        peer = peers[0].peer_id
        if how == "new stream, first frame past the window":
            frames = [syn(FIRST_STREAM, b"\xee" * (DEFAULT_WINDOW_SIZE + 1))]
        elif how == "stream reset by the node":
            frames = [syn(FIRST_STREAM, b"\xff" * 65_536)]  # not multistream: the negotiation fails at once
        else:
            frames = [syn(FIRST_STREAM)]
        await send_until_closed(peers, frames)
        if how == "stream reset by the node":

            async def reset() -> bool:
                return (await muxer_state(node, peer)).peer_streams == 1  # its pubsub stream only

            await wait_until(reset, "the failed negotiation's reset")
        await send_until_closed(peers, [data_frame(FIRST_STREAM, megabyte) for _ in range(24)])
        state = await muxer_state(node, peer)
        assert state.buffered < DEFAULT_WINDOW_SIZE + (1 << 20)
        if how != "stream reset by the node":  # the others overran a window the node keeps: it hung up
            await wait_until(lambda: _closed(node, peer), "the connection closed")
            assert node.refused_connections[CLOSED_WINDOW] == 1
        await honest_message_arrives(honest, node_queue)


async def send_until_closed(peers: RawPeers, frames: list[bytes]) -> None:
    try:
        await peers.send_frames(0, frames)
    except ConnectionClosedError:
        pass  # the node hung up while we wrote


async def _closed(node: P2PHost, peer: ID) -> bool:
    return (await muxer_state(node, peer)).connections == 0


async def test_pings_past_the_budget_are_read_and_not_answered(make_host: HostFactory) -> None:
    node, honest, node_queue, _ = await pair(make_host)
    refusals = node._service.muxer_refusals
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        started = time.monotonic()
        await peers.send_frames(
            0, [struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, i) for i in range(2_000)]
        )

        async def all_read() -> bool:
            seconds = math.ceil(time.monotonic() - started) + 1
            return refusals.pings >= 2_000 - PINGS * seconds  # at most the budget answered in each second

        await wait_until(all_read, "the pings past the budget read")
        await honest_message_arrives(honest, node_queue)


async def test_libp2p_ping_is_not_served(make_host: HostFactory) -> None:
    """Each 32 bytes on a ping stream cost ~260 us of the P2P thread to echo; nothing here pings, so none is served."""
    node, honest, node_queue, _ = await pair(make_host)
    async with raw_pubsub_peers(node.listen_addrs[0]) as peers:
        with pytest.raises(MultiselectClientError):
            await peers.write_stream(0, str(PING_PROTOCOL_ID), secrets.token_bytes(65_536))
        await honest_message_arrives(honest, node_queue)
