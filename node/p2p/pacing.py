"""How long a publish waits for room in peers' outbound queues: back-pressure no peer can turn into a stall.

py-libp2p's publish has none: an RPC for a peer whose queue (32) is full is dropped silently. So a
publish first waits while some peer's queue holds more than `depth` RPCs, at most `max_wait_s`; a peer
that outlasts that is given up on (not waited for) until its queue drains below `depth` again.

That alone let one peer hold every publish of the node: read one RPC just before each wait ends, and
every publish (results, heartbeats, busy answers) waits `max_wait_s`. So the waiting is budgeted too:
a credit of at most `max_wait_s` that grows by `share` seconds a second and that every wait spends.
Peers, slow or hostile and however many, hold publishing back `share` of the time at most, on average;
past the credit a publish goes out at once (a full queue then drops, as it would without pacing).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import structlog
import trio

log = structlog.get_logger(__name__)

QUEUE_DEPTH = 8  # a publish waits while any peer's outbound queue (32 RPCs) holds more
POLL_S = 0.002
MAX_WAIT_S = 2.0  # a frozen peer's queue never empties: give up waiting and publish anyway
WAIT_SHARE = 0.1  # of the time, on average, publishes may spend waiting
SPENT_LOG_WINDOW_S = 10.0


class OutboundPacing:
    """Waits before a publish for peers whose outbound queues are too full, within a budget of time."""

    def __init__(
        self,
        depths: Callable[[], Iterable[tuple[Hashable, int]]],
        *,
        depth: int = QUEUE_DEPTH,
        max_wait_s: float = MAX_WAIT_S,
        share: float = WAIT_SHARE,
        poll_s: float = POLL_S,
    ) -> None:
        """`depths`: each peer and how many RPCs its outbound queue holds now."""
        self._depths = depths
        self._depth = depth
        self._max_wait_s = max_wait_s
        self._share = share
        self._poll_s = poll_s
        self._credit = max_wait_s
        self._credit_at: float | None = None
        self._stuck: set[Hashable] = set()
        self.timeouts = 0  # waits that ran to max_wait_s (their peers given up on)
        self.spent = 0  # publishes that found the credit spent and went out without waiting enough
        self._spent_logged_at = -SPENT_LOG_WINDOW_S

    async def wait(self) -> None:
        """Until no peer's queue is too full, the peer is given up on, or the credit is spent."""
        started = trio.current_time()
        if self._credit_at is not None:
            self._credit = min(self._max_wait_s, self._credit + (started - self._credit_at) * self._share)
        allowed = min(self._max_wait_s, max(self._credit, 0.0))
        try:
            while busy := self._busy():
                waited = trio.current_time() - started
                if waited >= self._max_wait_s:
                    self._stuck |= busy
                    self.timeouts += 1
                    peers = [str(peer) for peer in busy][:8]
                    log.warning("pacing timed out", waited_s=self._max_wait_s, peers=peers, count=self.timeouts)
                    return
                if waited >= allowed:
                    self._note_spent(len(busy))
                    return
                await trio.sleep(self._poll_s)
        finally:
            self._credit_at = trio.current_time()
            self._credit -= self._credit_at - started

    def _busy(self) -> set[Hashable]:
        """Peers whose outbound queue is too full to publish into, less those given up on."""
        busy = {peer for peer, depth in self._depths() if depth > self._depth}
        self._stuck &= busy  # a peer whose queue drained is waited for again
        return busy - self._stuck

    def _note_spent(self, peers: int) -> None:
        self.spent += 1
        now = trio.current_time()
        if now - self._spent_logged_at >= SPENT_LOG_WINDOW_S:
            self._spent_logged_at = now
            log.warning("pacing budget spent: publishing without waiting", peers=peers, count=self.spent)
