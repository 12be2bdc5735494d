"""8. Execution-process IPC: what the boundary between the daemon and a model's execution
process costs per task.

A workflow that makes no model call (one `sample` step) run through a real
execution process (`ExecutionPool.run`: JSON line out, the engine in the child,
JSON line back) next to the same workflow run by the engine in this process; the
difference of the medians is the IPC cost per task. The health probe's round trip
is the bare cost of one message each way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import alternate, paired_ratio, summarize
from benchmarks.workloads import MODEL_NAME, sample_workflow
from config.settings import Settings
from node.daemon.processes.pool import ExecutionPool
from node.daemon.processes.tool_settings import tool_settings
from node.execution.model_setup import create_model
from node.execution.protocol import RunTask, TaskDone
from node.execution.workflow_setup import engine_options
from node.ops.metrics import NodeMetrics
from workflows import parse_workflow, run_workflow

BLOCK = 20


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=10, quick=3)
    workflow = sample_workflow()
    through: list[float] = []
    inline: list[float] = []
    probes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-ipc-") as data_dir:
        settings = Settings.load(
            data_dir=Path(data_dir),
            models=[MODEL_NAME],
            n_threads=options.threads,
            startup_benchmark=False,
            http_enabled=False,
            log_level="warning",
        )
        pool = ExecutionPool(settings, NodeMetrics())
        await pool.start()
        model = await create_model(MODEL_NAME, settings)
        tools, engine = tool_settings(settings), engine_options(settings)
        try:
            process = pool.process(MODEL_NAME)
            assert process is not None

            async def via_process(i: int) -> float:
                started = time.perf_counter()
                for j in range(BLOCK):
                    request = RunTask(
                        task_id=f"ipc-{i}-{j}", workflow=workflow, deadline_ns=time.time_ns() + 30 * 10**9
                    )
                    answer = await pool.run(MODEL_NAME, request)
                    if not isinstance(answer, TaskDone):
                        raise RuntimeError(f"sample workflow failed in the execution process: {answer}")
                per_task = (time.perf_counter() - started) / BLOCK
                for _ in range(BLOCK):
                    probe_started = time.perf_counter()
                    await process.probe(10)
                    probes.append((time.perf_counter() - probe_started) * 1e6)
                return per_task

            async def in_process(_: int) -> float:
                started = time.perf_counter()
                for _ in range(BLOCK):
                    await run_workflow(parse_workflow(workflow), model, tools=tools, options=engine)
                return (time.perf_counter() - started) / BLOCK

            await alternate(1, via_process, in_process)  # warm-up
            probes.clear()
            through, inline = await alternate(rounds, via_process, in_process)
        finally:
            await model.close()
            await pool.close()
    through_ms = [t * 1000 for t in through]
    inline_ms = [t * 1000 for t in inline]
    ipc_us = (statistics.median(through_ms) - statistics.median(inline_ms)) * 1000
    what = "ipc"
    return Section(
        name="ipc",
        title="8. Execution-process IPC",
        rows=[
            Row(
                metric="task without model call (ms per task)",
                node=summarize(through_ms, "ms", what=what),
                baseline=summarize(inline_ms, "ms", what=what),
                baseline_name="engine in the same process",
                ratio=paired_ratio(through_ms, inline_ms, what=what),
            ),
            Row(metric="health probe round trip", node=summarize(probes, "us", what=what, percentiles=True)),
        ],
        notes=[
            (
                f"{rounds} alternating blocks of {BLOCK} tasks; the node column runs them through one execution "
                f"process (JSON lines over a socketpair), the baseline runs the same engine call here. "
                f"IPC cost per task (difference of medians): {ipc_us:.0f} us."
            ),
        ],
    )
