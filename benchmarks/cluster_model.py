"""The cost model of docs/SCALING.md, fitted to the harness's measurements.

A node that no task picks (an observer) spends, in cores:

    cpu = base + c_hb * M / h + G * m * c_msg

M nodes heartbeating every h seconds (averaged over the batch: nodes killed, drained or frozen
mid-batch count for the time they heartbeat), G tasks/s in the whole network, m gossip
messages per task that reach it (2 with gossip delivery: the task and its result;
0 with direct delivery) and c_msg CPU seconds per gossip message. Bytes read
follow the same form (b_base, b_hb per heartbeat, b_msg per message). base and
c_hb come from the idle windows (a least-squares line over the cluster sizes), c_msg
from gossip batches (their median; batches that lost tasks are left out of the
per-task fits), so each batch is predicted from constants, not from itself; the fit
reports predicted/measured for every batch.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from pydantic import BaseModel  # noqa: E402

from benchmarks.cluster_run import BatchResult  # noqa: E402

ONE_CORE = 1.0
LINK_BYTES_PER_S = 100e6 / 8  # 100 Mbit/s


class CostModel(BaseModel):
    base_cpu: float  # cores, a node with no traffic at all
    cpu_per_heartbeat: float  # CPU s per heartbeat received
    cpu_per_message: float  # CPU s per gossip task or result message at a node not picked
    cpu_per_direct_task: float  # CPU s at a node not picked per task delivered directly (ideally 0)
    base_bytes: float  # bytes/s read with no traffic
    bytes_per_heartbeat: float
    bytes_per_message: float  # bytes read per gossip message (mesh copies included)
    heartbeat_interval: float
    cpu_per_own_task: dict[str, float] = {}  # delivery -> CPU s a serving node spends per task it runs

    def messages_per_task(self, delivery: str) -> int:
        return 2 if delivery == "gossip" else 0

    def cpu(self, nodes: float, rate: float, delivery: str, interval: float | None = None) -> float:
        """Cores a node not picked spends with `nodes` heartbeating and `rate` tasks/s in the network."""
        h = interval or self.heartbeat_interval
        per_task = self.messages_per_task(delivery) * self.cpu_per_message
        if delivery != "gossip":
            per_task = self.cpu_per_direct_task
        return self.base_cpu + self.cpu_per_heartbeat * nodes / h + rate * per_task

    def bandwidth(self, nodes: float, rate: float, delivery: str, interval: float | None = None) -> float:
        h = interval or self.heartbeat_interval
        per_task = self.messages_per_task(delivery) * self.bytes_per_message
        return self.base_bytes + self.bytes_per_heartbeat * nodes / h + rate * per_task


def _members_idle(batch: BatchResult) -> int:
    """Every node that heartbeats in the idle window: serving nodes alive at the start, observers, the bootstrap."""
    return batch.members or len(batch.costs)


def _members(batch: BatchResult) -> float:
    """Nodes heartbeating during the batch, averaged over its time (a fault removes some for a while)."""
    return batch.members_mean or _members_idle(batch)


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Intercept and slope of a least-squares line (through the origin if all x are equal)."""
    if len(set(xs)) < 2:
        slope = statistics.fmean(ys) / statistics.fmean(xs)
        return 0.0, slope
    slope, intercept = statistics.linear_regression(xs, ys)
    if intercept < 0:  # noise: keep the model physical
        return 0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return intercept, slope


def fit(batches: list[BatchResult]) -> CostModel | None:
    sample = [b for b in batches if b.spec.workload == "sample" and b.non_target()]
    if not sample:
        return None
    h = sample[0].spec.heartbeat_interval
    xs = [_members_idle(b) / h for b in sample for _ in b.non_target()]
    idle_cpu = [c.idle_cpu_per_s for b in sample for c in b.non_target()]
    idle_bytes = [c.idle_bytes_per_s for b in sample for c in b.non_target()]
    base_cpu, per_hb = _line(xs, idle_cpu)
    base_bytes, bytes_hb = _line(xs, idle_bytes)

    def excess(b: BatchResult, what: str) -> float:
        """Above the idle baseline, the baseline less the heartbeats of members gone in a fault."""
        nodes = b.non_target()
        busy = statistics.fmean(getattr(c, f"{what}_per_s") for c in nodes)
        idle = statistics.fmean(getattr(c, f"idle_{what}_per_s") for c in nodes)
        gone = (_members_idle(b) - _members(b)) / h * (per_hb if what == "cpu" else bytes_hb)
        return max(busy - idle + gone, 0.0)

    # Per-task costs from batches that ran at a steady rate and membership: in one that lost tasks
    # the rate is mostly waiting, and a small rate divides the noise of the idle baseline into huge
    # numbers; a kill or drain changes the network mid-batch (the quick mode has only a kill batch).
    running = [b for b in sample if b.tasks_per_s > 0]
    steady = (
        [b for b in running if b.lost == 0 and b.spec.fault in ("none", "stop")]
        or [b for b in running if b.lost == 0]
        or running
    )
    gossip = [b for b in steady if b.delivery_used == "gossip"]
    direct = [b for b in steady if b.delivery_used != "gossip"]
    per_msg = statistics.median([excess(b, "cpu") / (2 * b.tasks_per_s) for b in gossip]) if gossip else 0.0
    per_direct = statistics.median([excess(b, "cpu") / b.tasks_per_s for b in direct]) if direct else 0.0
    bytes_msg = statistics.median([excess(b, "bytes") / (2 * b.tasks_per_s) for b in gossip]) if gossip else 0.0
    own = {d: _own_task_cost(b_list, per_msg if d == "gossip" else per_direct, d) for d, b_list in
           (("gossip", gossip), ("direct", direct)) if b_list}  # fmt: skip
    return CostModel(
        cpu_per_own_task=own,
        base_cpu=base_cpu,
        cpu_per_heartbeat=per_hb,
        cpu_per_message=per_msg,
        cpu_per_direct_task=per_direct,
        base_bytes=base_bytes,
        bytes_per_heartbeat=bytes_hb,
        bytes_per_message=bytes_msg,
        heartbeat_interval=h,
    )


def _own_task_cost(batches: list[BatchResult], per_message: float, delivery: str) -> float:
    """Median over serving nodes of (busy - idle - what it pays for others' traffic) / its own tasks."""
    costs = []
    for b in batches:
        others = b.tasks_per_s * (2 * per_message if delivery == "gossip" else per_message)
        for c in b.costs:
            rate = c.tasks / b.seconds
            if c.role == "serving" and rate > 0:
                costs.append(max(c.cpu_per_s - c.idle_cpu_per_s - others, 0.0) / rate)
    return statistics.median(costs) if costs else 0.0


def measured(batch: BatchResult) -> tuple[float, float]:
    nodes = batch.non_target()
    return statistics.fmean(c.cpu_per_s for c in nodes), statistics.fmean(c.bytes_per_s for c in nodes)


def predictions(model: CostModel, batches: list[BatchResult]) -> list[tuple[BatchResult, float, float, float, float]]:
    """(batch, predicted CPU, measured CPU, predicted bytes/s, measured bytes/s) per batch with observers."""
    rows = []
    for b in batches:
        if not b.non_target() or b.spec.workload != "sample":
            continue
        cpu, read = measured(b)
        rows.append(
            (
                b,
                model.cpu(_members(b), b.tasks_per_s, b.delivery_used),
                cpu,
                model.bandwidth(_members(b), b.tasks_per_s, b.delivery_used),
                read,
            )
        )
    return rows


def render_model(model: CostModel, batches: list[BatchResult]) -> str:
    lines = [
        "## Cost model of a node no task picks (fitted)",
        "",
        f"- base {model.base_cpu:.2%} of a core, {model.base_bytes / 1024:.1f} KB/s",
        f"- per heartbeat received: {model.cpu_per_heartbeat * 1000:.2f} ms CPU, {model.bytes_per_heartbeat:.0f} B",
        f"- per gossip task/result message: {model.cpu_per_message * 1000:.2f} ms CPU, {model.bytes_per_message:.0f} B",
        f"- per directly delivered task (elsewhere): {model.cpu_per_direct_task * 1000:.3f} ms CPU",
        *[
            f"- per task a serving node runs itself ({d}): {cost * 1000:.2f} ms CPU"
            for d, cost in model.cpu_per_own_task.items()
        ],
        "",
        "| batch | delivery | members | G tasks/s | CPU model | CPU measured | ratio | KB/s model | KB/s measured | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, p_cpu, m_cpu, p_bytes, m_bytes in predictions(model, batches):
        lines.append(
            f"| {b.spec.label} | {b.delivery_used} | {_members(b):.1f} | {b.tasks_per_s:.1f} | {p_cpu:.1%} | {m_cpu:.1%} "
            f"| {p_cpu / m_cpu if m_cpu else 0:.2f} | {p_bytes / 1024:.1f} | {m_bytes / 1024:.1f} "
            f"| {p_bytes / m_bytes if m_bytes else 0:.2f} |"
        )
    return "\n".join(lines)


def plot_model(model: CostModel, batches: list[BatchResult], out: Path) -> Path:
    """Left: model against every measured batch (within the 2x band?). Right: the projection at h = 30 s."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = predictions(model, batches)
    for delivery, marker in (("gossip", "o"), ("direct", "s")):
        pts = [(m, p) for b, p, m, _, _ in rows if b.delivery_used == delivery]
        if pts:
            left.scatter([m * 100 for m, _ in pts], [p * 100 for _, p in pts], marker=marker, label=delivery)
    values = [v * 100 for _, p, m, _, _ in rows for v in (p, m) if v > 0] or [1.0]
    lo, hi = min(values) / 2, max(values) * 2
    left.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="model = measured")
    left.plot([lo, hi], [2 * lo, 2 * hi], "k:", lw=0.8, label="2x")
    left.plot([lo, hi], [lo / 2, hi / 2], "k:", lw=0.8)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("measured non-target CPU (% of a core)")
    left.set_ylabel("model (% of a core)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    rates = [10**e for e in [x / 10 for x in range(-10, 41)]]
    for n, style in ((100, "-"), (1000, "--"), (10000, ":")):
        for delivery, colour in (("gossip", "C0"), ("direct", "C1")):
            right.plot(
                rates,
                [model.cpu(n, g, delivery, 30.0) + g / n * model.cpu_per_own_task.get(delivery, 0.0) for g in rates],
                style,
                color=colour,
                label=f"{delivery}, N={n}",
            )
    right.axhline(ONE_CORE, color="red", lw=0.8, label="one core")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("network task rate G (tasks/s), heartbeats every 30 s")
    right.set_ylabel("CPU of a node, its own share G/N included (cores)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = out / "cluster-model.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_limits(model: CostModel, interval: float = 30.0) -> str:
    """Where a node reaches one core or 100 Mbit/s, by the fitted model, heartbeats every `interval` s."""
    h = interval
    per_hb, per_msg = model.cpu_per_heartbeat, model.cpu_per_message
    lines = [f"Heartbeats every {h:g} s; one core = 1 CPU s/s, 100 Mbit/s = {LINK_BYTES_PER_S / 1e6:.1f} MB/s.", ""]
    if per_hb > 0:
        lines.append(f"- heartbeats alone fill one core at N = {(1 - model.base_cpu) * h / per_hb:,.0f} nodes")
    if model.bytes_per_heartbeat > 0:
        lines.append(
            f"- heartbeats alone fill 100 Mbit/s at N = {LINK_BYTES_PER_S * h / model.bytes_per_heartbeat:,.0f}"
        )
    for n in (100, 1000, 10000):
        left = 1 - model.base_cpu - per_hb * n / h
        if per_msg > 0 and left > 0:
            lines.append(f"- gossip, N = {n:,}: one core at G = {left / (2 * per_msg):,.0f} tasks/s in the network")
        link = LINK_BYTES_PER_S - model.base_bytes - model.bytes_per_heartbeat * n / h
        if model.bytes_per_message > 0 and link > 0:
            lines.append(f"- gossip, N = {n:,}: 100 Mbit/s at G = {link / (2 * model.bytes_per_message):,.0f} tasks/s")
    for delivery, own in model.cpu_per_own_task.items():
        if own > 0:
            lines.append(
                f"- {delivery}: a node's own tasks fill one core at {1 / own:,.0f} tasks/s per node "
                f"(G = N x that with direct delivery, less the gossip share with gossip)"
            )
    return "\n".join(lines)
