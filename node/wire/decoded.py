"""The gossip validator's decodes, kept for the topic's consumer: a message is decoded once.

The validator (`GossipGate.validate`) runs on the libp2p thread and gives libp2p only a
verdict; the consumer on the event loop then takes the same bytes off its queue
(`consume`). The validator `put`s its decode under the message's exact bytes, and the
consumer `take`s it (once) instead of checking the envelope, the signature and the body
a second time. What the consumer does not find (a message it never validated, or one
forgotten for room) it decodes itself, so a miss costs time, never a check.

Bounded by entries and bytes: a message validated but never queued (dropped over the
hand-off budget) is forgotten oldest first. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class DecodedMessages(Generic[T]):
    """Decodes by the message bytes they came from, oldest forgotten first past the bounds."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, T] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, data: bytes, decoded: T) -> None:
        """Keep `decoded` for `data` (a message larger than the byte bound is not kept)."""
        size = len(data)
        if size > self._max_bytes:
            return
        with self._lock:
            if data in self._entries:
                return
            while self._entries and (len(self._entries) >= self._max_entries or self._bytes + size > self._max_bytes):
                oldest, _ = self._entries.popitem(last=False)
                self._bytes -= len(oldest)
            self._entries[data] = decoded
            self._bytes += size

    def take(self, data: bytes) -> T | None:
        """The decode kept for exactly these bytes (and forget it), or None."""
        with self._lock:
            decoded = self._entries.pop(data, None)
            if decoded is not None:
                self._bytes -= len(data)
            return decoded
