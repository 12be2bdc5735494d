"""PeerGoneNotifee: tells its sink when a peer's last connection to this host closed.

A publisher sends a task on gossip to a node it may be connected to (a gossip peer, or one it
dialled for a stream that did not open in time). If that node dies, the task's stream (if any)
is not there to tell: only its connection's close does (a killed peer's was seen within ~0.3 s
here), long before its heartbeat ages out. py-libp2p calls a notifee for each
connection that closes; the sink hears of a peer only when none of its connections is left
(a peer may hold two: one it dialled, one we dialled). It runs on the Trio thread, inside
libp2p's notification of the close: the sink must be quick and must not raise. The `back` sink, if any,
hears of each connection that opens, the same way (a peer that went is reachable again).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from multiaddr import Multiaddr

from node.p2p.stream_only import has_open_connection

log = structlog.get_logger(__name__)

PeerSink = Callable[[str], None]
"""(peer id) -> None, on the Trio thread: the peer has no connection to us any more."""


class PeerGoneNotifee(INotifee):
    """Calls `sink(peer id)` when a peer's last connection to `host` closes, and `back(peer id)` when one opens."""

    def __init__(self, host: IHost, sink: PeerSink, back: PeerSink | None = None) -> None:
        self._host = host
        self._sink = sink
        self._back = back

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        """A connection closed (removed from the swarm already): the sink hears of its peer if it has no other."""
        peer = getattr(getattr(conn, "muxed_conn", None), "peer_id", None)
        if peer is None or has_open_connection(self._host, peer):  # another connection to it is still up
            return
        try:
            self._sink(peer.to_base58())
        except Exception:  # noqa: BLE001 - an observer must not break libp2p's close of a connection
            log.exception("peer-gone observer failed", peer=peer.to_base58())

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        """Not of interest."""
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        """Not of interest."""
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        """A connection opened (its peer authenticated): the `back` sink hears of its peer."""
        peer = getattr(getattr(conn, "muxed_conn", None), "peer_id", None)
        if self._back is not None and peer is not None:
            try:
                self._back(peer.to_base58())
            except Exception:  # noqa: BLE001 - an observer must not break libp2p's opening of a connection
                log.exception("peer-back observer failed", peer=peer.to_base58())
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Not of interest."""
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Not of interest."""
        await trio.lowlevel.checkpoint()
