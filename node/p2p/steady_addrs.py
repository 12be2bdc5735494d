"""SteadyAddrs: a host's advertised addresses, rebuilt at most every few seconds instead of per RPC.

py-libp2p puts our signed peer record (`senderRecord`) on every pubsub RPC it sends, and to tell
whether its cached record is still current it rebuilds `host.get_addrs()` each time: every
listener's address re-read and re-parsed with `/p2p/<peer id>` appended. That was ~60 us a call in
a loop and about a quarter of the Trio thread's CPU per round trip in place (node, publisher and
echo peer alike: benchmarks/PROFILE-per-task.md, 2026-12-04). The addresses change only when a
listener opens (at start) or identify confirms an observed address, so a copy at most `refresh_s`
old serves as well: the record is still signed, sent and checked as before, and a new address
reaches it within `refresh_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from libp2p.host.basic_host import BasicHost
from multiaddr import Multiaddr

ADDRS_REFRESH_S = 5.0


class SteadyAddrs:
    """`compute()` (a host's `get_addrs`), called again only once its last answer is `refresh_s` old."""

    def __init__(
        self,
        compute: Callable[[], list[Multiaddr]],
        refresh_s: float = ADDRS_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._refresh_s = refresh_s
        self._clock = clock
        self._addrs: list[Multiaddr] = []
        self._expires = -float("inf")

    def __call__(self) -> list[Multiaddr]:
        """The addresses, computed again once refresh_s has passed."""
        now = self._clock()
        if now >= self._expires:
            self._addrs = list(self._compute())
            self._expires = now + self._refresh_s
        return list(self._addrs)  # a list of its own: callers may change theirs


def keep_addrs_steady(host: BasicHost, refresh_s: float = ADDRS_REFRESH_S) -> SteadyAddrs:
    """Answer `host.get_addrs()` (for this host only) from a copy at most `refresh_s` old.

    Call once the host listens: a copy taken before would hold no listen address for `refresh_s`.
    """
    steady = SteadyAddrs(host.get_addrs, refresh_s)
    host.get_addrs = steady  # type: ignore[method-assign]  # this instance only; the class is untouched
    return steady
