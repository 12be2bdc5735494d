"""The asyncio-facing P2P layer: gossipsub publish/subscribe over py-libp2p.

py-libp2p is Trio-only, so `P2PHost` runs `P2PService` (node/p2p/service.py)
under `trio.run` in a dedicated thread (`TrioThread`, node/p2p/trio_thread.py: asyncio
-> Trio spawns a task in the service's nursery; Trio -> asyncio settles a future or puts a
message on a subscription queue). libp2p objects are never touched from the asyncio thread,
and the Trio side never waits on asyncio.
Gossip messages reach their subscription queues within a budget per topic
(handoff.py); direct-delivery streams are FrameStreams (frame_stream.py).

Own messages: a host's own published messages are NOT delivered to its own
subscription queues (and its own publishes skip its validators), so the node
never sees its own results/heartbeats come back.

Duplicates: message ids are content addressed (sha256 of the data) and remembered
for 12 minutes (`SEEN_WINDOW_S`: longer than an envelope is accepted), so the same data is
delivered (and sent) once in that window. A
peer that (re)subscribes may get recent messages replayed later, so consumers
must still be idempotent (dedupe by task id).

Usage (all methods from the event loop that called `start`):

    host = P2PHost(secret, ["/ip4/0.0.0.0/tcp/4001"])
    await host.start()
    await host.connect("/ip4/1.2.3.4/tcp/4001/p2p/16Uiu2...")
    tasks = await host.subscribe("task", validator=check_task)  # validator runs on the Trio thread
    await host.publish("results", payload)
    message = await tasks.get()                                  # GossipMessage
    await host.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from pydantic import ValidationError

from node.p2p.bounded_yamux import CLOSED_STREAM_FLOOD, CLOSED_WINDOW
from node.p2p.errors import MessageTooLargeError, P2PError
from node.p2p.frame_stream import FrameStream, FrameStreams
from node.p2p.handoff import DEFAULT_QUEUE_BYTES, GossipMessage, GossipQueues, held_size
from node.p2p.inbound_gate import InboundLimits
from node.p2p.kept_peers import KeptPeers
from node.p2p.libp2p_logging import route_libp2p_logging
from node.p2p.service import P2PService, ServiceOptions
from node.p2p.streams import StreamLimits
from node.p2p.trio_thread import TrioThread
from node.wire.topics import MAX_MESSAGE_BYTES

log = structlog.get_logger(__name__)
T = TypeVar("T")

MESH_POLL_S = 0.02  # how often wait_for_mesh asks the Trio thread (a call costs ~0.1 ms)


InboundStreamHandler = Callable[[FrameStream, bytes], None]
"""(stream, its first frame) -> None, on the event loop: a peer opened a direct-delivery stream."""

PeerGoneHandler = Callable[[str], None]
"""(peer id) -> None, on the event loop: the peer's last connection to this host closed."""

PeerBackHandler = Callable[[str], None]
"""(peer id) -> None, on the event loop: a connection between the peer and this host opened."""

Validator = Callable[[str, bytes], object]
"""(topic, data) -> verdict: falsy rejects. Runs on the Trio thread before relay and must
be fast; an exception counts as a reject and is logged. A verdict other than True (e.g. the
decoded message) arrives with the message as `GossipMessage.validated`, so the consumer does
not decode it again; its `held_bytes`, when it has one, counts against the topic's budget
(node/p2p/handoff.py). The same data is not re-validated within the seen window."""


class P2PHost:
    """One libp2p host (TCP + Noise + Yamux, gossipsub 1.1) driven from asyncio."""

    def __init__(
        self,
        secret: bytes,
        listen_addrs: list[str],
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        gossip_heartbeat_s: float = 1.0,
        queue_size: int = 4096,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        libp2p_log_level: int | str = logging.WARNING,
        stream_limits: StreamLimits | None = None,
        on_inbound_stream: InboundStreamHandler | None = None,
        gossip_with_stream_peers: bool = True,
        inbound_limits: InboundLimits | None = None,
        on_peer_gone: PeerGoneHandler | None = None,
        on_peer_back: PeerBackHandler | None = None,
    ) -> None:
        """`secret` is the node's 32-byte secp256k1 secret; it is also the host key.

        `queue_size` / `queue_bytes`: per topic, the most messages and bytes received
        and not yet taken by the consumer; more is dropped. `on_inbound_stream`: take
        direct-delivery streams (`/compute/task/0.4.0`) within `stream_limits`.
        `gossip_with_stream_peers` False (a publisher): a peer dialled by `open_stream` alone is no
        gossip peer (see node/p2p/pubsub.py, `StreamPeerAwarePubsub`). `inbound_limits`: the most
        inbound connections one remote host may have open and open per minute (node/p2p/inbound_gate.py).
        `on_peer_gone(peer id)`: a peer's last connection closed (it died, or it or we hung up; node/p2p/peer_gone.py).
        `on_peer_back(peer id)`: a connection to a peer opened (heard only with `on_peer_gone`).
        """
        try:
            options = ServiceOptions(
                secret=secret,
                listen_addrs=listen_addrs,
                max_message_bytes=max_message_bytes,
                gossip_heartbeat_s=gossip_heartbeat_s,
                stream_limits=stream_limits or StreamLimits(),
                serve_streams=on_inbound_stream is not None,
                gossip_with_stream_peers=gossip_with_stream_peers,
                inbound_limits=inbound_limits,
            )
        except ValidationError as exc:
            raise P2PError(f"invalid p2p options: {exc}") from exc
        route_libp2p_logging(libp2p_log_level)
        self._options = options
        self._gossip = GossipQueues(queue_size, queue_bytes)
        self._relayed: set[str] = set()  # topics joined only to validate and relay (`relay`)
        self._on_inbound_stream = on_inbound_stream
        self._on_peer_gone = on_peer_gone
        self._on_peer_back = on_peer_back
        self._streams = FrameStreams(
            send=lambda sid, data, last: self._call(self._service.stream_send, sid, bytes(data), last),
            close=lambda sid, graceful: self._call(self._service.stream_close, sid, graceful),
        )
        self._service = P2PService(
            options,
            on_message=self._on_trio_message,
            on_inbound_stream=self._on_trio_inbound_stream,
            on_stream_frame=self._on_trio_stream_frame,
            on_peer_gone=self._on_trio_peer_gone if on_peer_gone is not None else None,
            on_peer_back=self._on_trio_peer_back if on_peer_back is not None else None,
        )
        self._peer_id = self._service.peer_id
        self._trio = TrioThread(self._service, self.thread_name, str(options.listen_addrs))
        self._call = self._trio.call
        self._call_soon = self._trio.call_soon

    # --- properties ------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """Our libp2p peer id ("16Uiu2...")."""
        return self._peer_id

    @property
    def listen_addrs(self) -> list[str]:
        """Full multiaddrs with /p2p/<peer id> and the real port (empty before start)."""
        return list(self._service.listen_addrs)

    @property
    def thread_name(self) -> str:
        """Name of the Trio thread that runs this host."""
        return f"p2p-trio-{self._peer_id[-8:]}"

    @property
    def dropped_messages(self) -> int:
        """Messages received and dropped because their topic's hand-off budget was full."""
        return self._gossip.dropped

    @property
    def refused_connections(self) -> dict[str, int]:
        """Connections refused or closed so far, by reason: their host's limits ("open", "rate"; inbound,
        before the handshake), "receive_window" (a peer sent past a stream's window) and "stream_flood" (a peer
        went on opening streams past its connection's cap; both node/p2p/bounded_yamux.py)."""
        gate = self._service.inbound_gate
        refused = {} if gate is None else dict(gate.refused)
        refused[CLOSED_WINDOW] = self._service.muxer_refusals.window
        refused[CLOSED_STREAM_FLOOD] = self._service.muxer_refusals.stream_flood
        return refused

    @property
    def refused_streams(self) -> int:
        """Streams peers opened past the cap of their connection (`MuxerLimits`), reset so far."""
        return self._service.muxer_refusals.streams

    @property
    def kept_peers(self) -> KeptPeers:
        """Peers whose connections are never trimmed while held (hold and release them from the event loop)."""
        return self._service.kept_peers

    @property
    def trimmed_peers(self) -> int:
        """Peers whose idle inbound connections were closed so far, past the connection budget."""
        trimmer = self._service.trimmer
        return 0 if trimmer is None else trimmer.trimmed

    @property
    def max_message_bytes(self) -> int:
        """Largest gossip message data sent or accepted."""
        return self._options.max_message_bytes

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Start the Trio thread and listen; raises P2PError naming the address on failure."""
        await self._trio.start()

    async def stop(self) -> None:
        """Stop the host and join its thread. Idempotent; bounded (trio_thread.STOP_TIMEOUT_S)."""
        await self._trio.stop()

    # --- operations ------------------------------------------------------

    async def connect(self, multiaddr: str, timeout: float = 10.0) -> str:
        """Dial a /ip4/.../tcp/.../p2p/... address; returns its peer id. Dials run concurrently."""
        return await self._call(self._service.connect, multiaddr, timeout)

    async def subscribe(self, topic: str, validator: Validator | None = None) -> asyncio.Queue[GossipMessage]:
        """Join `topic`; valid messages from other peers arrive on the returned queue.

        The validator gives the verdict before relay (False or an exception: not
        delivered, not relayed). Messages over `max_message_bytes` are rejected.
        """
        if topic in self._gossip or topic in self._relayed:
            raise P2PError(f"already subscribed to topic {topic!r}")
        queue = self._gossip.open(topic)
        try:
            await self._call(self._service.subscribe, topic, validator)
        except BaseException:
            self._gossip.remove(topic)
            raise
        return queue

    async def relay(self, topic: str, validator: Validator | None = None) -> None:
        """Join `topic` only to validate and relay it: its messages never cross to the event loop.

        For a topic this peer does not read (a node relays results and other nodes' heartbeats):
        each message handed over would cost a thread crossing and a wake-up of the event loop,
        a share of every node's CPU that grows with the network's traffic. The validator still
        runs (on the Trio thread) and may note what it needs.
        """
        if topic in self._gossip or topic in self._relayed:
            raise P2PError(f"already subscribed to topic {topic!r}")
        self._relayed.add(topic)  # no queue: `_on_trio_message` hands nothing of it over
        try:
            await self._call(self._service.subscribe, topic, validator)
        except BaseException:
            self._relayed.discard(topic)
            raise

    async def publish(self, topic: str, data: bytes, *, require_mesh: bool = False) -> None:
        """Publish `data` on `topic`, paced by the outbound queues.

        Raises MessageTooLargeError (nothing sent) above `max_message_bytes`, and with
        `require_mesh` NoMeshPeersError (nothing sent) when no peer is in the topic's mesh:
        checked on the Trio thread in the same call, so it costs no extra thread crossing.
        Data identical to a message seen in the last `SEEN_WINDOW_S` (12 min) is not sent again.
        Awaiting publishes one after another keeps their order.
        """
        if len(data) > self._options.max_message_bytes:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes on topic {topic!r} exceeds the limit of "
                f"{self._options.max_message_bytes} bytes"
            )
        await self._call(self._service.publish, topic, bytes(data), require_mesh)

    async def open_stream(
        self, addrs: list[str], first_frame: bytes, timeout: float = 5.0, *, raw: bool = False
    ) -> FrameStream:
        """Dial the peer of `addrs` and open a direct-delivery stream with `first_frame` written.

        `raw`: write the bytes as they are, unframed (a peer probing another's framing: tests).
        P2PError when it cannot be dialled or does not speak the protocol; StreamTimeoutError when
        `timeout` passes first.
        """
        peer_id = addrs[0].rsplit("/p2p/", 1)[-1] if addrs else ""
        opening = asyncio.ensure_future(
            self._call(self._service.open_stream, list(addrs), bytes(first_frame), timeout, raw)
        )
        try:
            stream_id: int = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(lambda done: self._drop_orphan(done, peer_id))  # nobody will read it
            raise
        return self._streams.claim(stream_id, peer_id)

    async def reachable(self, peer_id: str, addrs: list[str], timeout: float = 2.0) -> bool:
        """Whether `peer_id` takes a connection within `timeout` s at `addrs` (none: where the peerstore knew
        it); already connected: True."""
        return bool(await self._call(self._service.reachable, peer_id, list(addrs), timeout))

    def _drop_orphan(self, opening: asyncio.Future[int], peer_id: str) -> None:
        if opening.cancelled() or opening.exception() is not None:
            return
        stream = self._streams.claim(opening.result(), peer_id)
        asyncio.ensure_future(stream.close(graceful=False))

    @property
    def open_streams(self) -> int:
        """Direct-delivery streams handed to (or waiting for) asyncio users and not yet ended."""
        return len(self._streams)

    @property
    def held_streams(self) -> int:
        """Direct-delivery streams the Trio side holds, those refused or not yet read included (a snapshot)."""
        return self._service.streams.open_count

    async def peers(self) -> list[str]:
        """Ids of the connected peers."""
        return await self._call(self._service.peers)

    async def gossip_peers(self) -> list[str]:
        """Ids of the connected peers this host gossips with (not those dialled only for streams)."""
        return await self._call(self._service.gossip_peers)

    async def mesh_sizes(self) -> dict[str, int]:
        """Topic -> gossipsub mesh peer count."""
        return await self._call(self._service.mesh_sizes)

    async def wait_for_mesh(self, topic: str, timeout: float, *, peers: int = 1) -> bool:
        """Wait until `topic`'s mesh holds at least `peers` peers; False if it did not within `timeout` s."""
        deadline = time.monotonic() + timeout
        while (await self.mesh_sizes()).get(topic, 0) < peers:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(MESH_POLL_S)
        return True

    # --- hand-overs from the Trio thread -------------------------------

    def _on_trio_message(self, topic: str, data: bytes, source_peer: str, validated: object) -> None:  # on Trio
        size = held_size(data, validated)
        if self._gossip.charge(topic, size):
            message = GossipMessage(topic=topic, data=data, source_peer=source_peer, validated=validated, size=size)
            self._call_soon(self._gossip.deliver, message)

    def _on_trio_inbound_stream(self, stream_id: int, peer_id: str, first: bytes) -> None:  # on the Trio thread
        self._call_soon(self._accept_stream, stream_id, peer_id, first)

    def _accept_stream(self, stream_id: int, peer_id: str, first: bytes) -> None:
        stream = self._streams.claim(stream_id, peer_id)
        if self._on_inbound_stream is None:
            asyncio.ensure_future(stream.close(graceful=False))
            return
        try:
            self._on_inbound_stream(stream, first)
        except Exception:  # noqa: BLE001 - one stream must never reach the event loop's handler
            log.exception("inbound stream handler failed", peer=peer_id)
            asyncio.ensure_future(stream.close(graceful=False))

    def _on_trio_stream_frame(self, stream_id: int, frame: bytes | None) -> None:  # on the Trio thread
        self._call_soon(self._streams.deliver, stream_id, frame)

    def _on_trio_peer_gone(self, peer_id: str) -> None:  # on the Trio thread
        self._call_soon(self._peer_gone, peer_id)

    def _peer_gone(self, peer_id: str) -> None:
        if self._on_peer_gone is None:
            return
        try:
            self._on_peer_gone(peer_id)
        except Exception:  # noqa: BLE001 - an observer must not reach the event loop's handler
            log.exception("peer-gone handler failed", peer=peer_id)

    def _on_trio_peer_back(self, peer_id: str) -> None:  # on the Trio thread
        self._call_soon(self._peer_back, peer_id)

    def _peer_back(self, peer_id: str) -> None:
        if self._on_peer_back is None:
            return
        try:
            self._on_peer_back(peer_id)
        except Exception:  # noqa: BLE001 - an observer must not reach the event loop's handler
            log.exception("peer-back handler failed", peer=peer_id)
