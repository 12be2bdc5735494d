"""Whether this machine's clock is off by enough that the network's messages are rejected for their time.

Envelopes older than 600 s or more than 60 s ahead are rejected (node/wire/envelope.py). A node whose
clock is off by more than that rejects every task and heartbeat it hears, and its peers reject its
heartbeats: it drops out of the network while its loops, model and peers all look fine. A few messages
rejected for their time say nothing (anyone can replay old ones); every message heard in `window_s`
rejected for its time, at least `min_rejected` of them and none accepted, says the clock is wrong.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 300.0
MIN_REJECTED = 10
TIME_REASONS = frozenset({"stale", "future"})  # node.wire.envelope's reasons for a message's time


class ClockWatch:
    """Counts messages accepted and rejected for their time (from the P2P thread and the event loop)."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        min_rejected: int = MIN_REJECTED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._min_rejected = min_rejected
        self._clock = clock
        self._last_heard: float | None = None
        self._rejected: deque[float] = deque(maxlen=min_rejected)  # when the latest were rejected

    def heard(self) -> None:
        """A message passed every check, its time included."""
        self._last_heard = self._clock()

    def rejected(self, reason: str) -> None:
        """A message was rejected for `reason` (counted when it is one of its time)."""
        if reason in TIME_REASONS:
            self._rejected.append(self._clock())

    def problem(self) -> str | None:
        """Why the clock looks wrong, or None."""
        now = self._clock()
        if len(self._rejected) < self._min_rejected or now - self._rejected[0] > self._window_s:
            return None
        if self._last_heard is not None and now - self._last_heard <= self._window_s:
            return None
        return (
            f"every message heard in the last {self._window_s:g} s was rejected as too old or from the future "
            f"({self._min_rejected} or more, none accepted): this machine's clock is likely off by over a minute; "
            "sync it (timedatectl set-ntp true)"
        )
