"""Trimming idle inbound connections, so peer ids that connect and do nothing cannot lock others out.

py-libp2p refuses every new connection once it holds its maximum (300, of which 250 may be
inbound) and never closes an idle one: anyone able to make 250 peer ids (free) and connect
them would lock every publisher and node out for as long as they stay connected. Like
go-libp2p's connection manager, `ConnectionTrimmer` (a Trio task of the service) closes
connections past `high_water`, down to `low_water` (connections, not peers: a peer id may hold
three, py-libp2p's limit, and ~100 ids holding three each filled the cap while the peers stayed
under `high_water`): inbound ones only, oldest first, never one younger than `grace_s` (time for a
publisher to open its stream), never a peer in our gossip mesh, with a direct-delivery stream whose
task the node accepted, or held in the service's `KeptPeers` (a publisher whose task is on the node:
kept_peers.py). `choose_trimmed` is the pure choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
import trio
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 2.0


class ConnectionBudget(BaseModel):
    """When and how far idle inbound connections are trimmed (below py-libp2p's own inbound cap of 250)."""

    model_config = ConfigDict(frozen=True)

    high_water: int = Field(default=200, ge=1, description="trim when more connections than this are open")
    low_water: int = Field(default=150, ge=0, description="trim down to this many connections")
    grace_s: float = Field(default=10.0, ge=0, description="a new connection is kept at least this long")
    check_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ConnectionBudget:
        if self.low_water > self.high_water:
            raise ValueError("low_water must not exceed high_water")
        return self


@dataclass(frozen=True)
class PeerConnection:
    """What the choice needs to know of one connected peer."""

    peer: str
    inbound: bool  # every connection to it was opened by the peer
    connections: int  # how many it holds (py-libp2p allows a peer three)
    first_seen: float  # trio.current_time() when the trimmer first saw it
    protected: bool  # in our gossip mesh, with a stream whose task was accepted, or held (its task is here)


def choose_trimmed(peers: Iterable[PeerConnection], now: float, budget: ConnectionBudget) -> list[str]:
    """The peers to disconnect: none while their connections are at or under `high_water`; else the oldest idle
    inbound ones, until the connections left are at most `low_water`."""
    peers = list(peers)
    open_now = sum(p.connections for p in peers)
    if open_now <= budget.high_water:
        return []
    idle = [p for p in peers if p.inbound and not p.protected and now - p.first_seen >= budget.grace_s]
    idle.sort(key=lambda p: p.first_seen)
    chosen = []
    for peer in idle:
        if open_now <= budget.low_water:
            break
        chosen.append(peer.peer)
        open_now -= peer.connections
    return chosen


class ConnectionTrimmer:
    """Runs `choose_trimmed` every `check_interval_s` over the swarm's connections and closes the chosen."""

    def __init__(self, swarm: Swarm, budget: ConnectionBudget, protected: Callable[[ID], bool]) -> None:
        self._swarm = swarm
        self._budget = budget
        self._protected = protected
        self._first_seen: dict[ID, float] = {}
        self.trimmed = 0  # peers disconnected so far

    async def run(self) -> None:
        """Trim until cancelled."""
        while True:
            await trio.sleep(self._budget.check_interval_s)
            await self.trim()

    async def trim(self) -> int:
        """One round: disconnect the idle inbound peers past the budget; returns how many."""
        connections = self._swarm.get_connections_map()
        now = trio.current_time()
        self._first_seen = {peer: self._first_seen.get(peer, now) for peer in connections}
        by_name = {peer.to_base58(): peer for peer in connections}
        chosen = choose_trimmed(
            (
                PeerConnection(
                    name,
                    inbound=all(_direction(conn) == Direction.INBOUND for conn in connections[peer]),
                    connections=len(connections[peer]),
                    first_seen=self._first_seen[peer],
                    protected=self._protected(peer),
                )
                for name, peer in by_name.items()
            ),
            now,
            self._budget,
        )
        for name in chosen:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    await self._swarm.close_peer(by_name[name])
                except Exception:  # noqa: BLE001 - the connection may be closing already
                    pass
        if chosen:
            self.trimmed += len(chosen)
            log.info("idle connections trimmed", peers=len(chosen), connected=len(connections) - len(chosen))
        return len(chosen)


def _direction(conn: object) -> Direction:
    """A swarm connection's direction (the INetConn interface does not declare it; SwarmConn has it)."""
    direction = getattr(conn, "direction", Direction.UNKNOWN)
    return direction if isinstance(direction, Direction) else Direction.UNKNOWN
