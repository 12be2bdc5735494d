"""The signals that stop a node (drained), and EarlyStops: those that come before the server's own handlers exist.

The launcher (launch.py) installs EarlyStops while it spawns the first execution process and imports the daemon
(a second or more); the server (server.py) then takes them over. Without it, SIGTERM's default action ended the
process at once (exit -15, the child with it), without a log line.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: a closed terminal stops it as SIGTERM does


class EarlyStops:
    """The stop signals that come before the server's own handlers exist, kept for it: `hand_to(handler)` replays
    them and sends it any that still come here (the loop binds a signal's callback when it reads the signal, so
    one read just before the server's handlers were installed runs this one after them)."""

    def __init__(self) -> None:
        self._asked: list[signal.Signals] = []
        self._handler: Callable[[signal.Signals], None] | None = None

    def __call__(self, sig: signal.Signals) -> None:
        """The loop's handler of each stop signal: kept, or sent on once handed over."""
        if self._handler is not None:
            self._handler(sig)
        else:
            self._asked.append(sig)

    def hand_to(self, handler: Callable[[signal.Signals], None]) -> None:
        """From now on signals go to `handler`, those kept first."""
        self._handler = handler
        asked, self._asked = self._asked, []
        for sig in asked:
            handler(sig)
