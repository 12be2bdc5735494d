"""EarlyStops (node/daemon/stop_signals.py): stop signals that come before the server's handlers are kept for it, and one
the event loop read just before the server's handlers were installed (so it still runs the launcher's) reaches the
server too, not a list nobody reads again."""

from __future__ import annotations

import signal

from node.daemon.stop_signals import EarlyStops


def test_signals_before_the_hand_over_are_replayed_and_later_ones_forwarded() -> None:
    stops, heard = EarlyStops(), []
    stops(signal.SIGTERM)
    stops(signal.SIGINT)
    assert heard == []
    stops.hand_to(heard.append)
    assert heard == [signal.SIGTERM, signal.SIGINT]  # two: the server's second signal skips the drain, as ever
    stops(signal.SIGHUP)  # read by the loop before the server's handlers replaced this one
    assert heard == [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    stops.hand_to(heard.append)
    assert len(heard) == 3  # none replayed twice
