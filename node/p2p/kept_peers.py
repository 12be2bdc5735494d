"""Peers whose connections the trimmer leaves alone while something of theirs is in hand (connection_trim.py).

A node holds the public key of each task's publisher (the signer's compressed secp256k1 key, recovered at
intake anyway) from the task's admission until its result is handed out: the node trims idle inbound
connections past its budget, and the publisher's may be idle (a gossip peer outside our mesh, a direct dial
that fell back to gossip) while its task runs. Trimmed, the publisher takes its node for gone and probes it
(node/publisher/sender.py), and a connection that was its only route into gossip may cost it the result.

Held and released on one thread (the event loop); `current` is a frozenset replaced whole when the set
of held keys changes, so the Trio thread reads it without a lock. The holds are bounded by their
callers: a node holds one per admitted task, at most each model's running plus queue places.
A publisher's libp2p host key is its signing key, so the trimmer reads a connected peer's key from its
peer id (`key_of_peer`, cached per peer: the trimmer asks of every connected peer each round); a task under
a new key costs the intake nothing.
"""

from __future__ import annotations

import functools

from libp2p.peer.id import ID


@functools.lru_cache(maxsize=1024)
def key_of_peer(peer: ID) -> bytes | None:
    """The public key a peer id holds (a secp256k1 key: 33 bytes, compressed); None for an id without one."""
    try:
        key = peer.extract_public_key()
        return None if key is None else key.to_bytes()
    except Exception:  # noqa: BLE001 - py-libp2p raises its own types for ids it cannot read
        return None


class KeptPeers:
    """Publisher public keys (compressed) held by count; `current` is the set held now."""

    def __init__(self) -> None:
        self._holds: dict[bytes, int] = {}
        self.current: frozenset[bytes] = frozenset()

    def __len__(self) -> int:
        return len(self._holds)

    def hold(self, key: bytes) -> None:
        """Keep the connections of the peer with public `key` until as many `release` calls as `hold` calls."""
        count = self._holds.get(key, 0)
        self._holds[key] = count + 1
        if count == 0:
            self.current = frozenset(self._holds)

    def release(self, key: bytes) -> None:
        """Give back one hold of `key` (one never held: nothing)."""
        count = self._holds.get(key, 0)
        if count > 1:
            self._holds[key] = count - 1
        elif count == 1:
            del self._holds[key]
            self.current = frozenset(self._holds)

    def keeps(self, peer: ID) -> bool:
        """Whether `peer` is a publisher held now."""
        current = self.current  # one read: the event loop may replace it meanwhile
        return bool(current) and key_of_peer(peer) in current
