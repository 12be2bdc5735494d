"""An amount that refills at a steady rate up to a burst: seconds of CPU, or requests.

The tool egress spends one on its requests' CPU (cpu_meter.py) and on how many start; the daemon on what an
execution process's lines cost to parse; the gateway one per caller on its requests (node/gateway/auth.py). `take` may go below zero (the last step's cost is only known once it
ran); callers ask `left()` before starting what would spend it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Allowance:
    """`per_second` units a second, at most `burst` held, read on `clock` (monotonic seconds)."""

    def __init__(self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second, self._burst, self._clock = per_second, burst, clock
        self._left, self._counted_at = burst, clock()

    def left(self) -> float:
        """What is left now (below zero: overdrawn)."""
        now = self._clock()
        self._left = min(self._burst, self._left + (now - self._counted_at) * self._per_second)
        self._counted_at = now
        return self._left

    def take(self, amount: float) -> None:
        """Spend `amount`, below zero if it comes to that."""
        self._left = self.left() - amount
