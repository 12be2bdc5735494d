"""5. Footprint: startup time to READY, RSS of an idle node and of a node running a task,
next to the plain llama_cpp script loading the same model (benchmarks.raw_worker).
The node's RSS is its daemon plus its execution processes (one per model), also
reported separately.

The script holds the same KV cache as the node: one context of n_ctx x the node's
slots (`parallel`, 4 on CPU unless --node-arg --parallel says otherwise) tokens.
READY for the node is its `listening on` line (models loaded, P2P listening); for
the script, its first output line after `Llama(...)` returned. The running RSS is
the highest VmRSS sampled every 20 ms while one Simple task of 128 tokens runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process, rss_bytes, tree_rss_bytes
from benchmarks.raw_worker import RawWorker
from benchmarks.report import Row, Section
from benchmarks.stats import alternate, paired_ratio, summarize
from benchmarks.workloads import model_path, simple_workflow, story_prompt
from models.batching import DEFAULT_PARALLEL_CPU

IDLE_SETTLE_S = 1.5
MIB = 1024 * 1024
N_CTX = 2048


def node_slots(node_args: list[str]) -> int:
    """The node's sequence slots per model: its `--parallel` flag, else the CPU default."""
    for flag, value in zip(node_args, node_args[1:]):
        if flag == "--parallel":
            return int(value)
    for arg in node_args:
        if arg.startswith("--parallel="):
            return int(arg.split("=", 1)[1])
    return DEFAULT_PARALLEL_CPU


async def _peak_rss_while(pid: int, work: Awaitable[object]) -> int:
    """Highest RSS of `pid` sampled while `work` runs."""
    task = asyncio.ensure_future(work)
    peak = rss_bytes(pid)
    while not task.done():
        peak = max(peak, rss_bytes(pid))
        await asyncio.wait({task}, timeout=0.02)
    await task
    return peak


async def _peak_tree_rss_while(pid: int, work: Awaitable[object]) -> tuple[int, int, int]:
    """Highest (total, own, children's) RSS of `pid` and its children sampled while `work` runs."""
    task = asyncio.ensure_future(work)
    peaks = (0, 0, 0)
    while True:
        own, children = tree_rss_bytes(pid)
        peaks = (max(peaks[0], own + children), max(peaks[1], own), max(peaks[2], children))
        if task.done():
            break
        await asyncio.wait({task}, timeout=0.02)
    await task
    return peaks


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=3, quick=1)
    path = model_path()
    slots = node_slots(options.node_args)
    samples: dict[str, dict[str, list[float]]] = {
        side: {"startup": [], "idle": [], "busy": []} for side in ("node", "raw")
    }
    parts: dict[str, list[float]] = {"idle_daemon": [], "idle_exec": [], "busy_daemon": [], "busy_exec": []}

    async def node_round(i: int) -> None:
        with node_process(options.threads, extra_args=options.node_args) as node:
            samples["node"]["startup"].append(node.startup_seconds)
            async with Publisher(node) as publisher:
                await asyncio.sleep(IDLE_SETTLE_S)
                own, children = tree_rss_bytes(node.pid)
                samples["node"]["idle"].append((own + children) / MIB)
                parts["idle_daemon"].append(own / MIB)
                parts["idle_exec"].append(children / MIB)
                total, own, children = await _peak_tree_rss_while(
                    node.pid, publisher.run(simple_workflow(story_prompt(i)))
                )
                samples["node"]["busy"].append(total / MIB)
                parts["busy_daemon"].append(own / MIB)
                parts["busy_exec"].append(children / MIB)

    async def raw_round(i: int) -> None:
        with RawWorker(path, options.threads, N_CTX * slots) as raw:  # the node's KV size: slots x n_ctx
            samples["raw"]["startup"].append(raw.startup_seconds)
            await asyncio.sleep(IDLE_SETTLE_S)
            samples["raw"]["idle"].append(rss_bytes(raw.pid) / MIB)
            peak = await _peak_rss_while(raw.pid, asyncio.to_thread(raw.complete, story_prompt(i), 128))
            samples["raw"]["busy"].append(peak / MIB)

    await alternate(rounds, node_round, raw_round)
    what = "footprint"
    rows = []
    for key, metric, unit in (
        ("startup", "startup: spawn -> READY", "s"),
        ("idle", "RSS idle (daemon + execution processes)", "MiB"),
        ("busy", "RSS running a 128-token task (peak, daemon + execution processes)", "MiB"),
    ):
        rows.append(
            Row(
                metric=metric,
                node=summarize(samples["node"][key], unit, what=what),
                baseline=summarize(samples["raw"][key], unit, what=what),
                baseline_name=f"plain llama_cpp script, one {N_CTX * slots}-token context",
                ratio=paired_ratio(samples["node"][key], samples["raw"][key], what=what),
            )
        )
    for key, metric in (
        ("idle_daemon", "RSS idle: daemon alone"),
        ("idle_exec", "RSS idle: execution process"),
        ("busy_daemon", "RSS running a task (peak): daemon alone"),
        ("busy_exec", "RSS running a task (peak): execution process"),
    ):
        rows.append(Row(metric=metric, node=summarize(parts[key], "MiB", what=what)))
    return Section(
        name="footprint",
        title="5. Footprint",
        rows=rows,
        notes=[
            (
                f"{rounds} fresh start(s) per side, alternately; node with the default log level (info, JSON to a file), "
                f"n_ctx {N_CTX} x {slots} slots; the plain script one context of {N_CTX * slots} tokens (the same KV "
                f"cache); {options.threads} thread(s); RSS from /proc/<pid>/status VmRSS, idle measured "
                f"{IDLE_SETTLE_S:g} s after READY with a publisher connected. The node's RSS is its daemon plus "
                "its execution process (one model); peaks are sampled together every 20 ms."
            ),
        ],
    )
