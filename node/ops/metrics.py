"""Prometheus metrics of one node, on a registry of its own (no global state).

The daemon updates the public attributes directly (``metrics.tasks_received.inc()``,
``metrics.tasks_rejected.labels(reason="bad_signature").inc()``) or through the few
helpers below; ``render()`` produces the text that ``GET /metrics`` serves.
All names carry the ``compute_node_`` prefix; counters get ``_total``.
"""

from __future__ import annotations

from functools import partial

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NAMESPACE = "compute_node"

# LLM workflows take from well under a second (tiny model) to minutes.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, float("inf"))


class NodeMetrics:
    """All metrics of one node; create one per daemon (or per test)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = partial(Counter, namespace=NAMESPACE, registry=self.registry)
        gauge = partial(Gauge, namespace=NAMESPACE, registry=self.registry)
        histogram = partial(Histogram, namespace=NAMESPACE, registry=self.registry)
        self.tasks_received = counter("tasks_received", "Task messages received from the network")
        # Exported as compute_node_tasks_taken_total, the name dashboards use: keep it.
        self.tasks_accepted = counter("tasks_taken", "Tasks accepted for execution")
        self.tasks_completed = counter("tasks_completed", "Tasks that produced a result")
        self.tasks_failed = counter("tasks_failed", "Tasks that ended with an error result")
        self.tasks_rejected = counter(
            "tasks_rejected",
            "Task messages that failed validation (malformed, stale, bad signature...), by reason",
            ["reason"],
        )
        self.tasks_ignored = counter(
            "tasks_ignored",
            "Valid tasks ignored: not for this node (not picked, no model, duplicate...), by reason",
            ["reason"],
        )
        self.task_latency_seconds = histogram(
            "task_latency_seconds",
            "Time from receiving a task to publishing its result",
            buckets=LATENCY_BUCKETS,
        )
        self.task_queue_wait_seconds = histogram(
            "task_queue_wait_seconds",
            "Time an accepted task waited for its model's capacity",
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.tokens_generated = counter("tokens_generated", "Tokens generated, by model", ["model"])
        self.tokens_per_second = gauge(
            "tokens_per_second",
            "Generation speed measured by the startup benchmark (remote engines: their health checks), by model",
            ["model"],
        )
        self.peers = gauge("peers", "Connected libp2p peers")
        self.mesh_peers = gauge("mesh_peers", "Gossipsub mesh peers, by topic", ["topic"])
        self.gossip_dropped = counter("gossip_dropped", "Gossip messages dropped: their topic's queue was full")
        self.connections_refused = counter(
            "connections_refused",
            "Connections refused or closed for a peer's abuse, by reason: open, rate (inbound, before the handshake:"
            " their IP had too many open or opened too many in the last minute), receive_window (the peer sent past"
            " a stream's flow-control window), stream_flood (it went on opening streams past its connection's cap)",
            ["reason"],
        )
        self.streams_refused = counter(
            "streams_refused", "Streams a peer opened past the cap of its connection, reset at once"
        )
        self.journal_backlog = gauge("journal_backlog", "Finished results not yet published")
        self.journal_errors = counter(
            "journal_errors", "Journal reads and writes SQLite refused (a full disk, an I/O error)"
        )
        self.results_unjournalled = gauge(
            "results_unjournalled", "Results held in memory because the journal refused to write them"
        )
        self.capacity_free = gauge(
            "capacity_free", "Task places free now, queue places included (what heartbeats advertise as free)"
        )
        self.tasks_running = gauge("tasks_running", "Tasks admitted and not finished (executing or queued)")
        self.tasks_busy = counter(
            "tasks_busy", "Valid tasks answered busy on a direct-delivery stream, by reason", ["reason"]
        )
        self.remote_engine_up = gauge(
            "remote_engine_up",
            "1 while the remote engine of a model answers its health check, else 0, by model",
            ["model"],
        )
        self.remote_engine_down = counter(
            "remote_engine_down",
            "Times a remote engine went from up to down, by model",
            ["model"],
        )

        self.exec_crashes = counter(
            "exec_crashes",
            "Execution processes that died (signal, abort, memory limit, unresponsive), by model and cause",
            ["model", "cause"],
        )
        self.exec_restarts = counter(
            "exec_restarts",
            "Execution processes restarted after they ended, by model",
            ["model"],
        )
        self.exec_stalls = counter(
            "exec_stalls",
            "Execution processes killed because their decode loop made no progress, by model and native call",
            ["model", "call"],
        )
        self.exec_start_failures = counter(
            "exec_start_failures",
            "Execution processes that failed to start (each is retried with backoff), by model",
            ["model"],
        )
        self.exec_process_up = gauge(
            "exec_process_up",
            "1 while the model's execution process serves, by model",
            ["model"],
        )
        self.exec_rss_bytes = gauge(
            "exec_rss_bytes",
            "Resident memory of the model's execution process, by model",
            ["model"],
        )

    def reject(self, reason: str) -> None:
        """Count a task message that failed validation under ``reason``."""
        self.tasks_rejected.labels(reason=reason).inc()

    def ignore(self, reason: str) -> None:
        """Count a valid task that is not for this node (ignored), under ``reason``."""
        self.tasks_ignored.labels(reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
