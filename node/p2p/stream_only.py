"""StreamOnlyPeers: the peers a publisher dialled only for direct-delivery streams, pruned and bounded.

A publisher (`gossip_with_stream_peers` off) keeps every node it dials for a task out of its
gossip (pubsub.py, `StreamPeerAwarePubsub`). The nodes it dials come from heartbeats, which
anyone can sign under as many peer ids as they like, so the set must not outlive the peers in
it: an entry goes when its peer's last connection closes, when its dial fails, and in the
periodic sweep of entries without a connection; and it holds at most `limit` peers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from libp2p.abc import IHost
from libp2p.peer.id import ID

log = structlog.get_logger(__name__)

MAX_STREAM_ONLY_PEERS = 4096  # as many as a publisher's streams (PUBLISHER_STREAM_LIMITS)
DIAL_GRACE_S = 60.0  # an entry is added before its dial; the sweep spares it this long without a connection

Connected = Callable[[ID], bool]


def has_open_connection(host: IHost, peer: ID) -> bool:
    """Whether `host` has a connection to `peer` that is not closed (one still handshaking counts)."""
    return any(
        getattr(conn, "muxed_conn", None) is None or not getattr(conn.muxed_conn, "is_closed", False)
        for conn in host.get_network().get_connections(peer)
    )


class StreamOnlyPeers:
    """A bounded set of peer ids, each with when it was added (sync; used on the Trio thread only)."""

    def __init__(self, limit: int = MAX_STREAM_ONLY_PEERS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._added: dict[ID, float] = {}

    def __contains__(self, peer: object) -> bool:
        return peer in self._added

    def __len__(self) -> int:
        return len(self._added)

    def add(self, peer: ID, connected: Connected) -> bool:
        """Hold `peer` out of gossip; False when the set is full of connected peers (it is not added,
        and so gossips as any peer would: a cost in relaying, not a failure)."""
        if peer in self._added:
            return True
        if len(self._added) >= self.limit:
            self.prune(connected)
        if len(self._added) >= self.limit:
            log.warning("too many peers dialled only for streams; this one gossips", peer=peer.to_base58())
            return False
        self._added[peer] = self._clock()
        return True

    def discard(self, peer: ID) -> None:
        """Forget `peer` (it disconnected, its dial failed, or it was dialled to gossip with)."""
        self._added.pop(peer, None)

    def prune(self, connected: Connected) -> int:
        """Forget the peers without a connection that were added over DIAL_GRACE_S ago; how many went."""
        settled = self._clock() - DIAL_GRACE_S
        gone = [peer for peer, added in self._added.items() if added <= settled and not connected(peer)]
        for peer in gone:
            del self._added[peer]
        return len(gone)
