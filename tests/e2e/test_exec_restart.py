"""A failed execution-process start, whatever its kind, is retried with backoff until one holds;
restarts that keep failing take the model out of service meanwhile.

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

from node.daemon.processes.pool import ExecutionPool, ModelUnavailableError
from node.execution.process import TEST_WRAPPER_ENV
from node.execution.protocol import RunTask
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
    # Unconfined: the wrapper counts the bad starts in the test's file, and a confined process writes only its
    # own scratch folder.
    pool = ExecutionPool(node_settings(tmp_path / "node", sandbox="off"), metrics)
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


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_model_whose_restarts_keep_failing_leaves_service_until_one_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file removed or damaged: every restart fails. Tasks waited for a restart until their deadline,
    and intake kept accepting them; now, after `exec_crash_limit` failed starts, it takes none and waiting
    ones fail at once (another node can take them), and a start that holds brings the model back."""
    bad_starts = tmp_path / "bad-starts"
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:oversized_first_line")
    monkeypatch.setenv(BAD_STARTS_ENV, str(bad_starts))
    pool = ExecutionPool(node_settings(tmp_path / "node", exec_crash_limit=2, sandbox="off"), NodeMetrics())  # as above
    await asyncio.wait_for(pool.start(), 120)
    try:
        process = pool.process(MODEL)
        assert process is not None and process.pid is not None
        bad_starts.write_text("3")  # the next three starts fail
        os.kill(process.pid, signal.SIGKILL)
        while pool.process(MODEL) is process:  # the exit is noticed
            await asyncio.sleep(0.05)
        request = RunTask(task_id="t1", workflow={}, deadline_ns=time.time_ns() + 120 * 10**9)
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError, match="fails to start"):
            await asyncio.wait_for(pool.run(MODEL, request), 60)
        # Failed at the second failed start (exec_crash_limit), before the third (4 s of backoff later)...
        assert bad_starts.read_text() == "1"
        # ...and not at the deadline (120 s): two process starts and 3 s of backoff took 5 s alone and 13 s beside
        # 4 CPU hogs on 2 cores.
        assert time.monotonic() - started < 30
        assert MODEL not in pool.available()
        deadline = time.monotonic() + 60
        while MODEL not in pool.available() or pool.process(MODEL) is None:
            assert time.monotonic() < deadline, "the model never came back"
            await asyncio.sleep(0.1)
        assert bad_starts.read_text() == "0" and pool.advertised() == [MODEL]
    finally:
        await pool.close()
