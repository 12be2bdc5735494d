"""The peerstore within bounds: what one peer can make a host remember, and never the host's own keys.

py-libp2p's `PeerStore` (0.8.1) keeps what peers say about themselves: the addresses and
protocols of their identify answers and pushes (1 MiB each), and the signed peer record each
pubsub RPC carries. Measured at a default host:

- a record of 20,000 addresses (240 KB, signed by the sender's own key) was kept whole, and
  every address of it: +4.6 MiB a peer id, held for the record's two-hour TTL after it left
  (`PeerData.add_addrs` also compares each new address with every one kept: quadratic);
- an identify push of 60,000 protocol names (1 MiB): +6.6 MiB a peer id, held after it left;
- past 1,000 peers, its eviction takes entries with no address first, and the host's own entry
  (its key pair, no address) is one: after 1,000 peer ids had connected, the host could no
  longer sign, and every publish failed (`PeerStoreError: peer ID not found`).

`BoundedPeerStore` keeps at most `MAX_ADDRS` addresses and `MAX_PROTOCOLS` protocol names (of at
most `MAX_PROTOCOL_CHARS`) a peer, refuses a signed record of more than `MAX_ADDRS` addresses or
`MAX_RECORD_BYTES` (a pubsub RPC that carries one is dropped, as py-libp2p drops one with a bad
record), and evicts the oldest entries past 1,000 peers, never one that holds a private key.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from libp2p.crypto.keys import PublicKey
from libp2p.peer.envelope import Envelope
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore
from multiaddr import Multiaddr

MAX_ADDRS = 16  # a node advertises at most 8 (MAX_HEARTBEAT_ADDRS)
MAX_PROTOCOLS = 32
MAX_PROTOCOL_CHARS = 128
MAX_RECORD_BYTES = 4096  # a record of 16 addresses, signed, is under 1 KiB


class BoundedPeerStore(PeerStore):
    """py-libp2p's PeerStore with what one peer can make it hold bounded (see the module docstring)."""

    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], ttl: int = 0) -> None:
        """Add the peer's new addresses, up to MAX_ADDRS a peer."""
        data = self.peer_data_map.get(peer_id)
        kept = data.get_addrs() if data is not None else []
        fresh = [addr for addr in dict.fromkeys(addrs) if addr not in kept]
        super().add_addrs(peer_id, fresh[: max(MAX_ADDRS - len(kept), 0)], ttl)  # evicts past max_peers

    def add_pubkey(self, peer_id: ID, pubkey: PublicKey) -> None:
        """Add the peer's key, then hold the peer limit."""
        super().add_pubkey(peer_id, pubkey)
        self._enforce_peer_limit()  # py-libp2p's does not: peer ids known by their key alone stayed for good

    def add_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        """Add the peer's new protocols, up to MAX_PROTOCOLS a peer, then hold the peer limit."""
        data = self.peer_data_map.get(peer_id)
        kept = set(data.get_protocols()) if data is not None else set()
        fresh = [name for name in _names(protocols) if name not in kept]
        super().add_protocols(peer_id, fresh[: max(MAX_PROTOCOLS - len(kept), 0)])
        self._enforce_peer_limit()

    def set_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        """Set the peer's protocols (the first MAX_PROTOCOLS), then hold the peer limit."""
        super().set_protocols(peer_id, _names(protocols)[:MAX_PROTOCOLS])
        self._enforce_peer_limit()

    def consume_peer_record(self, envelope: Envelope, ttl: int) -> bool:
        """Take a signed peer record, unless it is too large; whether it was taken."""
        if too_large(envelope):
            return False
        return super().consume_peer_record(envelope, ttl)  # its addresses go through add_addrs

    def _enforce_peer_limit(self) -> None:
        """Past `max_peers`, forget the peers first added, keeping any entry with a private key (our own)."""
        excess = len(self.peer_data_map) - self.max_peers
        if excess <= 0:
            return
        oldest = list(islice((peer for peer, data in self.peer_data_map.items() if data.privkey is None), excess))
        for peer in oldest:
            self.peer_record_map.pop(peer, None)
            del self.peer_data_map[peer]


def too_large(envelope: Envelope) -> bool:
    """Whether a signed peer record is more than a peer needs to say: too many addresses or bytes."""
    return len(envelope.raw_payload) > MAX_RECORD_BYTES or len(envelope.record().addrs) > MAX_ADDRS


def _names(protocols: Sequence[str]) -> list[str]:
    return [name for name in dict.fromkeys(protocols) if len(name) <= MAX_PROTOCOL_CHARS]
