"""Whether this machine's clock is off by enough that the network's messages are refused for their time.

Envelopes older than 600 s or more than 60 s ahead are refused (node/wire/envelope.py). A node whose
clock is off by more than that refuses every task and heartbeat it hears, and its peers refuse its
heartbeats: it drops out of the network while its loops, model and peers all look fine. A few messages
refused for their time say nothing (anyone can replay old ones); every message heard in `window_s`
refused for its time, at least `min_refused` of them and none accepted, says the clock is wrong.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 300.0
MIN_REFUSED = 10
TIME_REASONS = frozenset({"stale", "future"})  # node.wire.envelope's reasons for a message's time


class ClockWatch:
    """Counts messages accepted and refused for their time (from the P2P thread and the event loop)."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        min_refused: int = MIN_REFUSED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._min_refused = min_refused
        self._clock = clock
        self._last_heard: float | None = None
        self._refused: deque[float] = deque(maxlen=min_refused)  # when the latest were refused
        self.refused_total = 0

    def heard(self, topic: str = "") -> None:
        """A message passed every check, its time included."""
        self._last_heard = self._clock()

    def rejected(self, reason: str) -> None:
        """A message was refused for `reason` (counted when it is one of its time)."""
        if reason in TIME_REASONS:
            self._refused.append(self._clock())
            self.refused_total += 1

    def problem(self) -> str | None:
        """Why the clock looks wrong, or None."""
        now = self._clock()
        if len(self._refused) < self._min_refused or now - self._refused[0] > self._window_s:
            return None
        if self._last_heard is not None and now - self._last_heard <= self._window_s:
            return None
        return (
            f"every message heard in the last {self._window_s:g} s was refused as too old or from the future "
            f"({self._min_refused} or more, none accepted): this machine's clock is likely off by over a minute; "
            "sync it (timedatectl set-ntp true)"
        )
