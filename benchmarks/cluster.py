"""`python -m benchmarks cluster [--quick] ...`: a network of node processes on loopback,
measured under load and under faults.

For each N in --nodes it starts a cluster (a bootstrap node, N serving nodes, idle
observers: benchmarks/cluster_nodes.py) and runs a batch of tiny one-step `sample`
tasks from P publisher processes per delivery mode. At the largest N it then runs
the faults (--faults): SIGSTOP/SIGCONT of a node, kill -9 of a third of the nodes,
SIGTERM drain of a node, each mid-batch; --batches picks some of them (for example the kill
batch alone: --nodes 16 --batches kill). --model-run adds a batch of real
generations (the test model, 1 thread) on 3 nodes. It writes cluster.md (the
table), cluster.json (every measurement), PNG plots and the cost model's fit
(benchmarks/cluster_model.py) into --out. Exit status 1 if a task was lost or
delivered twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from benchmarks.cluster_model import fit, plot_model, render_limits, render_model
from benchmarks.cluster_nodes import Cluster, NodeConfig
from benchmarks.cluster_publisher import supports_delivery
from benchmarks.cluster_report import plot, render_notes, render_table
from benchmarks.cluster_run import BatchResult, BatchSpec, run_batch

DEFAULT_OUT = Path(__file__).with_name(".work") / "cluster"
# The frozen node rejoins; the kill batch then runs on all N nodes; the drain last, on the survivors.
FAULT_ORDER = ["stop", "kill", "drain"]
BATCH_KINDS = ["scale", *FAULT_ORDER]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 nodes, 2 publishers, one batch of 200 tasks with a kill -9 (CI)"
    )
    parser.add_argument("--nodes", default="4,8,16", help="serving node counts, comma separated (1 to 24)")
    parser.add_argument("--observers", type=int, default=2, help="nodes hosting a model no task asks for")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=4, help="tasks in flight per publisher")
    parser.add_argument("--sweep-tasks", type=int, default=400, help="tasks per scaling batch")
    parser.add_argument(
        "--tasks", type=int, default=2000, help="tasks in the kill batch (stop, drain: max(sweep, 150))"
    )
    parser.add_argument("--faults", default="stop,kill,drain", help="faults at the largest N ('' for none)")
    parser.add_argument(
        "--batches",
        default=",".join(BATCH_KINDS),
        help="which batches to run, of " + ",".join(BATCH_KINDS) + " ('scale': the sweep over --nodes; "
        "e.g. --nodes 16 --batches kill for the kill batch alone)",
    )
    parser.add_argument(
        "--delivery",
        default="both",
        choices=["gossip", "direct", "both"],
        help="publisher delivery mode; 'direct' and 'both' need a Client with delivery= (protocol 0.4)",
    )
    parser.add_argument("--heartbeat", type=float, default=5.0, help="node heartbeat interval (s)")
    parser.add_argument("--attempt-timeout", type=float, default=10.0, help="seconds before a task is retried")
    parser.add_argument("--model-run", action="store_true", help="also real generations on 3 nodes at 1 thread")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="only rewrite the table and plots from --out's JSON")
    return parser


def deliveries(choice: str) -> list[str]:
    """The delivery modes to run; without protocol 0.4 in this tree only gossip (and a note)."""
    wanted = ["gossip", "direct"] if choice == "both" else [choice]
    if not supports_delivery():
        if "direct" in wanted:
            print("this tree's Client has no delivery=: running gossip only", file=sys.stderr)
        return ["gossip"]
    return wanted


async def run(args: argparse.Namespace, failures: list[str]) -> list[BatchResult]:
    config = NodeConfig(heartbeat_interval=args.heartbeat)
    modes = deliveries(args.delivery)
    sizes = [int(n) for n in str(args.nodes).split(",") if n]
    chosen = set(str(args.batches).split(","))
    unknown = chosen - set(BATCH_KINDS) - {""}
    if unknown:
        raise SystemExit(f"unknown batches {sorted(unknown)}: choose from {', '.join(BATCH_KINDS)}")
    faults = [f for f in FAULT_ORDER if f in str(args.faults).split(",") and f in chosen]
    sweep = args.sweep_tasks if "scale" in chosen else 0
    batches: list[BatchResult] = []

    def spec(label: str, delivery: str, tasks: int, fault: str = "none", workload: str = "sample") -> BatchSpec:
        return BatchSpec(
            label=label,
            delivery=delivery,
            publishers=args.publishers,
            tasks=tasks,
            in_flight=args.in_flight,
            attempt_timeout=args.attempt_timeout,
            fault=fault,  # type: ignore[arg-type]
            workload=workload,
            idle_s=max(2 * args.heartbeat, 4.0),
            heartbeat_interval=args.heartbeat,
        )

    async def batch(cluster: Cluster, s: BatchSpec) -> None:
        print(f"  batch {s.label} ({s.delivery}, {s.tasks} tasks) ...", file=sys.stderr, flush=True)
        try:
            result = await run_batch(cluster, s, args.out / "logs" / f"{s.label}-{s.delivery}")
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on, the exit status is 1
            failures.append(f"{s.label} ({s.delivery}): {type(exc).__name__}: {exc}")
            print(f"    FAILED: {failures[-1]}", file=sys.stderr, flush=True)
            return
        print(
            f"    {result.completed}/{s.tasks} done, {result.lost} lost, {result.duplicates} dup, "
            f"{result.tasks_per_s:.1f} tasks/s in {result.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        batches.append(result)
        args.out.mkdir(parents=True, exist_ok=True)  # saved as it goes: --render works on a cut-short run
        (args.out / "cluster.json").write_text(json.dumps([b.model_dump(mode="json") for b in batches], indent=1))

    for n in sizes:
        if not sweep and n != max(sizes):
            continue  # nothing to run at this size: the faults run at the largest
        print(f"cluster of {n} serving nodes + {args.observers} observers ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with Cluster(n, args.observers, config) as cluster:
            print(f"  started in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            started = time.perf_counter()
            for delivery in modes if sweep else []:
                await batch(cluster, spec(f"scale-N{n}", delivery, args.sweep_tasks))
            if n == max(sizes):
                for delivery in modes:
                    for fault in faults:
                        if fault in ("drain", "kill") and delivery != modes[-1]:
                            continue  # they leave the cluster smaller: once, in the last mode
                        tasks = args.tasks if fault == "kill" else max(args.sweep_tasks, 150)
                        await batch(cluster, spec(f"{fault}-N{n}", delivery, tasks, fault))
            started = time.perf_counter()
        print(f"  stopped in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if args.model_run:
        print("cluster of 3 nodes for real generations ...", file=sys.stderr, flush=True)
        with Cluster(3, args.observers, config) as cluster:
            for delivery in modes:
                await batch(cluster, spec("model-N3", delivery, 24, workload="generate"))
    return batches


def write(batches: list[BatchResult], failures: list[str], out: Path, command: str, seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps([b.model_dump(mode="json") for b in batches], indent=1))
    plots = plot(batches, out)
    model = fit(batches)
    if model is not None:
        plots.append(plot_model(model, batches, out))
    text = [
        "# Cluster harness",
        "",
        f"`{command}`, {seconds:.0f} s",
        "",
        render_table(batches),
        "",
        render_notes(batches),
        *[f"- **FAILED** {failure}" for failure in failures],
        "",
        render_model(model, batches) if model is not None else "(no observer measurements: no cost model)",
        "",
        render_limits(model) if model is not None else "",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
    ]
    path = out / "cluster.md"
    path.write_text("\n".join(text) + "\n")
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "cluster.json").read_text())
        batches = [BatchResult.model_validate(b) for b in saved]
        path = write(batches, [], args.out, "(re-rendered) python -m benchmarks cluster " + " ".join(argv), 0.0)
        print(path.read_text())
        return 0
    if args.quick:
        args.nodes, args.publishers, args.sweep_tasks, args.tasks, args.faults = "3", 2, 0, 200, "kill"
        args.observers, args.in_flight, args.attempt_timeout, args.heartbeat = 1, 4, 6.0, 3.0
        if args.delivery == "both":  # one batch: the Client's own default
            args.delivery = "direct" if supports_delivery() else "gossip"
    from node.ops.log import configure_logging

    configure_logging("warning", "console")
    started = time.perf_counter()
    failures: list[str] = []
    batches = asyncio.run(run(args, failures))
    command = "python -m benchmarks cluster " + " ".join(argv)
    path = write(batches, failures, args.out, command, time.perf_counter() - started)
    print(path.read_text())
    print(f"wrote {path}", file=sys.stderr)
    return 1 if failures or any(b.lost or b.duplicates for b in batches) else 0
