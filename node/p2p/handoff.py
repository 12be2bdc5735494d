"""Gossip messages handed from the Trio thread to asyncio subscription queues, within a budget.

Each topic has a budget, in messages and in bytes, of what was handed over and not yet
taken off its queue. A message counts its raw bytes and what its validator's verdict holds
(`held_size`): a decoded message can take twenty times its bytes. It is charged on the Trio
thread BEFORE `call_soon_threadsafe`, so a flood cannot pile up callbacks on the event loop. A message over budget is dropped,
counted (`GossipQueues.dropped`, exported as compute_node_gossip_dropped_total) and
logged at most once per `DROP_LOG_WINDOW_S` per topic.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

DROP_LOG_WINDOW_S = 10.0
DEFAULT_QUEUE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class GossipMessage:
    """A validated gossip message from another peer."""

    topic: str
    data: bytes
    source_peer: str  # peer id of the original publisher (pubsub from_id)
    # What the topic's validator returned for these bytes when it was more than True (e.g. the
    # decoded message), so the consumer need not check them again; None: check them.
    validated: object = None
    size: int = field(default=0, compare=False)  # what it counts against its topic's budget (`held_size`)


def held_size(data: bytes, verdict: object) -> int:
    """Bytes a message and its verdict hold: the raw bytes, plus `verdict.held_bytes` when the verdict says
    (node.wire.inbound.Inbound does: a decoded message's estimated memory)."""
    held = getattr(verdict, "held_bytes", 0)
    return len(data) + (held if isinstance(held, int) and held > 0 else 0)


class HandOffBudget:
    """Messages and bytes of one topic handed from the Trio thread and not yet consumed.

    Charged on the Trio thread before the hand-off, released when a consumer takes
    the message off its queue (or when it is dropped); thread-safe.
    """

    def __init__(self, topic: str, max_messages: int, max_bytes: int) -> None:
        self.topic = topic
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self.dropped = 0
        self._not_logged = 0
        self._last_log = -DROP_LOG_WINDOW_S
        self._lock = threading.Lock()

    def charge(self, size: int) -> bool:
        """Reserve room for a message of `size` bytes; False (and counted as dropped) if there is none."""
        with self._lock:
            if self.messages < self.max_messages and self.bytes + size <= self.max_bytes:
                self.messages += 1
                self.bytes += size
                return True
            self.dropped += 1
            self._not_logged += 1
            now = time.monotonic()
            if now - self._last_log < DROP_LOG_WINDOW_S:
                return False
            self._last_log, not_logged = now, self._not_logged
            self._not_logged = 0
            held = (self.messages, self.bytes)
        log.warning(
            "message dropped: queue full",
            topic=self.topic,
            dropped=not_logged,
            dropped_total=self.dropped,
            queued_messages=held[0],
            queued_bytes=held[1],
        )
        return False

    def release(self, size: int) -> None:
        """Give back one message of `size` bytes."""
        with self._lock:
            self.messages -= 1
            self.bytes -= size


class BudgetQueue(asyncio.Queue[GossipMessage]):
    """A subscription queue that gives a message's room back to its budget when it is taken."""

    def __init__(self, budget: HandOffBudget) -> None:
        super().__init__(budget.max_messages)
        self.budget = budget

    def _get(self) -> GossipMessage:
        message: GossipMessage = super()._get()
        self.budget.release(message.size)
        return message


class GossipQueues:
    """The subscription queue of each topic, with its budget: `charge` on the Trio thread, `deliver` on the loop."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self.queues: dict[str, BudgetQueue] = {}

    def __contains__(self, topic: str) -> bool:
        return topic in self.queues

    def open(self, topic: str) -> BudgetQueue:
        """The new queue of `topic`."""
        queue = self.queues[topic] = BudgetQueue(HandOffBudget(topic, self._max_messages, self._max_bytes))
        return queue

    def remove(self, topic: str) -> None:
        """Drop the topic's queue."""
        self.queues.pop(topic, None)

    def charge(self, topic: str, size: int) -> bool:
        """Room for a message of `topic` (on the Trio thread); False: not subscribed, or dropped."""
        queue = self.queues.get(topic)
        return queue is not None and queue.budget.charge(size)

    def deliver(self, message: GossipMessage) -> None:
        """Put a charged message on its queue (on the event loop)."""
        queue = self.queues.get(message.topic)
        if queue is None:
            return
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:  # the budget admits no more than the queue holds; kept as a guard
            queue.budget.release(message.size)

    @property
    def dropped(self) -> int:
        """Messages received and dropped because their topic's budget was full."""
        return sum(queue.budget.dropped for queue in list(self.queues.values()))
