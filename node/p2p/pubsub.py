"""StreamPeerAwarePubsub: py-libp2p's Pubsub with the node's read loop per peer, stream-only peers left out.

Gossip (gossip.py) runs gossipsub on it. What it changes of py-libp2p's, each measured: a peer dialled only for
direct-delivery streams gets no pubsub stream (stream_only.py); each peer's RPCs are read on its own loop, cut to
pubsub_limits.py's bounds, and one that cannot be handled drops that peer's stream, never the host; a peer that
reads none of our gossip for STALLED_WRITE_S is disconnected (`write_msg`); a still-connected peer whose stream
failed keeps its subscriptions; each peer's outbound queue is bounded in bytes, and all of them together
(outbound_queue.py). Everything here runs on the Trio thread (see service.py).
"""

from __future__ import annotations

from typing import Any

import structlog
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.io.exceptions import IOException, MessageTooLarge
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from node.p2p.errors import HostileRpcServiceError
from node.p2p.outbound_queue import OutboundBudget, OutboundQueues
from node.p2p.pubsub_limits import trim_rpc
from node.p2p.seen_cache import WindowedSeenCache
from node.p2p.sender_records import SenderRecords
from node.p2p.stream_only import StreamOnlyPeers, has_open_connection

log = structlog.get_logger("node.p2p.gossip")  # its lines are gossip's, named so before this module was split off

STREAM_ONLY_POLL_S = 0.5  # how often a held pubsub stream of a stream-only peer looks for its promotion
# A pubsub write that failed after this long waited for a peer that read none of it (yamux gives up after 5 s
# with the peer's receive window shut): `write_msg` disconnects such a peer.
STALLED_WRITE_S = 4.0
STALLED_LOG_WINDOW_S = 10.0  # such disconnects are logged once a window, with the count so far


class StreamPeerAwarePubsub(Pubsub):
    """Pubsub that leaves out peers dialled only for direct-delivery streams (`stream_only`).

    A publisher dials every node it sends a task to; as a gossip peer of each, it would be in
    every node's mesh and receive each heartbeat and result from up to 12 of them, its CPU spent
    on relaying instead of its tasks (at 16 nodes on two cores its heartbeats went minutes stale).
    Such a peer gets no pubsub stream from us, and its own is held unread: it never learns our
    subscriptions, so it sends us nothing. Not reset: a peer whose stream was reset gives up on
    pubsub with us for the connection, so `connect` could not make it a gossip peer later (a
    publisher whose gossip peers died); once connected to, its stream is read from its start.
    A peer leaves `stream_only` once its last connection is gone (stream_only.py).
    Its seen-message cache is `WindowedSeenCache` (seen_cache.py), not py-libp2p's; the signed peer record on each RPC is
    checked once per peer and bytes (sender_records.py).

    Its read loop is its own (`continuously_read_stream`): py-libp2p's let one RPC that is not
    protobuf, or one message whose key does not parse, end the whole host (the exception reached
    the service's nursery), and spawned a task per message, each spawn a walk over all live tasks
    (7,000 messages in one 1 MiB RPC: 10 s of CPU). Here each RPC is cut to pubsub_limits.py's
    bounds, its messages are handled in order on the peer's own read loop (a peer that sends more
    waits for its stream to be read), and a peer whose RPC cannot be handled loses its stream.
    """

    def __init__(
        self, *args: Any, stream_only: StreamOnlyPeers, outbound_budget: OutboundBudget, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stream_only = stream_only
        self.outbound = OutboundQueues(outbound_budget)  # every peer's queue, bounded in bytes
        self.peer_queues = self.outbound
        ttl = self.seen_messages.ttl
        self.seen_messages.stop()  # its sweeping thread: see seen_cache.py
        self.seen_messages = WindowedSeenCache(ttl)  # type: ignore[assignment]  # has/add, as py-libp2p uses it
        self._died_in_retry: set[ID] = set()  # connected peers whose stream failed while a retry registered it
        self._disconnecting: set[ID] = set()  # peers `write_msg` found reading nothing, being disconnected
        self._stalled = 0  # such peers disconnected so far
        self._stalled_logged_at = -STALLED_LOG_WINDOW_S
        self._sender_records = SenderRecords(self.host)  # each RPC's signed peer record, checked once per bytes

    def _handle_dead_peer(self, peer_id: ID) -> None:
        # Called when the peer's last connection closed, and also when one pubsub stream failed:
        # only a peer left without a connection is forgotten.
        if not has_open_connection(self.host, peer_id):
            self.stream_only.discard(peer_id)
            self._died_in_retry.discard(peer_id)  # its retry gives up: nothing is held for a peer gone
            self._sender_records.forget(peer_id)
            if peer_id not in self.peers:
                # Its RPCs were read (scores per topic, IDONTWANTs, the IWANT budget), but py-libp2p clears
                # a router's state only for peers it registered: one that never took our stream left it for good.
                self.router.remove_peer(peer_id)
            super()._handle_dead_peer(peer_id)
            return
        # Still connected: our stream to it failed (py-libp2p's sending loop calls this when a write fails),
        # e.g. the old connection of a publisher that restarted with its key and reconnected. py-libp2p
        # forgets the subscriptions the peer sent, and opens a new stream to it; but they came on the peer's
        # own stream, which lives on, and the peer sends them only once: forgotten, the peer is never in a
        # mesh again and every result for it waits for a subscriber until its deadline. They are kept.
        if peer_id in self._peer_stream_retries_pending:  # py-libp2p schedules no second retry: see _handle_new_peer
            self._died_in_retry.add(peer_id)
        kept = [topic for topic, peers in self.peer_topics.items() if peer_id in peers]
        count = self._peer_subscription_count.get(peer_id)
        super()._handle_dead_peer(peer_id)
        for topic in kept:
            self.peer_topics.setdefault(topic, set()).add(peer_id)
        if count is not None:
            self._peer_subscription_count[peer_id] = count

    async def publish(self, topic_id: str | list[str], data: bytes) -> None:
        """py-libp2p's publish of a message of ours, without what its `push_msg` does for any message that our
        own needs not: verify the signature just made (~47 us), run the topic validators (ours pass our own
        messages) and deliver it to our own subscriptions (the message sink leaves our own out). Signed, marked
        seen (the same data published again is not sent again: message ids are the content's) and handed to the
        router as before."""
        if self.sign_key is None or not self.strict_signing:
            await super().publish(topic_id, data)
            return
        msg = rpc_pb2.Message(
            data=data,
            topicIDs=[topic_id] if isinstance(topic_id, str) else topic_id,
            from_id=self.my_id.to_bytes(),
            seqno=self._next_seqno(),
        )
        msg.signature = self.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.host.get_public_key().serialize()
        if self._is_msg_seen(msg):
            return
        self._mark_msg_seen(msg)
        await self.router.publish(self.my_id, msg)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Write one RPC (py-libp2p's write); a peer that read none of it for STALLED_WRITE_S is disconnected.

        py-libp2p only dropped the stream then and opened a new one to the still-connected peer, dialling it
        again if need be, and queued its RPCs anew: seven such peers on one IP, subscribed and never reading,
        grew a node by ~4 MB a second while the network's traffic went on (native memory, held until they
        left). A peer that reads none of its gossip is of no use to the mesh; disconnected (and forgotten, so
        never dialled back), it may dial again within the inbound limits (inbound_gate.py)."""
        data = rpc_msg.SerializeToString()
        started = trio.current_time()
        try:
            await stream.write(encode_varint_prefixed(data))
            return True
        except (StreamClosed, StreamReset):
            peer = stream.muxed_conn.peer_id
            if trio.current_time() - started < STALLED_WRITE_S or not has_open_connection(self.host, peer):
                self._handle_dead_peer(peer)  # as py-libp2p does: a new stream if it is still connected
                return False
        if peer in self._disconnecting:  # gossipsub's own writes to the same stream stalled too
            return False
        self._disconnecting.add(peer)
        self._stalled += 1
        if (now := trio.current_time()) - self._stalled_logged_at >= STALLED_LOG_WINDOW_S:  # any peer can cause it
            log.info("pubsub peer reads nothing: disconnected", peer=peer.to_base58(), count=self._stalled)
            self._stalled_logged_at = now
        try:
            await self.host.disconnect(peer)  # its connections' end forgets it (_handle_dead_peer, not connected)
        except Exception as exc:  # noqa: BLE001 - not disconnected: its stream is handled as py-libp2p would
            log.debug("pubsub peer not disconnected", peer=peer.to_base58(), error=repr(exc))
            self._handle_dead_peer(peer)
        finally:
            self._disconnecting.discard(peer)
        return False

    async def handle_sending_messages(self, peer_id: ID, stream: INetStream, queue: RpcQueue) -> None:
        """py-libp2p's sending loop, on the byte-bounded queue that took the place of the one it made."""
        await super().handle_sending_messages(peer_id, stream, self.outbound.sender_queue(queue))

    async def _handle_new_peer(self, peer_id: ID) -> None:
        if peer_id in self.stream_only:
            return
        self._died_in_retry.discard(peer_id)
        await super()._handle_new_peer(peer_id)
        if peer_id in self._died_in_retry and peer_id not in self.peers and has_open_connection(self.host, peer_id):
            # The new stream failed within its registration (the replay of recent messages writes to it), and
            # the dead-peer handling scheduled no retry, this one being in flight. Raised, py-libp2p's retry
            # loop tries again with its backoff (0.5 s doubling to 10 s) while the peer stays connected.
            self._died_in_retry.discard(peer_id)
            raise StreamClosed(f"pubsub stream to {peer_id} failed while it was registered")

    async def stream_handler(self, stream: INetStream) -> None:
        """Wait while the peer is stream-only, then handle its pubsub stream."""
        peer = stream.muxed_conn.peer_id
        while peer in self.stream_only:
            if getattr(stream.muxed_conn, "is_closed", False):
                return
            await trio.sleep(STREAM_ONLY_POLL_S)
        await super().stream_handler(stream)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """Read the peer's RPCs; a bad or oversized one drops the stream, never the host."""
        peer = stream.muxed_conn.peer_id
        try:
            while self.manager.is_running:
                data = await read_varint_prefixed_bytes_limited(stream, self.max_inbound_rpc_size)
                rpc = rpc_pb2.RPC()
                try:
                    rpc.ParseFromString(data)
                except DecodeError as exc:
                    raise HostileRpcServiceError(f"not a pubsub RPC: {exc}") from None
                await self._handle_rpc(peer, rpc)
        except (StreamEOF, StreamError, IOException, RawConnError) as exc:
            if not isinstance(exc, MessageTooLarge):
                return  # the stream or connection ended
            await self._drop_stream(stream, peer, f"RPC over {self.max_inbound_rpc_size} bytes")
        except Exception as exc:  # noqa: BLE001 - a peer's RPC never ends the host: it ends its stream
            await self._drop_stream(stream, peer, f"{type(exc).__name__}: {exc}")

    async def _drop_stream(self, stream: INetStream, peer: ID, reason: str) -> None:
        log.info("pubsub stream dropped", peer=peer.to_base58(), reason=reason[:200])
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._handle_dead_peer(peer)
        self._forget_all_subscriptions(peer)  # they came on the stream just dropped

    async def _handle_rpc(self, peer: ID, rpc: rpc_pb2.RPC) -> None:
        """What py-libp2p's read loop does with one RPC, within pubsub_limits.py's bounds."""
        if not self._sender_records.take(rpc, peer, trio.current_time()):
            return  # as py-libp2p drops an RPC with a bad record (or, here, one too large to keep)
        rpc.ClearField("senderRecord")  # taken: gossipsub's control handling would check it again
        trimmed = trim_rpc(rpc, self.topic_ids)
        if trimmed:
            log.debug("pubsub rpc trimmed", peer=peer.to_base58(), **vars(trimmed))
        for msg in rpc.publish:
            try:
                await self.push_msg(peer, msg)
            except Exception as exc:  # noqa: BLE001 - e.g. a key that does not parse: the message is dropped
                log.debug("gossip message dropped", peer=peer.to_base58(), error=f"{type(exc).__name__}: {exc}")
        if len(rpc.subscriptions) <= self.max_subscriptions_per_rpc:
            for sub in rpc.subscriptions:
                if sub.subscribe and not self._may_subscribe(peer, sub.topicid):
                    continue
                self.handle_subscription(peer, sub)
        if rpc.HasField("control"):
            await self.router.handle_rpc(rpc, peer)

    def _may_subscribe(self, peer: ID, topic: str) -> bool:
        """Whether a subscription of `peer` to `topic` may be noted (py-libp2p logs a warning for each that may not)."""
        known = self.peer_topics.get(topic)
        if known is not None and peer in known:
            return True
        return self._peer_subscription_count.get(peer, 0) < self.max_subscriptions_per_peer
