"""Prometheus metrics of one node, on a registry of its own (no global state).

The daemon updates the public attributes directly (``metrics.tasks_received.inc()``,
``metrics.tasks_rejected.labels(reason="expired").inc()``) or through the few
helpers below; ``render()`` produces the text that ``GET /metrics`` serves.
All names carry the ``compute_node_`` prefix; counters get ``_total``.
"""

from __future__ import annotations

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
        r = self.registry
        self.tasks_received = Counter(
            "tasks_received", "Task messages received from the network", namespace=NAMESPACE, registry=r
        )
        # Exported as compute_node_tasks_taken_total, the name dashboards use: keep it.
        self.tasks_accepted = Counter("tasks_taken", "Tasks accepted for execution", namespace=NAMESPACE, registry=r)
        self.tasks_completed = Counter(
            "tasks_completed", "Tasks that produced a result", namespace=NAMESPACE, registry=r
        )
        self.tasks_failed = Counter(
            "tasks_failed", "Tasks that ended with an error result", namespace=NAMESPACE, registry=r
        )
        self.tasks_rejected = Counter(
            "tasks_rejected",
            "Tasks refused (invalid, expired, bad signature...), by reason",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.tasks_ignored = Counter(
            "tasks_ignored",
            "Valid tasks not accepted (duplicate, no model, no capacity...), by reason",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.task_latency_seconds = Histogram(
            "task_latency_seconds",
            "Time from receiving a task to publishing its result",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.task_queue_wait_seconds = Histogram(
            "task_queue_wait_seconds",
            "Time an accepted task waited for an admission slot",
            namespace=NAMESPACE,
            registry=r,
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.tokens_generated = Counter(
            "tokens_generated", "Tokens generated, by model", ["model"], namespace=NAMESPACE, registry=r
        )
        self.tokens_per_second = Gauge(
            "tokens_per_second",
            "Generation speed of the last completion, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.peers = Gauge("peers", "Connected libp2p peers", namespace=NAMESPACE, registry=r)
        self.mesh_peers = Gauge(
            "mesh_peers", "Gossipsub mesh peers, by topic", ["topic"], namespace=NAMESPACE, registry=r
        )
        self.gossip_dropped = Counter(
            "gossip_dropped", "Gossip messages dropped: their topic's queue was full", namespace=NAMESPACE, registry=r
        )
        self.journal_backlog = Gauge(
            "journal_backlog", "Finished results not yet published", namespace=NAMESPACE, registry=r
        )
        self.capacity_free = Gauge(
            "capacity_free", "Admission slots free for new tasks", namespace=NAMESPACE, registry=r
        )
        self.tasks_running = Gauge("tasks_running", "Tasks executing now", namespace=NAMESPACE, registry=r)
        self.remote_engine_up = Gauge(
            "remote_engine_up",
            "1 while the remote engine of a model answers its health check, else 0, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.remote_engine_down = Counter(
            "remote_engine_down",
            "Times a remote engine went from up to down, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )

        self.exec_crashes = Counter(
            "exec_crashes",
            "Execution processes that died (signal, abort, memory limit, unresponsive), by model and cause",
            ["model", "cause"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.exec_restarts = Counter(
            "exec_restarts",
            "Execution processes restarted after they ended, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.exec_stalls = Counter(
            "exec_stalls",
            "Execution processes killed because their decode loop made no progress, by model and native call",
            ["model", "call"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.exec_start_failures = Counter(
            "exec_start_failures",
            "Execution processes that failed to start (each is retried with backoff), by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.exec_process_up = Gauge(
            "exec_process_up",
            "1 while the model's execution process serves, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.exec_rss_bytes = Gauge(
            "exec_rss_bytes",
            "Resident memory of the model's execution process, by model",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
        )

    def reject(self, reason: str) -> None:
        """Count a refused task under ``reason``."""
        self.tasks_rejected.labels(reason=reason).inc()

    def ignore(self, reason: str) -> None:
        """Count a valid task that was not accepted, under ``reason``."""
        self.tasks_ignored.labels(reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
