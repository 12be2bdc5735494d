"""The Trio side of the P2P layer: one libp2p host (TCP + Noise + Yamux), its gossip and its streams.

py-libp2p is Trio-only, so `P2PService.run` is meant to be the main function of
`trio.run` in a dedicated thread (node/p2p/host.py does that). Every method here runs
on that Trio thread; nothing here knows about asyncio. Each workaround for a measured py-libp2p behaviour
is commented where it is made (those of the host's start in libp2p_host.py, which makes the host). Gossip
(gossipsub, topics, paced publishing) is gossip.py's `Gossip`; the direct-delivery streams are streams.py's
`StreamTable`, opened (dialled) here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import structlog
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service
from pydantic import BaseModel, ConfigDict, Field

from node.p2p.bounded_yamux import MuxerLimits, MuxerRefusals
from node.p2p.connection_trim import ConnectionBudget, ConnectionTrimmer
from node.p2p.errors import (
    NoMeshPeersServiceError,
    P2PServiceError,
    StreamRefusedServiceError,
    StreamTimeoutServiceError,
    is_nursery_closed,
    root_cause,
)
from node.p2p.frames import FrameError, encode_frame
from node.p2p.gossip import MAX_INBOUND_RPC_BYTES, Gossip, MessageSink, TopicValidator
from node.p2p.inbound_gate import InboundGate, InboundLimits
from node.p2p.kept_peers import KeptPeers
from node.p2p.libp2p_host import bound_the_swarm, check_listening, lift_inbound_cap, listen_multiaddrs, new_libp2p_host
from node.p2p.peer_addrs import NameLookupError, looked_up, peer_info
from node.p2p.peer_gone import PeerGoneNotifee, PeerSink
from node.p2p.steady_addrs import keep_addrs_steady
from node.p2p.stream_only import StreamOnlyPeers, has_open_connection
from node.p2p.streams import FrameSink, InboundSink, StreamGoneError, StreamLimits, StreamTable
from node.wire.topics import DIRECT_PROTOCOL, MAX_MESSAGE_BYTES

__all__ = [
    "NoMeshPeersServiceError",
    "P2PService",
    "P2PServiceError",
    "ServiceOptions",
    "StreamTimeoutServiceError",
]

log = structlog.get_logger(__name__)

STOP_GRACE_S = 3.0  # after a stop request, teardown is cancelled outright after this long


class ServiceOptions(BaseModel):
    """Configuration of one libp2p host."""

    model_config = ConfigDict(frozen=True)

    secret: bytes = Field(min_length=32, max_length=32, description="secp256k1 secret of the node")
    listen_addrs: list[str] = Field(min_length=1)
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=0, le=MAX_INBOUND_RPC_BYTES - 4096)
    gossip_heartbeat_s: float = Field(default=1.0, gt=0)
    stream_limits: StreamLimits = StreamLimits()
    serve_streams: bool = False  # take direct-delivery streams (a node); publishers only open them
    # False (a publisher): a peer dialled only to open direct-delivery streams does not become a
    # gossip peer; gossip stays with the peers `connect` dialled and those that dialled us.
    gossip_with_stream_peers: bool = True
    connection_budget: ConnectionBudget = ConnectionBudget()
    inbound_limits: InboundLimits | None = None  # per remote host (a node); None: no per-host limit
    muxer_limits: MuxerLimits = MuxerLimits()  # per connection, inbound and dialled alike


class P2PService:
    """A libp2p host + gossipsub router, driven from inside one `trio.run`."""

    def __init__(
        self,
        options: ServiceOptions,
        on_message: MessageSink,
        on_inbound_stream: InboundSink | None = None,
        on_stream_frame: FrameSink | None = None,
        on_peer_gone: PeerSink | None = None,
        on_peer_back: PeerSink | None = None,
    ) -> None:
        """`on_peer_gone(peer id)`: called (on the Trio thread) when a peer's last connection closed;
        `on_peer_back(peer id)`: when a connection to a peer opened (it needs `on_peer_gone`)."""
        self._options = options
        self._on_message = on_message
        self._on_peer_gone = on_peer_gone
        self._on_peer_back = on_peer_back
        self.streams = StreamTable(
            options.stream_limits,
            on_inbound_stream or (lambda *_: None),
            on_stream_frame or (lambda *_: None),
        )
        self._key_pair = create_new_key_pair(options.secret)
        self._my_id = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._my_id.to_base58()
        self.listen_addrs: list[str] = []
        self._host: IHost | None = None
        self.gossip: Gossip | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._outer_scope: trio.CancelScope | None = None
        self.stream_only = StreamOnlyPeers()  # peers dialled only for streams (gossip_with_stream_peers off)
        self.inbound_gate = InboundGate(options.inbound_limits) if options.inbound_limits is not None else None
        self.muxer_refusals = MuxerRefusals()
        self.kept_peers = KeptPeers()  # held on the event loop (a publisher whose task runs here), read here
        self.trimmer: ConnectionTrimmer | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------

    async def run(self, on_ready: Callable[[], None]) -> None:
        """Listen, start gossipsub, call `on_ready()`, then serve until `request_stop()`."""
        self._stop_event = trio.Event()
        with trio.CancelScope() as self._outer_scope:
            try:
                await self._serve(on_ready)
            except BaseExceptionGroup as group:
                if not self._stopping:
                    raise
                _, rest = group.split(is_nursery_closed)
                if rest is not None:
                    raise rest from None
            except RuntimeError as exc:
                if not (self._stopping and is_nursery_closed(exc)):
                    raise
        self._nursery = None

    def request_stop(self) -> None:
        """Begin shutdown (sync; call on the Trio thread). Teardown is bounded by STOP_GRACE_S."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        if self._outer_scope is not None:
            self._outer_scope.deadline = min(self._outer_scope.deadline, trio.current_time() + STOP_GRACE_S)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the service's nursery (sync; call on the Trio thread)."""
        if self._nursery is None or self._stopping:
            raise P2PServiceError("p2p host is not running")
        self._nursery.start_soon(fn, *args)

    async def _serve(self, on_ready: Callable[[], None]) -> None:
        maddrs = listen_multiaddrs(self._options.listen_addrs)
        host = new_libp2p_host(self._key_pair, maddrs)
        gossip = Gossip(
            host,
            self._my_id,
            max_message_bytes=self._options.max_message_bytes,
            heartbeat_s=self._options.gossip_heartbeat_s,
            stream_only=self.stream_only,
            on_message=self._on_message,
        )
        self._host, self.gossip = host, gossip
        network = host.get_network()
        if isinstance(network, Swarm):  # before listening or dialling: every connection is bounded and gated
            muxer_limits = self._options.muxer_limits
            if self._options.serve_streams:
                muxer_limits = muxer_limits.with_room_for(self._options.stream_limits.max_streams_per_peer)
            bound_the_swarm(network, muxer_limits, self.muxer_refusals, self.inbound_gate)
        if self._on_peer_gone is not None:
            network.register_notifee(PeerGoneNotifee(host, self._on_peer_gone, self._on_peer_back))
        if self._options.serve_streams:
            host.set_stream_handler(TProtocol(DIRECT_PROTOCOL), self.streams.handle_inbound)
        async with host.run(maddrs), background_trio_service(gossip.pubsub), background_trio_service(gossip.router):
            await gossip.pubsub.wait_until_ready()
            check_listening(host, self._options.listen_addrs, maddrs)
            self.listen_addrs = [str(a) for a in host.get_addrs()]
            if isinstance(host, BasicHost):
                keep_addrs_steady(host)  # listening now; py-libp2p asks for them on every pubsub RPC it sends
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(gossip.housekeeping)
                if isinstance(network := host.get_network(), Swarm):
                    lift_inbound_cap(network)
                    self.trimmer = ConnectionTrimmer(network, self._options.connection_budget, self._keeps_connection)
                    nursery.start_soon(self.trimmer.run)
                log.info("p2p host listening", peer_id=self.peer_id, addrs=self.listen_addrs)
                on_ready()
                await self._stop_event.wait()  # type: ignore[union-attr]
                await gossip.flush_outbound(STOP_GRACE_S / 3)
                # Close connections explicitly: cancelling the services alone leaves the
                # sockets open, and peers would keep us in their mesh as if still alive.
                with trio.move_on_after(STOP_GRACE_S / 2):
                    await host.close()
                nursery.cancel_scope.cancel()

    def _keeps_connection(self, peer: ID) -> bool:
        """Whether a peer is of use now: held (`kept_peers`: a publisher whose task is here), with a stream whose
        task was accepted (StreamTable.keeps_connection), or in one of our gossip meshes."""
        if self.kept_peers.keeps(peer) or self.streams.keeps_connection(peer.to_base58()):
            return True
        return self.gossip is not None and any(peer in peers for peers in self.gossip.router.mesh.values())

    # --- operations (call through spawn) ----------------------------------

    async def connect(self, addr: str, timeout: float) -> str:
        """Dial a /ip4, /ip6 or /dns[46] .../tcp/../p2p/<id> address (names as peer_addrs.py says); the peer id."""
        assert self._host is not None
        info = peer_info(addr)
        if info.peer_id == self._my_id:
            raise P2PServiceError(f"refusing to dial our own address {addr}")
        promoted = info.peer_id in self.stream_only
        self.stream_only.discard(info.peer_id)  # dialled to gossip with
        with trio.move_on_after(timeout) as scope:
            try:
                found = [a for named in info.addrs for a in await looked_up(named)]
                await self._dial_in_turn(info.peer_id, found, scope.deadline)
                if promoted and self.gossip is not None:
                    # Already connected for streams: no new connection tells pubsub of it.
                    await self.gossip.pubsub.ensure_peer_stream(info.peer_id, timeout)
            except NameLookupError as exc:
                raise P2PServiceError(f"dialing {addr} failed: {exc}") from None
            except Exception as exc:
                raise P2PServiceError(f"dialing {addr} failed: {root_cause(exc)}") from exc
        if scope.cancelled_caught:
            raise P2PServiceError(f"dialing {addr} timed out after {timeout:g} s")
        return info.peer_id.to_base58()

    async def _dial_in_turn(self, peer: ID, addrs: list[multiaddr.Multiaddr], deadline: float) -> None:
        """Dial `peer` at each of `addrs` in turn until one connects (the last one's error raised).

        py-libp2p dials one address per transport (the first): a name's addresses are tried in turn,
        so /dns/localhost (::1 first) reaches a node listening on IPv4 only.
        Each gets its share of the time left before `deadline` (the last all of it): one that takes the TCP
        connection and then says nothing does not starve the others."""
        assert self._host is not None
        for index, one in enumerate(addrs):
            single = PeerInfo(peer, [one])
            self._allow_dial(peer, [single])
            last = index == len(addrs) - 1
            share = math.inf if last else (deadline - trio.current_time()) / (len(addrs) - index)
            try:
                with trio.move_on_after(share) as turn:
                    await self._host.connect(single)
                if not turn.cancelled_caught:
                    return
            except Exception:
                if last:
                    raise

    def _allow_dial(self, peer: ID, infos: list[PeerInfo]) -> None:
        """Lift libp2p's 60 s bar on a peer whose addresses all failed (its negative cache), and
        dial the addresses asked for, not ones the peerstore kept from before.

        Without this a node restarted on its address cannot be dialled again for a minute.
        Our callers pace their own retries (the connector's backoff up to redial_max_backoff,
        a publisher's choice of node): a dial they ask for is made.
        py-libp2p dials one address per transport, the first the peerstore holds: a node restarted
        with its key on another port (a new heartbeat `addrs`) was dialled at its dead old address
        for as long as the entry lived. Without a connection, the peer's stored addresses are
        dropped; `host.connect` stores the ones given.
        """
        assert self._host is not None
        swarm = self._host.get_network()
        if isinstance(swarm, Swarm):
            swarm.unblock_peer(peer)
        if any(info.addrs for info in infos) and not has_open_connection(self._host, peer):
            self._host.get_peerstore().clear_addrs(peer)

    async def subscribe(self, topic: str, validator: TopicValidator | None) -> None:
        """Register the validator, join the topic and forward its messages to the message sink."""
        assert self.gossip is not None and self._nursery is not None
        await self.gossip.subscribe(topic, validator, self._nursery)

    async def publish(self, topic: str, data: bytes, require_mesh: bool = False) -> None:
        """Publish once outbound queues have room (see `Gossip.publish`)."""
        assert self.gossip is not None
        await self.gossip.publish(topic, data, require_mesh)

    async def open_stream(self, addrs: list[str], first_frame: bytes, timeout: float, raw: bool = False) -> int:
        """Dial one peer at any of `addrs` (all /p2p/<the same id>), open a direct-delivery stream,
        write `first_frame` (`raw`: the bytes as they are, unframed); returns the stream id.
        Its frames go to the frame sink."""
        assert self._host is not None and self._nursery is not None
        peer, infos, frame = self._stream_target(addrs, first_frame, raw)
        connected = False
        host = self._host
        if not self._options.gossip_with_stream_peers and not host.get_network().get_connections(peer):
            # Before the dial: pubsub hears of the connection as it opens.
            self.stream_only.add(peer, lambda p: has_open_connection(host, p))
        self._allow_dial(peer, infos)
        stream_id = 0
        with trio.move_on_after(timeout) as scope:
            try:
                await host.connect(PeerInfo(peer, [a for info in infos for a in info.addrs]))
                connected = True
                stream = await host.new_stream(peer, [TProtocol(DIRECT_PROTOCOL)])
            except Exception as exc:
                self._forget_undialled(peer)
                refused = StreamRefusedServiceError if connected else P2PServiceError  # the peer is there, or not
                raise refused(f"opening a stream to {peer.to_base58()} failed: {root_cause(exc)}") from exc
            stream_id = await self._write_first_frame(stream, peer, frame)
        if scope.cancelled_caught and not connected:
            self._forget_undialled(peer)
            raise P2PServiceError(f"dialing {peer.to_base58()} timed out after {timeout:g} s")
        if scope.cancelled_caught:  # connected, but the peer does not serve the stream: frozen or overloaded
            raise StreamTimeoutServiceError(f"opening a stream to {peer.to_base58()} timed out after {timeout:g} s")
        self._nursery.start_soon(self.streams.serve, stream_id)
        return stream_id

    def _stream_target(self, addrs: list[str], first_frame: bytes, raw: bool) -> tuple[ID, list[PeerInfo], bytes]:
        """The one other peer `addrs` name, each address read, and `first_frame` as it is written (`raw`: as it is);
        P2PServiceError when they are not that."""
        try:
            infos = [peer_info(addr) for addr in addrs]
            frame = first_frame if raw else encode_frame(first_frame, self._options.stream_limits.max_frame_bytes)
        except (FrameError, P2PServiceError) as exc:  # an address without its peer, a frame too large
            raise P2PServiceError(f"cannot open a stream to {addrs[:1]}: {exc}") from exc
        peer = infos[0].peer_id if infos else None
        if peer is None or any(info.peer_id != peer for info in infos) or peer == self._my_id:
            raise P2PServiceError("a stream needs addresses of one other peer")
        return peer, infos, frame

    async def _write_first_frame(self, stream: INetStream, peer: ID, frame: bytes) -> int:
        """Count the stream as ours, then write `frame` on it (nothing when empty); the stream id. A stream that
        fails here is forgotten and reset."""
        stream_id = 0  # counted before the task is written: past our own limits the peer reads nothing of it
        try:
            stream_id = self.streams.register_outbound(stream, peer.to_base58())
            if frame:
                await stream.write(frame)
        except BaseException as exc:
            self.streams.forget_outbound(stream_id)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.reset()
            if isinstance(exc, StreamGoneError):  # our limits: the peer read nothing, nor is it undialable
                raise StreamRefusedServiceError(str(exc)) from None
            if isinstance(exc, Exception):
                raise P2PServiceError(f"writing to {peer.to_base58()} failed: {exc}") from exc
            raise
        return stream_id

    async def reachable(self, peer_id: str, addrs: list[str], timeout: float) -> bool:
        """Whether `peer_id` takes a connection within `timeout` s (True at once when one is open), dialled at
        `addrs` (each /p2p/<peer_id>) or, with none, where the peerstore last knew it. Dialled as for a stream,
        so a publisher's probe does not make it a gossip peer."""
        assert self._host is not None
        host = self._host
        try:
            peer = ID.from_base58(peer_id)
            infos = [peer_info(addr) for addr in addrs]
            if not infos:
                infos = [PeerInfo(peer, list(host.get_peerstore().addrs(peer)))]
        except Exception:  # noqa: BLE001 - a peer or address we cannot dial is no answer
            return False
        if any(info.peer_id != peer or not info.addrs for info in infos) or peer == self._my_id:
            return False
        if has_open_connection(host, peer):
            return True
        if not self._options.gossip_with_stream_peers:
            self.stream_only.add(peer, lambda p: has_open_connection(host, p))
        self._allow_dial(peer, infos)
        with trio.move_on_after(timeout):
            try:
                await host.connect(PeerInfo(peer, [a for info in infos for a in info.addrs]))
                return True
            except Exception:  # noqa: BLE001 - refused, reset, a failed handshake: not reachable
                pass
        self._forget_undialled(peer)
        return False

    def _forget_undialled(self, peer: ID) -> None:
        """A dial for a stream failed: without any connection, the peer is no stream-only peer."""
        assert self._host is not None
        if not has_open_connection(self._host, peer):
            self.stream_only.discard(peer)

    async def stream_send(self, stream_id: int, data: bytes, last: bool = False) -> None:
        """Write one frame on an open stream (`last`: and close it after the frame)."""
        try:
            await self.streams.send(stream_id, data, last)
        except (StreamGoneError, FrameError) as exc:
            raise P2PServiceError(str(exc)) from None

    async def stream_close(self, stream_id: int, graceful: bool) -> None:
        """End a stream after its last frame (graceful) or reset it."""
        self.streams.close(stream_id, graceful)

    async def peers(self) -> list[str]:
        """Ids of the connected peers."""
        assert self._host is not None
        return [peer.to_base58() for peer in self._host.get_connected_peers()]

    async def gossip_peers(self) -> list[str]:
        """Ids of the connected peers we gossip with (those dialled only for streams left out)."""
        assert self.gossip is not None
        return [peer.to_base58() for peer in self.gossip.pubsub.peers]

    async def mesh_sizes(self) -> dict[str, int]:
        """Topic -> number of peers in our gossipsub mesh for it."""
        assert self.gossip is not None
        return self.gossip.mesh_sizes()
