"""Gossip's seen-message cache: the ids of valid messages, kept for the replay window in time buckets.

py-libp2p's `LastSeenCache` keeps a dict of id -> expiry second and a thread that walks every
entry each minute to drop the expired ones, holding the GIL throughout (30 ms at 475,000 ids,
what 12 minutes of a node's tasks and results at 330 tasks/s add up to): the Trio thread and
the event loop stop for that long. Here each id is listed in the bucket (BUCKET_S seconds) it was
last seen in, and a bucket older than the window is forgotten when a new one starts, its own ids
only: no thread, and no walk over the ids still in the window.

An id is kept by its first KEY_BYTES (15) bytes. Ids are sha256 digests of the message
(`gossip.content_message_id`); two different messages share a 15-byte prefix with probability
2^-120, and making a message whose id starts like another's is a 120-bit second preimage. Per id
this holds ~100 bytes of RSS (the key, the dict entry, one list slot) against py-libp2p's ~174,
and a lookup is one dict lookup (benchmarks/PROFILE-per-task.md, "a long run").

The window is a duration, so it is kept on the monotonic clock: a wall clock set back or forward
(NTP, an operator) neither keeps ids for the size of the jump nor forgets them all at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

BUCKET_S = 60  # as py-libp2p's sweep interval: an id is kept at most this long past the window
KEY_BYTES = 15  # with the bytes object's 33-byte header, 48 bytes: one of the allocator's size classes


class WindowedSeenCache:
    """Message ids seen in the last `ttl` s (at least `ttl`, at most `ttl` + BUCKET_S).

    As py-libp2p's `LastSeenCache`: an id that is seen again (`has` or `add`) counts from then.
    Called on the Trio thread only (py-libp2p's pubsub and gossipsub), so it takes no lock.
    """

    def __init__(self, ttl: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        # Each id maps to the bucket it was last seen in; a bucket lists the ids seen in it, each once.
        self._bucket_of: dict[bytes, list[bytes]] = {}
        self._buckets: deque[tuple[int, list[bytes]]] = deque()  # (bucket start, its ids), newest last

    def add(self, key: bytes) -> bool:
        """Remember `key` from now on; True if it was not remembered already."""
        short = bytes(key[:KEY_BYTES])
        current = self._current()
        bucket = self._bucket_of.get(short)
        if bucket is not current:
            self._move(short, current)
        return bucket is None

    def has(self, key: bytes) -> bool:
        """Whether `key` was seen within the window (if so it counts from now)."""
        short = bytes(key[:KEY_BYTES])
        current = self._current()
        bucket = self._bucket_of.get(short)
        if bucket is None:
            return False
        if bucket is not current:
            self._move(short, current)
        return True

    def length(self) -> int:
        """How many ids are held."""
        return len(self._bucket_of)

    def stop(self) -> None:
        """Nothing to stop (no sweeping thread); kept for py-libp2p's interface."""

    def _move(self, short: bytes, current: list[bytes]) -> None:
        # The id stays listed in its older bucket too; that listing is skipped when the bucket goes.
        self._bucket_of[short] = current
        current.append(short)

    def _current(self) -> list[bytes]:
        """The bucket of this moment, after forgetting the buckets the window has passed."""
        now = int(self._clock())
        start = now - now % BUCKET_S
        if not self._buckets or self._buckets[-1][0] != start:
            # A bucket's last id was seen before its start + BUCKET_S: past start + BUCKET_S + ttl, all are out.
            while self._buckets and self._buckets[0][0] + BUCKET_S + self.ttl <= now:
                _, expired = self._buckets.popleft()
                for short in expired:
                    if self._bucket_of.get(short) is expired:
                        del self._bucket_of[short]
            self._buckets.append((start, []))
        return self._buckets[-1][1]
