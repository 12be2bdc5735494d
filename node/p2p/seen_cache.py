"""Gossip's seen-message cache: the ids of valid messages, kept for the replay window in time buckets.

py-libp2p's `LastSeenCache` keeps a dict of id -> expiry second and a thread that walks every
entry each minute to drop the expired ones, holding the GIL throughout (30 ms at 475,000 ids,
what 12 minutes of a node's tasks and results at 330 tasks/s add up to): the Trio thread and
the event loop stop for that long. Here the ids sit in one set per BUCKET_S seconds, and the
buckets older than the window are dropped whole when a new bucket starts: no thread, no walk.

An id is kept by its first KEY_BYTES bytes. Ids are sha256 digests of the message
(`gossip.content_message_id`); two different messages share a 16-byte prefix with probability
2^-128, and making a message whose id starts like another's is a 128-bit second preimage. It
halves the memory per id (a 16-byte key against 32; measured in tests/unit/p2p/test_seen_cache.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

BUCKET_S = 60  # as py-libp2p's sweep interval: an id is kept at most this long past the window
KEY_BYTES = 16


class WindowedSeenCache:
    """Message ids seen in the last `ttl` s (at least `ttl`, at most `ttl` + BUCKET_S).

    As py-libp2p's `LastSeenCache`: an id that is seen again (`has` or `add`) counts from then.
    Called on the Trio thread only (py-libp2p's pubsub and gossipsub), so it takes no lock.
    """

    def __init__(self, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._buckets: deque[tuple[int, set[bytes]]] = deque()  # (bucket start, ids), newest last

    def add(self, key: bytes) -> bool:
        """Remember `key` from now on; True if it was not remembered already."""
        short = bytes(key[:KEY_BYTES])
        current = self._current()
        is_new = not self._forget(short)
        current.add(short)
        return is_new

    def has(self, key: bytes) -> bool:
        """Whether `key` was seen within the window (if so it counts from now)."""
        short = bytes(key[:KEY_BYTES])
        current = self._current()
        if not self._forget(short):
            return False
        current.add(short)
        return True

    def length(self) -> int:
        return sum(len(ids) for _, ids in self._buckets)

    def stop(self) -> None:
        """Nothing to stop (no sweeping thread); kept for py-libp2p's interface."""

    def _forget(self, short: bytes) -> bool:
        for _, ids in reversed(self._buckets):
            if short in ids:
                ids.remove(short)
                return True
        return False

    def _current(self) -> set[bytes]:
        """The bucket of this moment, after dropping the buckets the window has passed."""
        now = int(self._clock())
        start = now - now % BUCKET_S
        if not self._buckets or self._buckets[-1][0] != start:
            # A bucket's last id was added before its start + BUCKET_S: past start + BUCKET_S + ttl, all are out.
            while self._buckets and self._buckets[0][0] + BUCKET_S + self.ttl <= now:
                self._buckets.popleft()
            self._buckets.append((start, set()))
        return self._buckets[-1][1]
