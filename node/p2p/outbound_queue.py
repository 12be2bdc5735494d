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
- The data RPCs waiting in all queues together (`held`) are kept within `total_bytes`. A peer with
  nothing waiting may always have one (a reader that keeps up: one RPC being written, the next
  waiting); past that, a data push that would pass the total first evicts the oldest waiting data
  RPCs (never control) of the peers with the most waiting, the slowest readers first among equals,
  while they have at least as much waiting as the pushing peer would; if that is not enough room, the
  push is refused. What cannot be evicted is not in the total: the RPC each sending loop is writing (a
  trickle reader keeps one for minutes) and control, each bounded per peer above. So slow peers fill
  the total only until a lighter one needs room, and a peer that keeps up is never refused for their
  bytes. (The first version counted the RPCs being written too and evicted only from strictly heavier
  peers: 65 trickle readers, each writing one IWANT answer, pinned the total and every honest push was
  refused; a last reviewer's find.)
- Each RPC carries one message at most (`max_message_size` is the largest message and its overhead,
  not py-libp2p's 1 MiB): an IWANT answer of several messages is split, so what a peer's sending
  loop holds is one message, never four.

Memory, at most: `total_bytes` waiting, plus for each pubsub peer one RPC being written, one waiting
and its control reserve: 64 MiB + 300 x (2 x ~0.26 + 0.5) MiB ~ 370 MiB at the connection limits,
against py-libp2p's 300 x 32 x 1 MiB. A peer that holds its whole cap is one that reads less than the
gossip it is sent.

Sizes, measured (three reader hosts in a process of their own, 255 KiB messages published on two
cores, queues sampled every 2 ms): readers that keep up (10 messages/s, all delivered) left at most
one RPC queued (261,523 bytes) beside the one being written; past what they keep up with (20/s, 83 %
delivered) their queues filled to 32 RPCs (8.4 MB) and dropped the rest anyway. `peer_bytes` is
PEER_QUEUE_MESSAGES of the largest messages: the depth publishing waits at (pacing.py) and the room it
then uses, ~2.6 MiB at the default 256 KiB limit. TOTAL_QUEUE_BYTES, 64 MiB, is ~25 peers' waiting
data at that cap. Each push is one `ByteSize()`; a data push when the total is full costs a sort of
the queues (300 at most).
"""

from __future__ import annotations

import time
from collections import deque

import structlog
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize, OutBoundQueueSize, PriorityQueue, RpcQueue

from node.p2p.pacing import QUEUE_DEPTH

log = structlog.get_logger(__name__)

# Largest messages one peer's queue may hold, the one being written included. pacing.py holds our own publishes
# while a peer has more than QUEUE_DEPTH waiting (the one being written not counted), then adds one: with less room
# than that, a burst of large publishes would be refused here before pacing ever waited.
PEER_QUEUE_MESSAGES = QUEUE_DEPTH + 2
RPC_OVERHEAD_BYTES = 8 * 1024  # a message's key, signature, ids and topic, and the RPC's signed peer record
CONTROL_RESERVE_BYTES = 512 * 1024  # control past a full queue of data: an IWANT of 5,000 ids is ~340 KB
TOTAL_QUEUE_BYTES = 64 * 1024 * 1024  # the data waiting in all peers' queues together
DROP_LOG_WINDOW_S = 10.0  # refusals and evictions are logged once a window, with the counts so far


class OutboundBudget:
    """The byte caps of every peer's outbound queue, and the data waiting in all of them together."""

    def __init__(self, peer_bytes: int, *, control_reserve: int, total_bytes: int, rpc_bytes: int) -> None:
        self.peer_bytes = peer_bytes
        self.control_reserve = control_reserve
        self.total_bytes = total_bytes
        self.rpc_bytes = rpc_bytes  # the largest RPC a queue sends: one message and its overhead
        self.held = 0  # bytes of the data RPCs waiting in all queues (not those being written, not control)
        self.refused = 0  # pushes refused so far
        self.evicted = 0  # queued RPCs dropped so far to make room for a lighter peer's
        self.queues: set[ByteBoundedRpcQueue] = set()  # the open ones
        self._logged_at = -DROP_LOG_WINDOW_S

    @classmethod
    def for_messages(cls, max_message_bytes: int) -> OutboundBudget:
        """The node's budget for gossip messages of at most `max_message_bytes`."""
        rpc_bytes = max_message_bytes + RPC_OVERHEAD_BYTES
        return cls(
            PEER_QUEUE_MESSAGES * rpc_bytes,
            control_reserve=CONTROL_RESERVE_BYTES,
            total_bytes=TOTAL_QUEUE_BYTES,
            rpc_bytes=rpc_bytes,
        )

    def admit(self, queue: ByteBoundedRpcQueue, size: int, priority: bool) -> bool:
        """Whether `queue` may take an RPC of `size` bytes, after evicting heavier peers' data if the total needs it."""
        cap = self.peer_bytes + (self.control_reserve if priority else 0)
        if queue.held + size > cap or not (priority or not queue.waiting or self._make_room(queue, size)):
            self.refused += 1
            self._note_drop()
            return False
        return True

    def _make_room(self, queue: ByteBoundedRpcQueue, size: int) -> bool:
        if self.held + size <= self.total_bytes:
            return True
        after, now = queue.waiting + size, time.monotonic()
        others = (q for q in self.queues if q is not queue and q.waiting >= after)
        for heavier in sorted(others, key=lambda q: (q.waiting, q.writing_for(now)), reverse=True):
            while heavier.waiting >= after and self.held + size > self.total_bytes and heavier.evict_oldest_data():
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

    def pop_sized(self) -> tuple[rpc_pb2.RPC, int, bool] | None:
        """The next RPC, control first, its size and whether it was data; None when empty."""
        if self._priority:
            return self._priority.popleft(), self._priority_sizes.popleft(), False
        if self._non_priority:
            return self._non_priority.popleft(), self._data_sizes.popleft(), True
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
    `waiting` counts the data RPCs queued alone: its share of the budget's total. Closed (the peer gone or its
    stream failed), it drops what it holds: py-libp2p's went on handing its RPCs to a sending loop whose stream
    had failed."""

    def __init__(
        self, budget: OutboundBudget, max_size: int = OutBoundQueueSize, max_message_size: int = DefaultMaxMessageSize
    ) -> None:
        super().__init__(max_size, min(max_message_size, budget.rpc_bytes))  # one message an RPC: see the module
        self._queue: _SizedQueue = _SizedQueue(max_size)
        self._budget = budget
        self.held = 0
        self.waiting = 0  # bytes of the data RPCs queued
        self._writing = 0  # bytes of the RPC the sending loop took last
        self._writing_since: float | None = None  # when it took it (None: it is waiting for one)
        budget.queues.add(self)

    def push(self, rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
        """Enqueue `rpc` and wake the sending loop; False (not enqueued) when closed, or full in RPCs or bytes."""
        if self._closed or len(self._queue) >= self._queue.max_size:
            return False
        size = rpc.ByteSize()
        if not self._budget.admit(self, size, priority):
            return False
        self._queue.push_sized(rpc, priority, size)
        self.held += size
        if not priority:
            self._wait(size)
        self._notify.set()
        self._notify = trio.Event()
        return True

    async def pop(self) -> rpc_pb2.RPC | None:
        """The next RPC, once there is one; None once closed. The one taken before is written by now."""
        self.held -= self._writing
        self._writing, self._writing_since = 0, None
        while True:
            if (popped := self._queue.pop_sized()) is not None:
                rpc, self._writing, data = popped
                self._writing_since = time.monotonic()
                if data:
                    self._wait(-self._writing)  # being written now: no longer in the total
                return rpc
            if self._closed:
                return None
            await self._notify.wait()

    def writing_for(self, now: float) -> float:
        """Seconds the sending loop has been writing its RPC (0.0 when it waits for one): how slow the reader is."""
        return 0.0 if self._writing_since is None else now - self._writing_since

    def evict_oldest_data(self) -> bool:
        """Drop the oldest data RPC queued (not one being written, never control): whether there was one."""
        size = self._queue.remove_oldest_data()
        if size is None:
            return False
        self.held -= size
        self._wait(-size)
        return True

    def close(self) -> None:
        """Stop the sending loop and release every byte held."""
        super().close()
        self._queue.clear()
        self._wait(-self.waiting)
        self.held = self._writing = 0
        self._writing_since = None
        self._budget.queues.discard(self)

    def _wait(self, delta: int) -> None:
        self.waiting += delta
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
