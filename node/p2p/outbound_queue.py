"""Pubsub's outbound queues bounded in bytes: per peer, and all peers' together within one budget.

py-libp2p (0.8.1) queues at most 32 RPCs for each pubsub peer (`RpcQueue`, go-libp2p-pubsub's
OutBoundQueueSize) whatever their size, and a message may be up to 256 KiB: a peer that reads a
trickle of its stream (1 KB every 2 s, which no write timeout notices) while large tasks are relayed
makes the node hold 32 x ~262 KB, ~8.4 MB, for as long as it stays; at the connection limits' 300
peers, ~2.5 GB. Here each queue is a `ByteBoundedRpcQueue`, which also counts bytes:

- A peer's queue, the RPC being written to it included, holds at most `peer_bytes` of data (the RPCs
  gossip pushes without priority) and `control_reserve` more of control (GRAFT, PRUNE, IHAVE, IWANT:
  gossipsub pushes them with priority), so a full queue of data still takes the control that keeps
  the mesh working. A push past it is refused, as py-libp2p refuses a push to a queue of 32: the
  router drops that RPC (a debug line of py-libp2p's, off at the node's log level) and keeps a
  dropped GRAFT or PRUNE to send with the peer's next RPC; nothing is retried in a loop.
- All queues together hold at most `total_bytes`. A push that would pass it first evicts the oldest
  data RPCs (control never) of the peers holding the most bytes, while they hold more than the
  pushing peer would after the push; if that is not enough room, the push is refused. So slow
  peers fill the budget only until a lighter one needs room: an honest peer, whose queue a healthy
  reader keeps near empty, is never refused for their bytes.

Sizes, measured (three reader hosts in a process of their own, 255 KiB messages published on two
cores, queues sampled every 2 ms): readers that keep up (10 messages/s, all delivered) left at most
one RPC queued (261,523 bytes) beside the one being written; past what they keep up with (20/s, 83 %
delivered) their queues filled to 32 RPCs (8.4 MB) and dropped the rest anyway. `peer_bytes` is
PEER_QUEUE_MESSAGES of the largest messages: the depth publishing waits at (pacing.py, 8 RPCs) in
the largest ones, ~2 MiB at the default 256 KiB limit. TOTAL_QUEUE_BYTES, 64 MiB, is ~30 peers at
that cap; should all 300 peers the connection limits allow be full, 218 KiB each (before: ~2.5 GB).
Each push is one `ByteSize()`; a budget full costs a pass over the queues (300 at most) per push.
"""

from __future__ import annotations

import time
from collections import deque

import structlog
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize, OutBoundQueueSize, PriorityQueue, RpcQueue

log = structlog.get_logger(__name__)

PEER_QUEUE_MESSAGES = 8  # largest messages one peer's queue may hold (pacing.py waits at 8 RPCs)
RPC_OVERHEAD_BYTES = 8 * 1024  # a message's key, signature, ids and topic, and the RPC's signed peer record
CONTROL_RESERVE_BYTES = 512 * 1024  # control past a full queue of data: an IWANT of 5,000 ids is ~340 KB
TOTAL_QUEUE_BYTES = 64 * 1024 * 1024  # all peers' queues together
DROP_LOG_WINDOW_S = 10.0  # refusals and evictions are logged once a window, with the counts so far


class OutboundBudget:
    """The byte caps of every peer's outbound queue, and the bytes all of them hold together."""

    def __init__(self, peer_bytes: int, *, control_reserve: int, total_bytes: int) -> None:
        self.peer_bytes = peer_bytes
        self.control_reserve = control_reserve
        self.total_bytes = total_bytes
        self.held = 0  # bytes in all queues, the RPCs being written included
        self.refused = 0  # pushes refused so far
        self.evicted = 0  # queued RPCs dropped so far to make room for a lighter peer's
        self.queues: set[ByteBoundedRpcQueue] = set()  # the open ones
        self._logged_at = -DROP_LOG_WINDOW_S

    @classmethod
    def for_messages(cls, max_message_bytes: int) -> OutboundBudget:
        """The node's budget for gossip messages of at most `max_message_bytes`."""
        return cls(
            PEER_QUEUE_MESSAGES * (max_message_bytes + RPC_OVERHEAD_BYTES),
            control_reserve=CONTROL_RESERVE_BYTES,
            total_bytes=TOTAL_QUEUE_BYTES,
        )

    def admit(self, queue: ByteBoundedRpcQueue, size: int, priority: bool) -> bool:
        """Whether `queue` may take an RPC of `size` bytes, after evicting heavier peers' data if the total needs it."""
        cap = self.peer_bytes + (self.control_reserve if priority else 0)
        if queue.held + size > cap or not self._make_room(queue, size):
            self.refused += 1
            self._note_drop()
            return False
        return True

    def _make_room(self, queue: ByteBoundedRpcQueue, size: int) -> bool:
        if self.held + size <= self.total_bytes:
            return True
        after = queue.held + size
        for heavier in sorted(self.queues, key=lambda q: q.held, reverse=True):
            if heavier.held <= after:
                break  # the rest hold less still
            while heavier.held > after and self.held + size > self.total_bytes and heavier.evict_oldest_data():
                self.evicted += 1
            if self.held + size <= self.total_bytes:
                self._note_drop()
                return True
        return False

    def _note_drop(self) -> None:
        if (now := time.monotonic()) - self._logged_at >= DROP_LOG_WINDOW_S:  # any peer can cause them
            self._logged_at = now
            log.info(
                "pubsub outbound rpcs dropped: queue bytes full",
                refused=self.refused,
                evicted=self.evicted,
                held_bytes=self.held,
            )


class _SizedQueue(PriorityQueue):
    """py-libp2p's two-tier queue with each RPC's size kept beside it."""

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self._priority_sizes: deque[int] = deque()
        self._data_sizes: deque[int] = deque()

    def push_sized(self, rpc: rpc_pb2.RPC, priority: bool, size: int) -> None:
        """Append `rpc` of `size` bytes (the caller checked the room)."""
        (self._priority if priority else self._non_priority).append(rpc)
        (self._priority_sizes if priority else self._data_sizes).append(size)

    def pop_sized(self) -> tuple[rpc_pb2.RPC, int] | None:
        """The next RPC, control first, and its size; None when empty."""
        if self._priority:
            return self._priority.popleft(), self._priority_sizes.popleft()
        if self._non_priority:
            return self._non_priority.popleft(), self._data_sizes.popleft()
        return None

    def remove_oldest_data(self) -> int | None:
        """Drop the oldest data RPC that carries no control (a GRAFT or PRUNE may ride on one); its size, or None."""
        for index, rpc in enumerate(self._non_priority):
            if not rpc.HasField("control"):
                del self._non_priority[index]
                size = self._data_sizes[index]
                del self._data_sizes[index]
                return size
        return None

    def clear(self) -> None:
        """Drop everything queued."""
        for items in (self._priority, self._non_priority, self._priority_sizes, self._data_sizes):
            items.clear()


class ByteBoundedRpcQueue(RpcQueue):
    """py-libp2p's per-peer outbound queue that also counts bytes within an `OutboundBudget` (see the module).

    `held` counts the bytes of the RPCs queued and the one the sending loop took last, until it asks for the next:
    py-libp2p's loop takes an RPC, writes it and only then takes another, so that one is still being written.
    Closed (the peer gone or its stream failed), it drops what it holds: py-libp2p's went on handing its
    RPCs to a sending loop whose stream had failed."""

    def __init__(
        self, budget: OutboundBudget, max_size: int = OutBoundQueueSize, max_message_size: int = DefaultMaxMessageSize
    ) -> None:
        super().__init__(max_size, max_message_size)
        self._queue: _SizedQueue = _SizedQueue(max_size)
        self._budget = budget
        self.held = 0
        self._writing = 0  # bytes of the RPC the sending loop took last
        budget.queues.add(self)

    def push(self, rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
        """Enqueue `rpc` and wake the sending loop; False (not enqueued) when closed, or full in RPCs or bytes."""
        if self._closed or len(self._queue) >= self._queue.max_size:
            return False
        size = rpc.ByteSize()
        if not self._budget.admit(self, size, priority):
            return False
        self._queue.push_sized(rpc, priority, size)
        self._add(size)
        self._notify.set()
        self._notify = trio.Event()
        return True

    async def pop(self) -> rpc_pb2.RPC | None:
        """The next RPC, once there is one; None once closed. The one taken before is written by now."""
        self._add(-self._writing)
        self._writing = 0
        while True:
            if (popped := self._queue.pop_sized()) is not None:
                rpc, self._writing = popped
                return rpc
            if self._closed:
                return None
            await self._notify.wait()

    def evict_oldest_data(self) -> bool:
        """Drop the oldest data RPC queued (not one being written, never control): whether there was one."""
        size = self._queue.remove_oldest_data()
        if size is None:
            return False
        self._add(-size)
        return True

    def close(self) -> None:
        """Stop the sending loop and release every byte held."""
        super().close()
        self._queue.clear()
        self._add(-self.held)
        self._writing = 0
        self._budget.queues.discard(self)

    def _add(self, delta: int) -> None:
        self.held += delta
        self._budget.held += delta


class OutboundQueues(dict[ID, RpcQueue]):
    """Pubsub's `peer_queues`: each queue py-libp2p registers for a peer is replaced by a `ByteBoundedRpcQueue`.

    py-libp2p makes a plain `RpcQueue` in `_handle_new_peer`, puts it here and hands the same object to the
    peer's sending loop; `sender_queue` gives that loop the replacement instead (StreamPeerAwarePubsub's
    `handle_sending_messages`). Every push goes through this mapping, so every one is bounded."""

    def __init__(self, budget: OutboundBudget) -> None:
        super().__init__()
        self.budget = budget
        self._replacing: dict[RpcQueue, ByteBoundedRpcQueue] = {}  # py-libp2p's queue -> ours, until its loop starts

    def __setitem__(self, peer: ID, queue: RpcQueue) -> None:
        if not isinstance(queue, ByteBoundedRpcQueue):
            bounded = ByteBoundedRpcQueue(self.budget, max_message_size=queue.max_message_size)
            self._replacing[queue] = bounded
            queue = bounded
        if (previous := self.get(peer)) is not None and previous is not queue:
            previous.close()  # py-libp2p closes a peer's queue before it registers another; if not, its bytes go now
        super().__setitem__(peer, queue)

    def sender_queue(self, queue: RpcQueue) -> RpcQueue:
        """The queue the sending loop handed `queue` must read: the one that replaced it."""
        return self._replacing.pop(queue, queue)
