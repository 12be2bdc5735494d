"""Heartbeats: every `interval` seconds a signed message saying what this node hosts
and how much room it has (free and max task places, pending tasks, speed), and where
publishers can dial it for direct delivery (`addrs`). Each model has places of its own, so
`modelCapacity` says them per model (the models advertised, no others), beside the total
`capacity` that older readers (Dria's SDK) use. Once the node begins to drain,
`announce_leaving` publishes at once, and every heartbeat after says `leaving`. A change of the
models served or of their speeds is published within seconds, not at the next interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.messages import Capacity, HeartbeatBody, encode_body
from node.wire.topics import HEARTBEAT_TOPIC, PROTOCOL_VERSION

log = structlog.get_logger(__name__)

CHANGED_AFTER_S = 2.0  # the least time between two heartbeats published for a change of models or speeds


class Heartbeat:
    """Publishes a heartbeat every `interval` seconds until stopped."""

    def __init__(
        self,
        identity: Identity,
        host: P2PHost,
        models: Callable[[], list[str]],
        capacity: Callable[[], tuple[int, int]],
        pending: Callable[[], int],
        tps: Callable[[], dict[str, float]],
        interval: float,
        addrs: Callable[[], list[str]] = list,
        model_capacity: Callable[[list[str]], dict[str, tuple[int, int]]] | None = None,
    ) -> None:
        self._identity = identity
        self._host = host
        # The models served right now: a crash-looping model or a down remote engine leaves the heartbeats.
        self._models = models
        self._capacity = capacity
        self._pending = pending
        self._tps = tps
        self._interval = interval
        self._addrs = addrs
        # (free, max) places of each of the models given (those advertised); None: no `modelCapacity`.
        self._model_capacity = model_capacity
        self.leaving = False

    def body(self) -> HeartbeatBody:
        """The heartbeat to publish now (no free capacity while leaving)."""
        free, total = self._capacity()
        if self.leaving:
            free = 0
        models = self._models()
        return HeartbeatBody(
            address=self._identity.address,
            peer_id=self._host.peer_id,
            models=models,
            capacity=Capacity(free=free, max=total),
            pendingTasks=self._pending(),
            tps=self._tps(),
            version=PROTOCOL_VERSION,
            timestamp=time.time_ns(),
            addrs=self._addrs() or None,
            leaving=True if self.leaving else None,
            model_capacity=self._per_model(models),
        )

    def _per_model(self, models: list[str]) -> dict[str, Capacity] | None:
        """`modelCapacity`: an entry for each advertised model (none for any other), no free place while leaving."""
        if self._model_capacity is None or not models:
            return None
        places = self._model_capacity(models)
        return {
            model: Capacity(free=0 if self.leaving else places[model][0], max=places[model][1])
            for model in models
            if model in places
        } or None

    async def announce_leaving(self) -> None:
        """The node is draining: say so now (capacity.free is 0 by then), and in every heartbeat after."""
        self.leaving = True
        await self.publish_once()

    async def publish_once(self) -> None:
        """Sign and publish one heartbeat."""
        data = seal(self._identity, HEARTBEAT_TOPIC, encode_body(self.body()))
        await self._host.publish(HEARTBEAT_TOPIC, data)

    def offer(self) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
        """What publishers choose this node by, besides its places: the models served and their speeds."""
        return tuple(self._models()), tuple(sorted(self._tps().items()))

    async def run(self, tick: float = 1.0, settle: float = 1.5, changed_after: float = CHANGED_AFTER_S) -> None:
        """Publish every interval, soon after a new peer connects (once its mesh had `settle`
        seconds to form), so a new publisher learns about this node at once, and soon after the
        models served or their speeds change (a speed measured after READY, a model leaving or
        back), at most once every `changed_after` seconds for those."""
        loop = asyncio.get_running_loop()
        last_published = -self._interval
        published_offer = self.offer()
        first_seen: dict[str, float] = {}
        announced: set[str] = set()
        while True:
            now = loop.time()
            offer = self.offer()
            changed = offer != published_offer and now - last_published >= changed_after
            try:
                peers = set(await self._host.peers())
            except P2PError:
                peers = set()
            for peer in peers - first_seen.keys():
                first_seen[peer] = now
            first_seen = {peer: seen for peer, seen in first_seen.items() if peer in peers}
            announced &= peers
            matured = {peer for peer in peers - announced if now - first_seen[peer] >= settle}
            if matured or changed or now - last_published >= self._interval:
                try:
                    await self.publish_once()
                    last_published, published_offer = now, offer
                    announced |= matured
                except P2PError as exc:
                    log.warning("heartbeat not published", error=str(exc))
            await asyncio.sleep(tick)
