"""The signed peer record on each pubsub RPC, checked once per peer and bytes.

py-libp2p puts the sender's signed peer record (`senderRecord`) on every pubsub RPC, and checks it on
every RPC it reads, twice for one that carries control messages: the envelope parsed, its signature
verified, the peer's addresses cleared and added to the peerstore again (~47 us a call in a warm loop,
more in place; a tiny task's round trip reads one RPC on each side). A peer sends the same bytes until
its addresses change, so `SenderRecords` takes a record once and lets the same bytes from the same peer
pass without the work for RECHECK_S; after that the next RPC checks it again (and renews its addresses'
two-hour TTL). Bytes that differ are always checked: a forged record is refused as before.
"""

from __future__ import annotations

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record

from node.p2p.bounded_peerstore import MAX_RECORD_BYTES

RECHECK_S = 60.0
# Peers remembered at most (each entry holds at most MAX_RECORD_BYTES): a host's inbound limits keep far
# fewer pubsub peers; past it the peer remembered longest is forgotten (its next record is checked).
MAX_PEERS = 1024


class SenderRecords:
    """Which record each pubsub peer sent last, and when it was checked (Trio thread only)."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._checked: dict[ID, tuple[bytes, float]] = {}  # peer -> (record bytes, when checked)

    def __len__(self) -> int:
        return len(self._checked)

    def take(self, rpc: rpc_pb2.RPC, peer: ID, now: float) -> bool:
        """Whether `rpc`'s record (if any) is `peer`'s and valid, and so kept in the peerstore: py-libp2p's
        check, skipped for the bytes checked last for `peer` less than RECHECK_S ago. A record of more than
        MAX_RECORD_BYTES is refused unread (bounded_peerstore.py)."""
        if not rpc.HasField("senderRecord"):
            return True
        record = rpc.senderRecord
        checked = self._checked.get(peer)
        if checked is not None and checked[0] == record and now - checked[1] < RECHECK_S:
            return True
        if len(record) > MAX_RECORD_BYTES or not maybe_consume_signed_record(rpc, self._host, peer):
            return False
        if checked is None and len(self._checked) >= MAX_PEERS:
            del self._checked[next(iter(self._checked))]
        self._checked[peer] = (record, now)
        return True

    def forget(self, peer: ID) -> None:
        """Drop what is remembered of `peer` (its last connection closed)."""
        self._checked.pop(peer, None)
