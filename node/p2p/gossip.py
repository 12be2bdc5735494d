"""The gossip side of the Trio service: gossipsub over a libp2p host, its topics and paced publishing.

Its Pubsub is pubsub.py's `StreamPeerAwarePubsub` (the read loop per peer, stream-only peers, peers that read
nothing). Everything here runs on the Trio thread (see service.py). Delivery rule: messages this
host publishes itself are NOT handed to its own message sink, and skip the topic validator (they are
size-checked before publishing instead): `StreamPeerAwarePubsub.publish` hands them to the router
alone, and the checks below still pass or drop any of ours that would come another way.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import structlog
import trio
from libp2p.abc import IHost, ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2

from node.p2p.errors import NoMeshPeersServiceError, P2PServiceError
from node.p2p.handoff import held_size
from node.p2p.outbound_queue import OutboundBudget
from node.p2p.pacing import POLL_S, OutboundPacing
from node.p2p.pubsub import StreamPeerAwarePubsub
from node.p2p.pubsub_limits import (
    MAX_PEER_SUBSCRIPTIONS,
    BoundedGossipSub,
    WallClockJumps,
    drop_expired_backoff,
    shift_wall_times,
)
from node.p2p.stream_only import StreamOnlyPeers, has_open_connection
from node.wire.topics import SEEN_WINDOW_S

log = structlog.get_logger(__name__)

MAX_INBOUND_RPC_BYTES = 1 << 20
HOUSEKEEPING_INTERVAL_S = 30.0
# Verdicts held between a message's validation and its hand-off (a subscription buffers 32 messages):
# past either bound the oldest is forgotten, and its consumer checks the message again itself.
VERDICTS_HELD = 256
VERDICT_BYTES_HELD = 8 * 1024 * 1024

MessageSink = Callable[[str, bytes, str, object], None]
"""(topic, data, source peer id, verdict) -> None; called on the Trio thread, must not block.
`verdict` is what the topic's validator returned when it was more than True (else None)."""
TopicValidator = Callable[[str, bytes], object]
"""(topic, data) -> verdict, called on the Trio thread before relay: falsy rejects. A verdict other
than True (e.g. the decoded message) goes to the message sink with the message, so a consumer does
not check the same bytes a second time."""


class HeldVerdicts:
    """Validator verdicts waiting for their message's hand-off, keyed by (topic, the exact bytes).

    Keyed by content, never by object identity or sender and sequence number: a verdict can
    only ever travel with the bytes it was given for. At most `max_count` verdicts and
    `max_bytes` are held, keys and what the verdicts hold (`held_size`); the oldest go first
    (their consumers check them again).
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._held: OrderedDict[tuple[str, bytes], tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._max_count = max_count
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held(self) -> int:
        """Bytes counted for the verdicts held now."""
        return self._bytes

    def hold(self, topic: str, data: bytes, verdict: object) -> None:
        """Keep `verdict` for `data` on `topic` until `take`."""
        key = (topic, data)
        size = held_size(data, verdict)
        if size > self._max_bytes:
            return  # never held, and nothing else goes for it: its consumer checks the message again
        if (previous := self._held.get(key)) is not None:
            self._bytes -= previous[1]
        self._held[key] = (verdict, size)
        self._bytes += size
        while len(self._held) > self._max_count or self._bytes > self._max_bytes:
            _, (_, dropped) = self._held.popitem(last=False)
            self._bytes -= dropped

    def take(self, topic: str, data: bytes) -> object:
        """The verdict held for `data` on `topic` (forgotten now), or None."""
        held = self._held.pop((topic, data), None)
        if held is None:
            return None
        self._bytes -= held[1]
        return held[0]


def content_message_id(msg: rpc_pb2.Message) -> bytes:
    """Gossip message id: sha256 of the data, so the same envelope relayed twice is one message."""
    return hashlib.sha256(msg.data).digest()


class Gossip:
    """Gossipsub on `host`: subscribe with a validator, publish paced by the outbound queues."""

    def __init__(
        self,
        host: IHost,
        my_id: ID,
        *,
        max_message_bytes: int,
        heartbeat_s: float,
        stream_only: StreamOnlyPeers,
        on_message: MessageSink,
    ) -> None:
        self.router = BoundedGossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=5,
            degree_high=12,
            heartbeat_interval=heartbeat_s,  # float works
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
        )
        self.pubsub = StreamPeerAwarePubsub(
            host,
            self.router,
            stream_only=stream_only,
            outbound_budget=OutboundBudget.for_messages(max_message_bytes),
            strict_signing=True,
            msg_id_constructor=content_message_id,
            max_inbound_rpc_size=MAX_INBOUND_RPC_BYTES,
            max_subscriptions_per_peer=MAX_PEER_SUBSCRIPTIONS,
            seen_ttl=SEEN_WINDOW_S,
        )
        self._my_id = my_id
        self._my_id_bytes = my_id.to_bytes()
        self._max_message_bytes = max_message_bytes
        self._on_message = on_message
        self._publish_lock = trio.Lock()
        self.pacing = OutboundPacing(lambda: ((peer, len(queue)) for peer, queue in self.pubsub.peer_queues.items()))
        self._verdicts = HeldVerdicts(VERDICTS_HELD, VERDICT_BYTES_HELD)
        self._stream_only = stream_only

    async def subscribe(self, topic: str, validator: TopicValidator | None, nursery: trio.Nursery) -> None:
        """Register the validator, join the topic and forward its messages to the message sink."""
        if topic in self.pubsub.topic_ids:
            raise P2PServiceError(f"already subscribed to topic {topic!r}")
        self.pubsub.set_topic_validator(topic, self._wrap_validator(topic, validator), False)
        subscription = await self.pubsub.subscribe(topic)
        nursery.start_soon(self._forward, topic, subscription)

    async def publish(self, topic: str, data: bytes, require_mesh: bool = False) -> None:
        """Publish once outbound queues have room (paced); the same data twice is sent once.

        `require_mesh`: raise NoMeshPeersServiceError, sending nothing, when no peer is in the
        topic's mesh (right after a (re)connect the mesh is still forming and a publish
        would go nowhere).
        """
        if require_mesh and not self.router.mesh.get(topic):
            raise NoMeshPeersServiceError(f"no peer in the {topic!r} mesh")
        if len(data) > self._max_message_bytes:
            raise P2PServiceError(
                f"message of {len(data)} bytes on topic {topic!r} exceeds the limit of {self._max_message_bytes} bytes"
            )
        async with self._publish_lock:
            await self.pacing.wait()
            await self.pubsub.publish(topic, data)

    def mesh_sizes(self) -> dict[str, int]:
        """Topic -> number of peers in our gossipsub mesh for it."""
        return {topic: len(peers) for topic, peers in self.router.mesh.items()}

    async def flush_outbound(self, timeout: float) -> None:
        """Let messages published just before stop() reach the wire (bounded)."""
        with trio.move_on_after(timeout):
            while any(len(queue) for queue in self.pubsub.peer_queues.values()):
                await trio.sleep(POLL_S)
            await trio.sleep(0.05)  # the last RPC leaves its queue before its bytes leave the stream

    async def housekeeping(self) -> None:
        """Forever: clear what gossipsub keeps and never needs here, and stream-only peers long gone; move its
        wall-clock deadlines when the wall clock jumps."""
        # recent_message_deliveries feeds adaptive gossip only (off here) and grows without bound;
        # a backoff entry is dropped by py-libp2p only when looked up, so a gone peer's stays.
        wall_clock = WallClockJumps()
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL_S)
            if jump := wall_clock.jumped():
                shift_wall_times(self.router, jump)
                log.warning("wall clock jumped: gossip's backoffs moved with it", jump_s=round(jump, 1))
            self.router.recent_message_deliveries.clear()
            drop_expired_backoff(self.router, lambda peer: has_open_connection(self.pubsub.host, peer))
            self._stream_only.prune(lambda peer: has_open_connection(self.pubsub.host, peer))

    def _wrap_validator(self, topic: str, validator: TopicValidator | None) -> Callable[[ID, rpc_pb2.Message], bool]:
        limit = self._max_message_bytes

        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if forwarder == self._my_id and msg.from_id == self._my_id_bytes:
                return True  # our own publish: size-checked already, and not delivered locally
            if len(msg.data) > limit:
                log.debug("message rejected: oversize", topic=topic, size=len(msg.data), limit=limit)
                return False
            if validator is None:
                return True
            data = msg.data
            try:
                verdict = validator(topic, data)
            except Exception:
                # A raising sync validator would crash the libp2p host: count it as a reject.
                log.warning("gossip validator raised", topic=topic, exc_info=True)
                return False
            if not verdict:
                return False
            if verdict is not True:
                self._verdicts.hold(topic, data, verdict)
            return True

        return check

    async def _forward(self, topic: str, subscription: ISubscriptionAPI) -> None:
        # libp2p buffers only 32 messages per subscription: empty it promptly.
        peer_names: dict[bytes, str] = {}
        async for msg in subscription:
            if msg.from_id == self._my_id_bytes:
                continue
            source = peer_names.get(msg.from_id)
            if source is None:
                if len(peer_names) > 4096:
                    peer_names.clear()
                source = peer_names[msg.from_id] = ID(msg.from_id).to_base58()
            data = msg.data
            try:
                self._on_message(topic, data, source, self._verdicts.take(topic, data))
            except Exception:
                log.exception("message sink failed", topic=topic)
