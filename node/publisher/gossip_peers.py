"""Keeps a publisher's gossip peers: enough of them, and a new one whenever its heartbeat view goes quiet.

A publisher gossips only with the peers it dials to gossip with (`Client(peers=...)`); nodes
it dials to send tasks on streams stay out of its gossip (node/p2p/service.py). When those
peers die, or stop passing it heartbeats (a mesh may prune it), it hears of no node and
every task fails with "no live node" although the network is up. Every `check_interval` s
the keeper:

- dials more gossip peers while it has fewer than `min_peers`;
- when no heartbeat was accepted for `quiet_after` s, or no node is live, dials one more
  (up to `max_peers`), at most once per quiet backoff, which doubles while the view stays quiet
  and resets when a heartbeat is accepted.

Candidates, in order: the bootstrap peers, live nodes from heartbeats' `addrs` that this
publisher measured serving, the other live nodes (each group shuffled, so publishers spread over
them), then nodes no longer live, newest heartbeat first. Measured nodes go before the others
because anyone can make keys that heartbeat: gossip peers chosen from a table full of them would
be theirs, free to drop the honest nodes' heartbeats (an eclipse). A peer whose
dial failed waits a backoff that doubles per failure (jittered), and so does the address itself,
whatever peer id names it: a heartbeat's `addrs` end in its signer's peer id, but the host and
port may be anyone's, and keys are free (50 of them naming one host made a publisher dial it ~9
times a second); one address is dialled once at a time (the peers of one check were dialled there
together). This only chooses whom to
dial: liveness stays the node table's, judged by signed heartbeat timestamps (PROTOCOL.md 6).
"""

from __future__ import annotations

import asyncio
import random

import structlog
from pydantic import BaseModel, ConfigDict, Field

from node.p2p.connector import peer_id_of_multiaddr, transport_of
from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.node_table import NodeTable

log = structlog.get_logger(__name__)

MIN_CHECK_GAP_S = 0.25  # between two checks at least
MAX_BACKOFF_ENTRIES = 4096
MAX_DIALLED = 256  # the latest dials `dialled` keeps: peers that accept and then drop are dialled again and again


class GossipPeerSettings(BaseModel):
    """How many gossip peers a publisher keeps, and how it redials them."""

    model_config = ConfigDict(frozen=True)

    min_peers: int = Field(default=3, ge=0, le=64, description="gossip peers kept at least")
    max_peers: int = Field(default=6, ge=1, le=64, description="no more are dialled for a quiet view")
    check_interval: float = Field(default=1.0, gt=0, le=60)
    quiet_after: float | None = Field(
        default=None, gt=0, description="seconds without an accepted heartbeat that count as quiet (None: ttl/2)"
    )
    initial_backoff: float = Field(default=1.0, gt=0)
    max_backoff: float = Field(default=30.0, gt=0)
    dial_timeout: float = Field(default=5.0, gt=0)


class GossipPeerKeeper:
    """Redials a publisher's gossip peers from its bootstrap list and the nodes its heartbeats named."""

    def __init__(
        self,
        host: P2PHost,
        bootstrap: list[str],
        nodes: NodeTable,
        settings: GossipPeerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self._bootstrap = list(dict.fromkeys(bootstrap))
        self._nodes = nodes
        self.settings = settings or GossipPeerSettings()
        self._rng = rng or random.Random()
        self._backoff: dict[str, float] = {}  # peer id, or address without it -> its next failure's delay
        self._next_try: dict[str, float] = {}  # peer id, or address without it -> loop time it may be dialled again
        self._dialling: set[str] = set()  # addresses without peer id being dialled now
        self._last_heard = asyncio.get_running_loop().time()
        self._quiet_backoff = self.settings.initial_backoff
        self._next_quiet_dial = 0.0
        self.dialled: list[str] = []  # the latest MAX_DIALLED peer ids it connected to gossip with, in order

    @property
    def quiet_after(self) -> float:
        """Seconds without an accepted heartbeat before one more peer is dialled (default: half the nodes' TTL)."""
        return self.settings.quiet_after or self._nodes.ttl / 2

    def heard(self) -> None:
        """A heartbeat was accepted: the view is not quiet."""
        self._last_heard = asyncio.get_running_loop().time()
        self._quiet_backoff = self.settings.initial_backoff
        self._next_quiet_dial = 0.0

    async def run(self) -> None:
        """Check forever (cancel to stop); a failing check is logged and the next one runs."""
        while True:
            await asyncio.sleep(self.settings.check_interval)
            try:
                await self.check()
            except P2PError as exc:
                log.warning("gossip peer check failed", error=str(exc))
            await asyncio.sleep(MIN_CHECK_GAP_S)

    async def check(self) -> list[str]:
        """One round: dial what is missing; the peer ids newly gossiped with."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        gossip = set(await self._host.gossip_peers())
        quiet = now - self._last_heard > self.quiet_after or not self._nodes.live()
        want = self.settings.min_peers
        if quiet and now >= self._next_quiet_dial:
            want = max(want, len(gossip) + 1)
        want = min(want, self.settings.max_peers)
        if len(gossip) >= want:
            return []
        candidates = self._candidates(gossip, now)[: want - len(gossip)]
        if not candidates:
            return []
        if quiet and len(gossip) >= self.settings.min_peers:
            self._next_quiet_dial = now + self._quiet_backoff
            self._quiet_backoff = min(self._quiet_backoff * 2, self.settings.max_backoff)
        log.info("dialling gossip peers", have=len(gossip), want=want, quiet=quiet, peers=[p for p, _ in candidates])
        results = await asyncio.gather(*(self._dial(peer, addrs) for peer, addrs in candidates))
        joined = [peer for (peer, _), ok in zip(candidates, results) if ok]
        self.dialled = (self.dialled + joined)[-MAX_DIALLED:]
        return joined

    def _candidates(self, gossip: set[str], now: float) -> list[tuple[str, list[str]]]:
        """(peer id, its addresses) not gossiped with and not backing off, in the order to try them."""
        found: dict[str, list[str]] = {}
        for addr in self._bootstrap:
            peer = peer_id_of_multiaddr(addr)
            if peer is not None:
                found.setdefault(peer, []).append(addr)
        live = {n.address for n in self._nodes.live()}
        named = [n for n in self._nodes.known() if n.addrs and not n.leaving]
        reputation = self._nodes.reputation
        served = {n.address for n in named if reputation is not None and reputation.served(n.address)}
        measured = [n for n in named if n.address in live and n.address in served]
        others = [n for n in named if n.address in live and n.address not in served]
        self._rng.shuffle(measured)
        self._rng.shuffle(others)
        stale = sorted((n for n in named if n.address not in live), key=lambda n: n.last_seen, reverse=True)
        for node in measured + others + stale:
            found.setdefault(node.peer_id, list(node.addrs))
        return [
            (peer, addrs)
            for peer, addrs in found.items()
            if peer not in gossip and self._next_try.get(peer, 0.0) <= now and peer != self._host.peer_id
        ]

    async def _dial(self, peer: str, addrs: list[str]) -> bool:
        errors = []
        for addr in addrs:
            where = transport_of(addr)
            if self._next_try.get(where, 0.0) > asyncio.get_running_loop().time() or where in self._dialling:
                errors.append(f"{where}: a dial failed there lately, or one is under way")
                continue
            self._dialling.add(where)
            try:
                await self._host.connect(addr, timeout=self.settings.dial_timeout)
            except P2PError as exc:
                errors.append(str(exc))
                self._back_off(where)
                continue
            finally:
                self._dialling.discard(where)
            for key in (peer, where):
                self._backoff.pop(key, None)
                self._next_try.pop(key, None)
            log.info("gossiping with a new peer", peer=peer, addr=addr)
            return True
        self._back_off(peer)
        log.info("gossip peer dial failed", peer=peer, error="; ".join(errors)[:300])
        return False

    def _back_off(self, key: str) -> None:
        now = asyncio.get_running_loop().time()
        if len(self._next_try) > MAX_BACKOFF_ENTRIES:  # anyone can make peer ids: keep only pending waits
            for stale in [p for p, at in self._next_try.items() if at <= now]:
                self._next_try.pop(stale, None)
                self._backoff.pop(stale, None)
        delay = self._backoff.get(key, self.settings.initial_backoff)
        self._next_try[key] = now + delay * self._rng.uniform(0.75, 1.25)
        self._backoff[key] = min(delay * 2, self.settings.max_backoff)
