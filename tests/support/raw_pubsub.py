"""Hostile gossipsub peers for tests: bare py-libp2p hosts that write raw pubsub RPCs (rpc_pb2) to a node.

`raw_pubsub_peers(addr, count)` starts `count` fresh identities in one Trio thread (TCP, Noise,
Yamux, as a node's peers speak it), dials `addr` from each and opens a `/meshsub/1.1.0` stream
to the node; `RawPeers.send(i, rpc)` writes one varint-prefixed RPC on peer i's stream as it is,
unchecked; `RawPeers.send_frames(i, frames)` writes raw yamux frames on its connection, and
`RawPeers.write_stream(i, protocol, data)` writes data on a new stream of another protocol. `RawPeers.identify_over(i)`: whether
peer i's own identify of the node (py-libp2p's, in the background) is over, so its streams are settled. Each peer serves the node's own pubsub stream and counts what arrives on it
(`received_rpcs`, `received_messages`, `received_bytes`; or reads only a `Trickle` of it), so a test can see what the node
answered. `signed_message` makes a message signed as py-libp2p signs it, by peer i's key.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

DIAL_TIMEOUT_S = 30.0
READ_LIMIT = 8 << 20
MESSAGE_IDS_KEPT = 64


@dataclass
class RawPeer:
    """One hostile identity: its key, and what the node sent it on pubsub."""

    key_pair: KeyPair
    peer_id: ID
    stream: INetStream | None = None
    host: IHost | None = None  # its py-libp2p host (a BasicHost)
    received_rpcs: int = 0
    received_messages: int = 0
    received_bytes: int = 0
    control: list[rpc_pb2.ControlMessage] = field(default_factory=list)
    message_ids: list[bytes] = field(default_factory=list)  # from + seqno: the id py-libp2p's message cache keys by


@dataclass
class RawPeers:
    """The hostile peers (read from the event loop; written by their Trio thread)."""

    peers: list[RawPeer]
    failed: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    token: trio.lowlevel.TrioToken | None = None
    stop: trio.Event | None = None

    def __getitem__(self, index: int) -> RawPeer:
        return self.peers[index]

    async def send(self, index: int, rpc: rpc_pb2.RPC | bytes) -> None:
        """Write one RPC (or raw bytes, prefixed as they are) on peer `index`'s pubsub stream."""
        data = rpc if isinstance(rpc, bytes) else rpc.SerializeToString()
        stream = self.peers[index].stream
        assert stream is not None and self.token is not None, f"peer {index} has no pubsub stream"
        await asyncio.to_thread(trio.from_thread.run, stream.write, encode_varint_prefixed(data), trio_token=self.token)

    async def send_frames(self, index: int, frames: Sequence[bytes]) -> None:
        """Write raw yamux frames (header and body, unchecked) on peer `index`'s connection, one write each."""
        stream = self.peers[index].stream
        assert stream is not None and self.token is not None, f"peer {index} has no connection"
        muxer = stream.muxed_conn

        async def write_all() -> None:
            for frame in frames:
                await muxer._write_frame(frame)  # type: ignore[attr-defined]

        await asyncio.to_thread(trio.from_thread.run, write_all, trio_token=self.token)

    async def identify_over(self, index: int) -> bool:
        """Whether peer `index`'s own identify of the node is over: py-libp2p starts one in the background on each
        connection (a stream the peer opens, at a moment load decides), so a test that counts the peer's streams
        waits for it first."""
        peer = self.peers[index]
        assert peer.host is not None and peer.stream is not None and self.token is not None, (
            f"peer {index} not connected"
        )
        host, node = cast(BasicHost, peer.host), peer.stream.muxed_conn.peer_id
        return await asyncio.to_thread(
            trio.from_thread.run_sync,
            lambda: node not in host._identify_inflight,  # py-libp2p offers no public view of it
            trio_token=self.token,
        )

    async def write_stream(self, index: int, protocol: str, data: bytes) -> None:
        """Open a stream to the node on peer `index`'s connection, negotiated to `protocol`; write `data`; close it."""
        stream = self.peers[index].stream
        assert stream is not None and self.token is not None, f"peer {index} has no connection"
        muxer = stream.muxed_conn

        async def write() -> None:
            opened = await muxer.open_stream()
            await MultiselectClient().select_one_of([TProtocol(protocol)], MultiselectCommunicator(opened))
            await opened.write(data)
            await opened.close()

        await asyncio.to_thread(trio.from_thread.run, write, trio_token=self.token)

    def signed_message(
        self, index: int, topic: str, data: bytes, seqno: bytes | None = None, also: Sequence[str] = ()
    ) -> rpc_pb2.Message:
        """A message on `topic` (and the topics `also` names) from peer `index`, signed as py-libp2p signs it."""
        peer = self.peers[index]
        msg = rpc_pb2.Message(
            data=data, topicIDs=[topic, *also], from_id=peer.peer_id.to_bytes(), seqno=seqno or secrets.token_bytes(8)
        )
        msg.signature = peer.key_pair.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        return msg

    @property
    def received_bytes(self) -> int:
        return sum(peer.received_bytes for peer in self.peers)


async def _read_node_stream(peer: RawPeer, stream: INetStream) -> None:
    try:
        while True:
            data = await read_varint_prefixed_bytes_limited(stream, READ_LIMIT)
            rpc = rpc_pb2.RPC()
            rpc.ParseFromString(data)
            peer.received_rpcs += 1
            peer.received_bytes += len(data)
            peer.received_messages += len(rpc.publish)
            peer.message_ids.extend(msg.from_id + msg.seqno for msg in rpc.publish[:MESSAGE_IDS_KEPT])
            del peer.message_ids[:-MESSAGE_IDS_KEPT]
            if rpc.HasField("control"):
                peer.control.append(rpc.control)
    except Exception:  # noqa: BLE001 - the node closed or reset its stream: counting stops
        return


def raw_host(key_pair: KeyPair) -> tuple[IHost, multiaddr.Multiaddr]:
    """A bare py-libp2p host with `key_pair` (TCP on loopback, Noise, Yamux), as a node's peers speak it; not yet running."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[listen],
    )
    return host, listen


@dataclass(frozen=True)
class Trickle:
    """How a peer that reads a trickle of the node's stream reads it: `chunk` bytes every `every_s`."""

    chunk: int = 1024
    every_s: float = 2.0


async def _trickle(peer: RawPeer, stream: INetStream, trickle: Trickle) -> None:
    try:
        while True:
            peer.received_bytes += len(await stream.read(trickle.chunk))
            await trio.sleep(trickle.every_s)
    except Exception:  # noqa: BLE001 - the node closed or reset its stream: reading stops
        return


async def _run_peer(
    addr: str,
    peer: RawPeer,
    peers: RawPeers,
    opened: trio.MemorySendChannel[bool],
    serve_pubsub: bool,
    reads: bool | Trickle,
) -> None:
    host, listen = raw_host(peer.key_pair)
    peer.host = host

    async def serve(stream: INetStream) -> None:
        if isinstance(reads, Trickle):
            await _trickle(peer, stream, reads)
        elif reads:
            await _read_node_stream(peer, stream)
        else:
            await trio.sleep_forever()  # taken, never read: the node's writes stall once its window is spent

    if serve_pubsub:
        host.set_stream_handler(TProtocol(PROTOCOL_ID_V11), serve)
    async with host.run([listen]):
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                await host.connect(info)
                peer.stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL_ID_V11)])
            await opened.send(True)
        except Exception:  # noqa: BLE001 - counted as failed; the test decides what that means
            await opened.send(False)
        assert peers.stop is not None
        await peers.stop.wait()


async def _run(addr: str, peers: RawPeers, serve_pubsub: bool, reads: bool | Trickle) -> None:
    peers.token = trio.lowlevel.current_trio_token()
    peers.stop = trio.Event()
    send, receive = trio.open_memory_channel[bool](len(peers.peers))
    async with trio.open_nursery() as nursery:
        for peer in peers.peers:
            nursery.start_soon(_run_peer, addr, peer, peers, send, serve_pubsub, reads)
        for _ in peers.peers:
            if not await receive.receive():
                peers.failed += 1
        peers.ready.set()


def _new_peer() -> RawPeer:
    key_pair = create_new_key_pair(secrets.token_bytes(32))
    return RawPeer(key_pair, ID.from_pubkey(key_pair.public_key))


@asynccontextmanager
async def raw_pubsub_peers(
    addr: str, count: int = 1, serve_pubsub: bool = True, reads: bool | Trickle = True
) -> AsyncIterator[RawPeers]:
    """`count` hostile peers, each with a pubsub stream open to `addr` (a /p2p/ multiaddr), while the context is open.

    `serve_pubsub=False`: they refuse the node's own pubsub stream, so it never registers them as peers.
    `reads=False`: they take it and never read it; `reads=Trickle(...)`: they read a trickle of it (counted in
    `received_bytes` only)."""
    peers = RawPeers([_new_peer() for _ in range(count)])
    thread = threading.Thread(
        target=trio.run, args=(_run, addr, peers, serve_pubsub, reads), name="raw-pubsub", daemon=True
    )
    thread.start()
    try:
        await asyncio.to_thread(peers.ready.wait, DIAL_TIMEOUT_S + 10)
        yield peers
    finally:
        if peers.token is not None and peers.stop is not None:
            try:
                trio.from_thread.run_sync(peers.stop.set, trio_token=peers.token)
            except trio.RunFinishedError:
                pass
        await asyncio.to_thread(thread.join, 30.0)


def subscriptions(topics: Sequence[str], subscribe: bool = True) -> rpc_pb2.RPC:
    """An RPC announcing (or withdrawing) subscriptions to `topics`."""
    return rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=t) for t in topics])
