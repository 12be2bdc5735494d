"""Answers an execution process sends that nobody waits for, and when they make it a broken one.

A few follow a cancel or a probe's timeout (the answer was on its way). A stream of them is a process that
sends what it likes, maybe one a workflow took over: each line costs the daemon's event loop its parse, a long
line more, so each counts once per STRAY_BYTES it holds. Past MAX_STRAYS within STRAY_WINDOW_S the process has
broken the protocol (handle.py ends it as a crash). Requests past the tool egress's bounds count the same.
"""

from __future__ import annotations

from node.daemon.failures import RecentFailures
from node.execution.protocol import ProtocolError

MAX_STRAYS = 256
STRAY_WINDOW_S = 60.0
STRAY_BYTES = 256 * 1024


class StrayAnswers:
    """One process's answers nobody waited for, within the window."""

    def __init__(self) -> None:
        self._recent = RecentFailures()

    def note(self, now: float, size: int) -> None:
        """One more, of `size` bytes, at `now` (monotonic seconds); ProtocolError past MAX_STRAYS."""
        if self._recent.record(now, STRAY_WINDOW_S, 1 + size // STRAY_BYTES) > MAX_STRAYS:
            raise ProtocolError(f"more than {MAX_STRAYS} answers in {STRAY_WINDOW_S:g} s for tasks it was not given")
