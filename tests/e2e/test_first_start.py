"""A node's first start (no cached speed): READY once its model is loaded, measured while idle after it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from models.benchmark import MEASURE_BEFORE_READY, CacheFile
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.exec_wrappers import FORGE_SPEED, FORGED_TPS
from workflows import Simple

pytestmark = pytest.mark.slow


async def test_a_first_start_serves_before_its_benchmark_and_advertises_the_speed_soon_after(tmp_path: Path) -> None:
    # A heartbeat interval far past the test: only a change of what the node offers publishes its speed.
    settings = node_settings(tmp_path / "a", startup_benchmark=True, heartbeat_interval=600)
    async with running_node(settings) as node, Client(peers=[dialable(node)]) as client:
        pool = node.running.pool
        assert pool.tps == {}  # READY: loaded, not measured yet
        address = node.running.identity.address
        result = await client.execute(Task(workflow=Simple().workflow("Hi", max_tokens=8), models=["*"]), timeout=60)
        assert result.node == address and result.text

        deadline = time.monotonic() + 30
        while not (known := client.nodes.get(address)) or not known.tps:
            assert time.monotonic() < deadline, "the measured speed never reached the publisher"
            await asyncio.sleep(0.1)
        assert known.tps == pool.tps and pool.tps["smollm2:135m"] > 0
        stall = pool._entries["smollm2:135m"].stall
        assert stall is not None and stall.step_s > 0  # the stall bound of a decode is sized by the measurement
        # The task most likely reached the process before its measurement ended: then the figure is not kept (a
        # taken-over process could report anything) and the next start measures before READY instead.
        (entry,) = CacheFile(settings.benchmark_cache_path).entries().values()
        assert entry.get(MEASURE_BEFORE_READY) is True or round(entry["generation_tps"], 1) == pool.tps["smollm2:135m"]


async def test_a_restart_reads_the_cached_speed_before_ready(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "a", startup_benchmark=True)
    async with running_node(settings) as node:
        deadline = time.monotonic() + 60
        while not node.running.pool.tps:
            assert time.monotonic() < deadline, "the first start never measured its model"
            await asyncio.sleep(0.1)
        measured = dict(node.running.pool.tps)
    async with running_node(settings) as node:
        assert node.running.pool.tps == measured  # READY with it: nothing measured again


async def test_a_restarted_execution_process_advertises_its_cached_speed_not_what_the_last_one_said(
    tmp_path: Path,
) -> None:
    """A hijacked execution process can report any speed it likes (the daemon cannot check a measurement); once
    it is replaced, the new process's figure (read from the cache) is the one advertised."""
    settings = node_settings(tmp_path / "a", startup_benchmark=True)
    async with running_node(settings) as node:
        pool = node.running.pool
        deadline = time.monotonic() + 60
        while not pool.tps:
            assert time.monotonic() < deadline, "the first start never measured its model"
            await asyncio.sleep(0.1)
        measured = dict(pool.tps)
        pool.tps["smollm2:135m"] = 1e6  # what a hijacked process could have said
        old = pool.process("smollm2:135m")
        assert old is not None and old.pid is not None
        os.kill(old.pid, signal.SIGKILL)
        while pool.tps != measured:
            assert time.monotonic() < deadline + 60, f"still advertising {pool.tps} after a restart"
            await asyncio.sleep(0.1)
        restarted = pool.process("smollm2:135m")
        assert restarted is not None and restarted.pid != old.pid

        # With nothing cached the forged figure goes too: none is advertised until the new process measures.
        settings.benchmark_cache_path.unlink()
        pool.tps["smollm2:135m"] = 1e6
        os.kill(restarted.pid, signal.SIGKILL)
        while pool.process("smollm2:135m") in (None, restarted):
            assert time.monotonic() < deadline + 120, "the execution process was not restarted"
            await asyncio.sleep(0.05)
        assert pool.tps.get("smollm2:135m", 0) < 1e6
        while "smollm2:135m" not in pool.tps:
            assert time.monotonic() < deadline + 180, "the restarted process never measured its model"
            await asyncio.sleep(0.1)
        assert pool.tps["smollm2:135m"] < 1e6


async def test_a_speed_a_taken_over_process_reports_is_not_kept_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speed cache is the daemon's, in its data dir: a process a task has reached reports a forged figure for
    the model's own cache key on its socket, and neither the cache nor the next start's advertised speed holds it."""
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:misbehave")
    settings = node_settings(tmp_path / "a", startup_benchmark=True)
    async with running_node(settings) as node, Client(peers=[dialable(node)]) as client:
        pool = node.running.pool
        deadline = time.monotonic() + 60
        while not pool.tps:  # measured while idle, before any task: kept
            assert time.monotonic() < deadline, "the first start never measured its model"
            await asyncio.sleep(0.1)
        measured = dict(pool.tps)
        cached = settings.benchmark_cache_path.read_bytes()
        task = Task(workflow=Simple().workflow(f"{FORGE_SPEED} Hi", max_tokens=4), models=["*"])
        result = await client.execute(task, timeout=60)
        assert result.text  # the task ran; the forged line went before its answer
        assert settings.benchmark_cache_path.read_bytes() == cached
    async with running_node(settings) as node:
        assert node.running.pool.tps == measured and FORGED_TPS not in node.running.pool.tps.values()


async def test_a_node_whose_first_task_came_before_its_measurement_measures_before_ready_next_time(
    tmp_path: Path,
) -> None:
    """Its figure was not kept; the next start measures before READY, with no task possible yet, and keeps it."""
    settings = node_settings(tmp_path / "a", startup_benchmark=True, heartbeat_interval=600)
    async with running_node(settings) as node, Client(peers=[dialable(node)]) as client:
        for _ in range(3):  # tasks from READY on: the measurement waits for an idle spell after them
            await client.execute(Task(workflow=Simple().workflow("Hi", max_tokens=4), models=["*"]), timeout=60)
        deadline = time.monotonic() + 60
        while not node.running.pool.tps:
            assert time.monotonic() < deadline, "never measured"
            await asyncio.sleep(0.1)
    (entry,) = CacheFile(settings.benchmark_cache_path).entries().values()
    assert entry == {"model": "smollm2:135m", MEASURE_BEFORE_READY: True}
    async with running_node(settings) as node:
        assert node.running.pool.tps["smollm2:135m"] > 0  # READY with it: measured before
    (entry,) = CacheFile(settings.benchmark_cache_path).entries().values()
    assert round(entry["generation_tps"], 1) == node.running.pool.tps["smollm2:135m"]
