"""PeerWatch: what a publisher does when a node's connection to it closes.

A task on gossip has no stream to end when its node dies; if this publisher is connected to that
node, the close of its last connection stands in for one. But a closed connection is no proof of
death: a node past its peer budget closes idle inbound ones (node/p2p/connection_trim.py), and
anyone can push it there with free peer ids. So one probe (a new connection, PROBE_TIMEOUT_S)
decides: a node that takes it is alive, and its gossip tasks are watched again; one that refuses it
(a killed node's port: at once) or does not answer is gone: its gossip tasks are lost (AttemptLoop
retries them at once) and it is weighed last until its next heartbeat (NodeTable.mark_gone; a
killed node's heartbeat stays live for up to a minute). A peer is probed at most once per
PROBE_EVERY_S (a node, any key, that hangs up on each new connection was dialled again at once,
for ever); inside it, its tasks wait out their attempt timeout, as a node reached through other
peers does. A connection that opens clears the mark (`back`).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.attempt import Attempt
from node.publisher.node_table import NodeTable

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 2.0  # a node whose connection to us closed gets this long to take a new one
PROBE_EVERY_S = 30.0  # a peer is dialled by a probe at most once per this
MAX_PROBES = 64  # probes running at once at most; past it, a close is let be (its tasks time out as before)
MAX_PACED = 4096  # peers whose last probe is remembered (the oldest forgotten first)


class PeerWatch:
    """The gossip attempts per node peer id, and the probe that decides when a peer's connection closes."""

    def __init__(self, host: P2PHost, nodes: NodeTable | None = None) -> None:
        self._host = host
        self._nodes = nodes
        self._attempts: dict[str, dict[str, Attempt]] = {}  # peer id -> task id -> its attempt sent on gossip
        self._addrs: dict[str, tuple[str, ...]] = {}  # peer id -> its heartbeat's addrs (for the probe)
        self._probes: dict[str, asyncio.Task[bool]] = {}  # peer id -> its probe running
        self._paced: dict[str, float] = {}  # peer id -> monotonic time it may be probed again

    def watch(self, attempt: Attempt, addrs: tuple[str, ...]) -> None:
        """Watch the connection to the node of a task sent on gossip."""
        self._attempts.setdefault(attempt.peer_id, {})[attempt.task_id] = attempt
        self._addrs[attempt.peer_id] = addrs

    def end(self, attempt: Attempt) -> None:
        """Stop watching an attempt (it ended)."""
        watched = self._attempts.get(attempt.peer_id)
        if watched is not None:
            watched.pop(attempt.task_id, None)
            if not watched:
                del self._attempts[attempt.peer_id]
                self._addrs.pop(attempt.peer_id, None)

    def gone(self, peer_id: str) -> asyncio.Task[bool] | None:
        """The peer's last connection to us closed: probe it (once per PROBE_EVERY_S) if it has gossip tasks
        here or is a live node; returns the probe, if one started."""
        attempts = [a for a in self._attempts.pop(peer_id, {}).values() if not a.result.done()]
        addrs = self._addrs.pop(peer_id, ())
        node = None if self._nodes is None else self._nodes.of_peer(peer_id)
        if not attempts and node is None:
            return None
        if peer_id in self._probes or len(self._probes) >= MAX_PROBES or not self._may_probe(peer_id):
            for attempt in attempts:  # no dial now: watched still, they wait out their attempt timeout
                self.watch(attempt, addrs)
            return None
        if not addrs and node is not None:
            addrs = node.addrs
        probe = asyncio.ensure_future(self._probe(peer_id, attempts, addrs))
        self._probes[peer_id] = probe
        probe.add_done_callback(lambda _: self._probes.pop(peer_id, None))
        return probe

    def back(self, peer_id: str) -> None:
        """A connection with the peer opened: it is reachable."""
        if self._nodes is not None:
            self._nodes.mark_back(peer_id)

    def _may_probe(self, peer_id: str) -> bool:
        now = time.monotonic()
        if self._paced.get(peer_id, 0.0) > now:
            return False
        if len(self._paced) >= MAX_PACED:
            self._paced = {p: t for p, t in self._paced.items() if t > now}
            while len(self._paced) >= MAX_PACED:  # all current: the oldest goes
                del self._paced[next(iter(self._paced))]
        self._paced[peer_id] = now + PROBE_EVERY_S
        return True

    async def _probe(self, peer_id: str, attempts: list[Attempt], addrs: tuple[str, ...]) -> bool:
        try:
            alive = await self._host.reachable(peer_id, list(addrs), PROBE_TIMEOUT_S)
        except P2PError:
            alive = False
        for attempt in attempts:
            if attempt.result.done() or attempt.ended:
                continue
            if alive:
                self.watch(attempt, addrs)
            else:
                log.info("node of a gossip task disconnected", task_id=attempt.task_id, node=attempt.node)
                attempt.node_gone.set()
        if not alive and self._nodes is not None and (node := self._nodes.of_peer(peer_id)) is not None:
            log.info("node disconnected and not reachable; weighed last until its next heartbeat", node=node.address)
            self._nodes.mark_gone(peer_id)
        return alive

    async def close(self) -> None:
        """Stop every probe; watch nothing more."""
        self._attempts, self._addrs = {}, {}
        probes = list(self._probes.values())
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
