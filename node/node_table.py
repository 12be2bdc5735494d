"""The publisher's view of the network: nodes known from their heartbeats.

A node is live while its last heartbeat is younger than `ttl` (3 heartbeat
intervals by default). `choose` picks one live node that hosts an acceptable
model, at random weighted by free capacity and speed, so load spreads and a
fast, idle node is preferred without starving the others.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

from node.intake import ANY_LOCAL_MODEL, ANY_MODEL, FIRST_MODEL
from node.messages import HeartbeatBody


@dataclass(frozen=True)
class KnownNode:
    """What a node said in its last heartbeat."""

    address: str
    peer_id: str
    models: list[str]
    free: int
    max: int
    tps: dict[str, float]
    last_seen: float  # time.time() of the last heartbeat

    def serves(self, wanted: list[str]) -> bool:
        return bool(self.models) and any(
            entry in (ANY_MODEL, ANY_LOCAL_MODEL, FIRST_MODEL) or entry in self.models for entry in wanted
        )

    def weight(self, wanted: list[str]) -> float:
        speeds = [tps for model, tps in self.tps.items() if model in wanted] or list(self.tps.values()) or [1.0]
        return max(self.free, 0) * max(max(speeds), 1.0)


class NodeTable:
    """Nodes by address, refreshed by heartbeats."""

    def __init__(self, ttl: float = 90.0, rng: random.Random | None = None, max_nodes: int = 10_000) -> None:
        self._nodes: dict[str, KnownNode] = {}
        self._ttl = ttl
        self._rng = rng or random.Random()
        self._max_nodes = max_nodes

    def update(self, sender: str, heartbeat: HeartbeatBody, now: float | None = None) -> None:
        """Record a heartbeat; only its signer's own entry can change (the body's address must match)."""
        if heartbeat.address != sender:
            return
        now = time.time() if now is None else now
        if sender not in self._nodes and len(self._nodes) >= self._max_nodes:
            # Anyone can make keys: forget the silent first, and never grow past the cap.
            self._nodes = {a: n for a, n in self._nodes.items() if now - n.last_seen <= self._ttl}
            if len(self._nodes) >= self._max_nodes:
                del self._nodes[min(self._nodes.values(), key=lambda n: n.last_seen).address]
        self._nodes[sender] = KnownNode(
            address=sender,
            peer_id=heartbeat.peer_id,
            models=list(heartbeat.models),
            free=heartbeat.capacity.free,
            max=heartbeat.capacity.max,
            tps=dict(heartbeat.tps),
            last_seen=now,
        )

    def reserve(self, address: str) -> None:
        """Count a task just sent to `address` against its free capacity until its next heartbeat."""
        node = self._nodes.get(address)
        if node is not None:
            self._nodes[address] = replace(node, free=node.free - 1)

    def live(self, now: float | None = None) -> list[KnownNode]:
        now = time.time() if now is None else now
        return [node for node in self._nodes.values() if now - node.last_seen <= self._ttl]

    def choose(self, wanted: list[str], exclude: set[str] = frozenset(), now: float | None = None) -> KnownNode | None:  # type: ignore[assignment]
        """A live node serving one of `wanted`, weighted by free capacity x speed; None if there is none.

        Nodes reporting no free capacity are chosen only when every candidate is full.
        """
        candidates = [n for n in self.live(now) if n.address not in exclude and n.serves(wanted)]
        if not candidates:
            return None
        weights = [n.weight(wanted) for n in candidates]
        if not any(weights):
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights=weights, k=1)[0]
