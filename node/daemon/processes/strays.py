"""What an execution process's lines cost the daemon without cause, and when that makes it a broken process.

- Answers nobody waits for: a few follow a cancel or a probe's timeout (the answer was on its way). A stream
  of them is a process that sends what it likes, maybe one a workflow took over: each line costs the daemon's
  event loop its parse, a long line more, so each counts once per STRAY_BYTES it holds. Past MAX_STRAYS within
  STRAY_WINDOW_S the process has broken the protocol. Requests past the tool egress's bounds count the same.
- What its lines cost to read: a valid message can hide megabytes that are parsed and dropped (a JSON key
  given twice, the last one kept), and valid lines of a fraction of a millisecond can come back to back. Each
  line's parse is taken from an allowance of PARSE_PER_SECOND (PARSE_BURST at once); past it, the process has
  broken the protocol. An honest line parses in microseconds (a task's answer, a streamed delta), the largest
  (a 4 MiB proof) in ~25 ms; a collection of the daemon's heap that a parse sets off counts too, and the burst
  leaves room for it.
handle.py ends a process that broke the protocol as a crash.
"""

from __future__ import annotations

from node.daemon.failures import RecentFailures
from node.execution.protocol import ProtocolError
from workflows.allowance import Allowance

MAX_STRAYS = 256
STRAY_WINDOW_S = 60.0
STRAY_BYTES = 256 * 1024
PARSE_PER_SECOND = 0.1
PARSE_BURST = 2.0


class StrayAnswers:
    """One process's answers nobody waited for, within the window."""

    def __init__(self) -> None:
        self._recent = RecentFailures()

    def note(self, now: float, size: int) -> None:
        """One more, of `size` bytes, at `now` (monotonic seconds); ProtocolError past MAX_STRAYS."""
        if self._recent.record(now, STRAY_WINDOW_S, 1 + size // STRAY_BYTES) > MAX_STRAYS:
            raise ProtocolError(f"more than {MAX_STRAYS} answers in {STRAY_WINDOW_S:g} s for tasks it was not given")


class ParseCost:
    """What one process's lines cost the daemon to parse."""

    def __init__(self) -> None:
        self._allowance = Allowance(PARSE_PER_SECOND, PARSE_BURST)

    def note(self, seconds: float) -> None:
        """A line took `seconds` of the event loop's CPU to parse; ProtocolError once the allowance is spent."""
        self._allowance.take(seconds)
        if self._allowance.left() < 0:
            raise ProtocolError(f"its lines took more than {PARSE_PER_SECOND:g} s a second of the daemon's to parse")
