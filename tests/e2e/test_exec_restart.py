"""A failed execution-process start, whatever its kind, is retried with backoff until one holds.

A real pool (no node) with real execution processes on SmolLM2; the test wrapper
`oversized_first_line` makes a start send the daemon a line past the protocol's frame
limit, which used to escape the restart loop and leave the model without a process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import structlog

from node.daemon.processes.pool import ExecutionPool
from node.execution.process import TEST_WRAPPER_ENV
from node.ops.metrics import NodeMetrics
from tests.support.cluster import node_settings
from tests.support.exec_wrappers import BAD_STARTS_ENV

MODEL = "smollm2:135m"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_start_that_breaks_the_protocol_is_retried_with_backoff_until_one_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_starts = tmp_path / "bad-starts"
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:oversized_first_line")
    monkeypatch.setenv(BAD_STARTS_ENV, str(bad_starts))
    metrics = NodeMetrics()
    pool = ExecutionPool(node_settings(tmp_path), metrics)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(pool.start(), 120)
        try:
            process = pool.process(MODEL)
            assert process is not None and process.pid is not None
            first_pid = process.pid
            bad_starts.write_text("2")  # the next two starts break the protocol
            os.kill(first_pid, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while (current := pool.process(MODEL)) is None or current.pid == first_pid:
                assert time.monotonic() < deadline, "the model never got a process again"
                await asyncio.sleep(0.1)
            assert bad_starts.read_text() == "0"
            pong = await current.probe(10)
            assert pong.progress is not None and pong.progress.busy == 0  # the new process answers, idle
            assert metrics.registry.get_sample_value("compute_node_exec_start_failures_total", {"model": MODEL}) == 2
            assert pool.advertised() == [MODEL]
        finally:
            await pool.close()
    failed = [entry for entry in logs if entry["event"] == "execution process restart failed"]
    assert [entry["failed_starts"] for entry in failed] == [1, 2]
    assert all(
        entry["error_type"] == "ExecutionProcessStartError" and "frame longer" in entry["error"] for entry in failed
    )
    assert [entry["retry_in_s"] for entry in failed] == [1.0, 2.0]  # backoff doubles
