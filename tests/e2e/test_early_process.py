"""The first execution process is spawned before the daemon's imports and adopted by the pool.

A real pool and real execution processes on SmolLM2: the pool's first start of the model
uses the process `EarlyProcess` spawned (same pid), a restart spawns a new one, and a
process nobody took is ended by `close`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from node.daemon.processes.early import EarlyProcess
from node.daemon.processes.pool import ExecutionPool
from node.ops.metrics import NodeMetrics
from tests.support.cluster import node_settings

MODEL = "smollm2:135m"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_pool_adopts_the_early_process_as_the_models_first_and_restarts_without_it(tmp_path: Path) -> None:
    settings = node_settings(tmp_path)
    early = await EarlyProcess.spawn(settings)
    pool = ExecutionPool(settings, NodeMetrics(), early)
    try:
        await asyncio.wait_for(pool.start(), 120)
        process = pool.process(MODEL)
        assert process is not None and process.pid is not None
        assert early.take(MODEL) is None  # taken once, by the pool
        first_pid = process.pid
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while (current := pool.process(MODEL)) is None or current.pid == first_pid:
            assert time.monotonic() < deadline, "the model never got a process again"
            await asyncio.sleep(0.1)
        assert (await current.probe(10)).progress is not None  # the restart's own process answers
    finally:
        await pool.close()
        await early.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_early_process_nobody_took_is_ended_by_close(tmp_path: Path) -> None:
    early = await EarlyProcess.spawn(node_settings(tmp_path))
    assert early.take("another-model") is None  # spawned for the first configured model only
    process = early.take(MODEL)
    assert process is not None and process.pid is not None and process.alive
    untaken = EarlyProcess(process)
    await untaken.close()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
