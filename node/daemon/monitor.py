"""What the node tells its operator: gauges, a periodic status line, health and status.

`run()` samples the network (peers, mesh per topic), capacity and the journal
backlog every few seconds into the metrics, logs a status line every
30 s (`log_interval_s`), and pings the systemd watchdog from the main loop while
every background loop is alive (so a stuck event loop, or a dead loop, stops
the pings and systemd restarts the node).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

import structlog

from node.daemon.admission import Admission
from node.daemon.clock_watch import ClockWatch
from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError
from node.ops.activity import NodeActivity
from node.ops.http_api import HealthReport
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SystemdNotifier
from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.topics import PROTOCOL_VERSION

log = structlog.get_logger(__name__)


class NodeMonitor:
    """Samples the node's state for metrics, logs, health checks and systemd."""

    def __init__(
        self,
        identity: Identity,
        host: P2PHost,
        admission: Admission,
        journal: Journal,
        metrics: NodeMetrics,
        notifier: SystemdNotifier,
        models: Callable[[], Collection[str]],  # the models served now
        *,
        capacity: Callable[[], tuple[int, int]] | None = None,  # (free, max) as heartbeats advertise it
        activity: NodeActivity | None = None,
        held: Callable[[], int] = lambda: 0,  # results the outbox holds in memory for a failing journal
        clock: ClockWatch | None = None,  # messages rejected for their time: is this machine's clock wrong?
        startup_grace_s: float = 60.0,
        sample_interval_s: float = 5.0,
        log_interval_s: float = 30.0,
    ) -> None:
        self._identity = identity
        self._host = host
        self._admission = admission
        self._journal = journal
        self._metrics = metrics
        self._notifier = notifier
        self._models = models
        self._capacity = capacity or (lambda: self._admission.capacity())
        self._activity = activity or NodeActivity()
        self._startup_grace_s = startup_grace_s
        self._sample_interval_s = sample_interval_s
        self._log_interval_s = log_interval_s
        self._started = time.monotonic()
        self._peers: list[str] = []
        self._mesh: dict[str, int] = {}
        self._dropped_counted = 0  # the host's dropped gossip messages already in the metric
        self._refused_counted: dict[str, int] = {}  # the host's refused connections already in the metric, by reason
        self._streams_refused_counted = 0  # the host's refused streams already in the metric
        self._journal_errors_counted = 0  # the journal's SQLite errors already in the metric
        self._backlog = 0  # the journal's backlog at the last sample that could read it
        self._held = held
        self._clock = clock
        self._last_heartbeat_seen: float | None = None
        self._failed_loops: Callable[[], list[str]] = list

    def watch_loops(self, failed: Callable[[], list[str]]) -> None:
        """`failed()` names the background loops not running; health and the watchdog depend on it."""
        self._failed_loops = failed

    def heartbeat_seen(self) -> None:
        """Record that a heartbeat from another node arrived."""
        self._last_heartbeat_seen = time.time()

    async def sample(self) -> None:
        """Read the peers, mesh, capacity and journal now and update the metrics."""
        try:
            self._peers = await self._host.peers()
            self._mesh = await self._host.mesh_sizes()
        except P2PError:
            self._peers, self._mesh = [], {}
        free, _ = self._capacity()
        self._metrics.peers.set(len(self._peers))
        for topic, size in self._mesh.items():
            self._metrics.mesh_peers.labels(topic=topic).set(size)
        dropped = self._host.dropped_messages
        self._metrics.gossip_dropped.inc(dropped - self._dropped_counted)
        self._dropped_counted = dropped
        for reason, refused in self._host.refused_connections.items():
            self._metrics.connections_refused.labels(reason=reason).inc(refused - self._refused_counted.get(reason, 0))
            self._refused_counted[reason] = refused
        streams_refused = self._host.refused_streams
        self._metrics.streams_refused.inc(streams_refused - self._streams_refused_counted)
        self._streams_refused_counted = streams_refused
        self._metrics.capacity_free.set(free)
        self._metrics.journal_errors.inc(self._journal.errors - self._journal_errors_counted)
        self._journal_errors_counted = self._journal.errors
        self._metrics.results_unjournalled.set(self._held())
        try:
            self._backlog = self._journal.backlog()
        except JournalError:  # counted in journal_errors; health says so
            pass
        self._metrics.journal_backlog.set(self._backlog)
        self._metrics.tasks_running.set(self._admission.pending)

    async def run(self) -> None:
        """Sample, log and ping the watchdog until cancelled."""
        interval = self._sample_interval_s
        watchdog = self._notifier.watchdog_interval()
        if watchdog is not None:
            interval = min(interval, watchdog)
        last_log = 0.0
        while True:
            await self.sample()
            if failed := self._failed_loops():
                log.warning("watchdog not pinged: background loops not running", loops=failed)
            else:
                self._notifier.watchdog()
            if time.monotonic() - last_log >= self._log_interval_s:
                last_log = time.monotonic()
                status = self.status()
                log.info(
                    "status",
                    peers=status["peers"],
                    mesh=status["mesh"],
                    capacity=status["capacity"],
                    last_heartbeat_seen=status["last_heartbeat_seen"],
                    backlog=status["journal_backlog"],
                )
                self._notifier.status(f"{status['peers']} peers, {status['capacity']['free']} free task places")
            await asyncio.sleep(interval)

    def health(self) -> HealthReport:
        """Healthy, or the first reason the node is not."""
        if failed := self._failed_loops():
            return HealthReport(ok=False, reason=f"background loop not running: {'; '.join(failed)}")
        if not self._models():
            return HealthReport(ok=False, reason="no model is serving (not loaded, restarting or stalled)")
        if (journal_error := self._journal.failing()) is not None:
            return HealthReport(ok=False, reason=f"tasks cannot be journalled: {journal_error}")
        if self._clock is not None and (clock_problem := self._clock.problem()) is not None:
            return HealthReport(ok=False, reason=clock_problem)
        in_grace = time.monotonic() - self._started < self._startup_grace_s
        if not self._peers and not in_grace:
            return HealthReport(ok=False, reason="no peers")
        return HealthReport(ok=True)

    def status(self) -> dict[str, Any]:
        """The node's state for the status page and endpoint."""
        free, total = self._capacity()
        try:
            self._backlog = self._journal.backlog()
        except JournalError:  # the last count read stands
            pass
        return {
            "address": self._identity.address,
            "peer_id": self._host.peer_id,
            "listen": self._host.listen_addrs,
            "version": PROTOCOL_VERSION,
            "models": list(self._models()),
            "capacity": {"free": free, "max": total},
            "pending_tasks": self._admission.pending,
            "peers": len(self._peers),
            "mesh": dict(self._mesh),
            "last_heartbeat_seen": self._last_heartbeat_seen,
            "journal_backlog": self._backlog,
            "journal_errors": self._journal.errors,
            "results_unjournalled": self._held(),
            "clock_problem": None if self._clock is None else self._clock.problem(),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "peer_ids": list(self._peers),
            "activity": self._activity.snapshot().model_dump(mode="json"),
        }
