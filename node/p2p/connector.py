"""Keeps the node connected: dials bootstrap peers, re-dials with backoff and jitter.

A bootstrap peer that is not connected is re-dialled after a delay that doubles
on each failure (up to `max_backoff`) with +-25% jitter, and resets on success,
so a node whose peers were all killed and restarted reconnects by itself.
"""

from __future__ import annotations

import asyncio
import random

import structlog

from node.p2p.errors import P2PError
from node.p2p.host import P2PHost

log = structlog.get_logger(__name__)


def peer_id_of_multiaddr(multiaddr: str) -> str | None:
    """The /p2p/<id> component of a multiaddr, if any."""
    parts = multiaddr.rstrip("/").split("/")
    for i, part in enumerate(parts[:-1]):
        if part in ("p2p", "ipfs"):
            return parts[i + 1]
    return None


def transport_of(multiaddr: str) -> str:
    """`multiaddr` without its /p2p/<id>: the host and port a dial goes to, whoever answers there."""
    peer = peer_id_of_multiaddr(multiaddr)
    if peer is None:
        return multiaddr
    return multiaddr.rstrip("/").removesuffix(f"/p2p/{peer}").removesuffix(f"/ipfs/{peer}")


class Connector:
    """Dials the bootstrap multiaddrs and keeps them dialled."""

    def __init__(
        self,
        host: P2PHost,
        bootstrap: list[str],
        *,
        check_interval: float = 2.0,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self._bootstrap = list(dict.fromkeys(bootstrap))
        self._check_interval = check_interval
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._rng = rng or random.Random()
        self._backoff = {addr: initial_backoff for addr in self._bootstrap}
        self._next_try = {addr: 0.0 for addr in self._bootstrap}

    async def dial_all(self) -> int:
        """Dial every bootstrap peer concurrently once; returns how many connected."""
        results = await asyncio.gather(*(self._dial(addr) for addr in self._bootstrap))
        return sum(results)

    async def run(self) -> None:
        """Re-dial disconnected bootstrap peers forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._check_interval)
            if not self._bootstrap:
                continue
            connected = set(await self._host.peers())
            due = [
                addr
                for addr in self._bootstrap
                if peer_id_of_multiaddr(addr) not in connected and loop.time() >= self._next_try[addr]
            ]
            if due:
                await asyncio.gather(*(self._dial(addr) for addr in due))

    async def _dial(self, addr: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            peer = await self._host.connect(addr)
        except P2PError as exc:
            delay = self._backoff[addr] * self._rng.uniform(0.75, 1.25)
            self._next_try[addr] = loop.time() + delay
            self._backoff[addr] = min(self._backoff[addr] * 2, self._max_backoff)
            log.warning("bootstrap dial failed", addr=addr, error=str(exc), retry_in_s=round(delay, 1))
            return False
        self._backoff[addr] = self._initial_backoff
        log.info("connected", peer=peer, addr=addr)
        return True
