"""Peers whose connections the trimmer leaves alone while something of theirs is in hand (connection_trim.py).

A node holds the address of each task's publisher (the signer's, free at intake) from the task's
admission until its result is handed out: the node trims idle inbound connections past its
budget, and the publisher's may be idle (a gossip peer outside our mesh, a direct dial that fell back
to gossip) while its task runs. Trimmed, the publisher takes its node for gone and probes it
(node/publisher/sender.py), and a connection that was its only route into gossip may cost it the result.

Held and released on one thread (the event loop); `current` is a frozenset replaced whole when the set
of held peers changes, so the Trio thread reads it without a lock. The holds are bounded by their
callers: a node holds one per admitted task, at most each model's running plus queue places.
A publisher's libp2p host key is its signing key, so the trimmer finds a connected peer's address from its
peer id (`address_of_peer`, cached per peer: the trimmer asks of every connected peer each round), never
the node from each task's key (a new key each task costs the intake nothing).
"""

from __future__ import annotations

import functools

from libp2p.peer.id import ID

from node.wire.identity import IdentityError, address_of


@functools.lru_cache(maxsize=1024)
def address_of_peer(peer: ID) -> str | None:
    """The address of a peer whose id holds its secp256k1 key (our nodes' and publishers'); None for others."""
    try:
        key = peer.extract_public_key()
        return None if key is None else address_of(key.to_bytes())
    except IdentityError:  # another key type (ed25519, ...)
        return None
    except Exception:  # noqa: BLE001 - py-libp2p raises its own types for ids it cannot read
        return None


class KeptPeers:
    """Publisher addresses (40 hex characters) held by count; `current` is the set held now."""

    def __init__(self) -> None:
        self._holds: dict[str, int] = {}
        self.current: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self._holds)

    def hold(self, address: str) -> None:
        """Keep the connections of the peer with `address` until as many `release` calls as `hold` calls."""
        count = self._holds.get(address, 0)
        self._holds[address] = count + 1
        if count == 0:
            self.current = frozenset(self._holds)

    def release(self, address: str) -> None:
        """Give back one hold of `address` (one never held: nothing)."""
        count = self._holds.get(address, 0)
        if count > 1:
            self._holds[address] = count - 1
        elif count == 1:
            del self._holds[address]
            self.current = frozenset(self._holds)

    def keeps(self, peer: ID) -> bool:
        """Whether `peer` is a publisher held now."""
        current = self.current  # one read: the event loop may replace it meanwhile
        return bool(current) and address_of_peer(peer) in current
