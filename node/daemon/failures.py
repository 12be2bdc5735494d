"""Recent failures of one thing (a loop, an execution process): how many, and how long to back off.

The supervisor and the execution pool both restart what failed with a backoff that
doubles per failure and give up (or take a model out of the heartbeats) after too
many failures within a window; this is that count.
"""

from __future__ import annotations

from collections import deque


class RecentFailures:
    """Failure times within a sliding window."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def record(self, now: float, window_s: float, weight: int = 1) -> int:
        """Note a failure at `now` (monotonic seconds), `weight` times; the count within the last `window_s`."""
        self._times.extend([now] * weight)
        while self._times and now - self._times[0] > window_s:
            self._times.popleft()
        return len(self._times)

    def __len__(self) -> int:
        return len(self._times)

    def backoff(self, base_s: float, max_s: float, at_least: int = 1) -> float:
        """`base_s` doubled per recent failure past the first (or per `at_least`), capped at `max_s`."""
        return min(max_s, base_s * 2.0 ** (max(len(self._times), at_least) - 1))
