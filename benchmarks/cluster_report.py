"""What the cluster harness writes: a Markdown table of its batches and PNG plots."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

from benchmarks.cluster_run import BatchResult  # noqa: E402


def non_target_cpu(batch: BatchResult) -> tuple[float, float]:
    """(mean CPU share of a node no task picks during the batch, the same when idle); 0.01 = 1% of a core."""
    nodes = batch.non_target()
    if not nodes:
        return 0.0, 0.0
    return statistics.fmean(c.cpu_per_s for c in nodes), statistics.fmean(c.idle_cpu_per_s for c in nodes)


def non_target_bytes(batch: BatchResult) -> tuple[float, float]:
    nodes = batch.non_target()
    if not nodes:
        return 0.0, 0.0
    return statistics.fmean(c.bytes_per_s for c in nodes), statistics.fmean(c.idle_bytes_per_s for c in nodes)


def render_table(batches: list[BatchResult]) -> str:
    lines = [
        "| batch | delivery | N | P | tasks | done | lost | dup | retried | tasks/s | p50 ms | p99 ms "
        "| balance max/min | non-target CPU busy / idle | non-target CPU per task | non-target KB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in batches:
        busy, idle = non_target_cpu(b)
        per_task = (busy - idle) / b.tasks_per_s * 1000 if b.tasks_per_s else 0.0
        kb = non_target_bytes(b)[0] / 1024
        lines.append(
            f"| {b.spec.label} | {b.delivery_used} | {b.serving} | {b.spec.publishers} | {b.spec.tasks} "
            f"| {b.completed} | {b.lost} | {b.duplicates} | {b.retried} | {b.tasks_per_s:.1f} "
            f"| {b.p50_ms:.0f} | {b.p99_ms:.0f} | {b.balance_ratio:.2f} ({min(b.balance.values(), default=0)}"
            f"-{max(b.balance.values(), default=0)}) | {busy:.1%} / {idle:.1%} | {per_task:.2f} ms | {kb:.1f} |"
        )
    return "\n".join(lines)


def render_notes(batches: list[BatchResult]) -> str:
    notes = [f"- {b.spec.label}: {note}" for b in batches for note in b.fault_notes]
    notes += [
        f"- {b.spec.label}: {b.wire_duplicates} results seen twice on the wire, {b.abandoned_results} results of "
        f"abandoned attempts arrived (work done twice, delivered once); result envelope {b.result_bytes:.0f} B, "
        f"heartbeat envelope {b.heartbeat_bytes:.0f} B; heartbeat age at the publishers p50 "
        f"{b.heartbeat_lag_p50_s:.2f} s, p99 {b.heartbeat_lag_p99_s:.2f} s, {b.heartbeats_refused:.0%} ignored"
        for b in batches
    ]
    return "\n".join(notes)


def plot(batches: list[BatchResult], out: Path) -> list[Path]:
    """cluster-scaling.png (tasks/s, latency and non-target CPU against N) and cluster-balance.png."""
    scale = [b for b in batches if b.spec.fault == "none" and b.spec.workload == "sample"]
    written: list[Path] = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for delivery in sorted({b.delivery_used for b in scale}):
        runs = sorted((b for b in scale if b.delivery_used == delivery), key=lambda b: b.serving)
        ns = [b.serving for b in runs]
        axes[0].plot(ns, [b.tasks_per_s for b in runs], "o-", label=delivery)
        axes[1].plot(ns, [b.p50_ms for b in runs], "o-", label=f"{delivery} p50")
        axes[1].plot(ns, [b.p99_ms for b in runs], "s--", label=f"{delivery} p99")
        axes[2].plot(ns, [non_target_cpu(b)[0] * 100 for b in runs], "o-", label=f"{delivery} busy")
        axes[2].plot(ns, [non_target_cpu(b)[1] * 100 for b in runs], "s--", label=f"{delivery} idle")
    titles = ["completed tasks/s", "publish-to-result latency (ms)", "non-target node CPU (% of a core)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("serving nodes N")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "cluster-scaling.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    if batches:
        fig, ax = plt.subplots(figsize=(8, 4))
        biggest = max(batches, key=lambda b: (b.serving, b.spec.tasks))
        ax.bar(list(biggest.balance), list(biggest.balance.values()))
        ax.set_title(f"tasks per node: {biggest.spec.label} ({biggest.delivery_used})")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        fig.tight_layout()
        path = out / "cluster-balance.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
