"""A first start's benchmark after `ready`: measured in idle time on the real model, never beside a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.batching import BatchedLlamaModel
from models.benchmark import BenchmarkCache, BenchResult, benchmark
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from node.execution.idle_benchmark import IDLE_S, MAX_INTERRUPTIONS, IdleBenchmark
from tests.support.model_file import SMOLLM2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    loaded = asyncio.run(
        BatchedLlamaModel.load("smollm2:135m", SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=1), parallel=2)
    )
    yield loaded
    asyncio.run(loaded.close())


def _benchmark(model: BatchedLlamaModel, path: Path, idle: asyncio.Event) -> tuple[IdleBenchmark, list[BenchResult]]:
    reports: list[BenchResult] = []
    cache = BenchmarkCache(path)
    measure = IdleBenchmark(
        model.name, lambda: benchmark(model), idle, reports.append, lambda result: cache.put(model, result)
    )
    return measure, reports


async def _measuring(idle_benchmark: IdleBenchmark) -> None:
    """Until a measurement runs on the model (its idle spell passed)."""
    deadline = time.monotonic() + 30
    while idle_benchmark._measuring is None or idle_benchmark._measuring.done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


async def _a_task(model: BatchedLlamaModel) -> None:
    task = await model.generate(GenerationRequest(messages=[ChatMessage(role="user", content="Hi.")], max_tokens=8))
    assert task.completion_tokens > 0


async def test_an_idle_model_is_measured_once_and_the_result_cached(model: BatchedLlamaModel, tmp_path: Path) -> None:
    idle = asyncio.Event()
    idle.set()
    path = tmp_path / "benchmarks.json"
    idle_benchmark, reports = _benchmark(model, path, idle)
    started = time.monotonic()
    result = await idle_benchmark.run()
    assert time.monotonic() - started >= IDLE_S  # an idle spell first
    assert reports == [result] and result.generation_tps > 0 and idle_benchmark.interruptions == 0
    assert BenchmarkCache(path).get(model) == result


async def test_no_measurement_starts_while_a_task_runs(model: BatchedLlamaModel, tmp_path: Path) -> None:
    idle = asyncio.Event()  # a task runs
    path = tmp_path / "benchmarks.json"
    idle_benchmark, reports = _benchmark(model, path, idle)
    running = asyncio.create_task(idle_benchmark.run())
    await asyncio.sleep(3 * IDLE_S)
    assert not running.done() and not path.exists() and reports == []
    idle.set()  # the task ended
    result = await asyncio.wait_for(running, 60)
    assert reports == [result]


async def test_a_task_that_comes_stops_the_measurement_which_runs_again_after_a_longer_idle_spell(
    model: BatchedLlamaModel, tmp_path: Path
) -> None:
    idle = asyncio.Event()
    idle.set()
    path = tmp_path / "benchmarks.json"
    idle_benchmark, reports = _benchmark(model, path, idle)
    running = asyncio.create_task(idle_benchmark.run())
    await _measuring(idle_benchmark)

    idle.clear()  # a task comes, as TaskHost.start says it
    idle_benchmark.task_started()
    await _a_task(model)
    assert idle_benchmark.interruptions == 1 and not path.exists() and reports == []  # nothing measured beside it
    ended = time.monotonic()
    idle.set()

    result = await asyncio.wait_for(running, 60)
    assert time.monotonic() - ended >= 2 * IDLE_S  # the idle spell doubled
    assert reports == [result] and idle_benchmark.interruptions == 1
    assert BenchmarkCache(path).get(model) == result


async def test_tasks_that_keep_coming_get_a_speed_measured_beside_them_advertised_and_not_cached(
    model: BatchedLlamaModel, tmp_path: Path
) -> None:
    """Any peer may send tasks, with keys of its own: a stream of them must neither keep the node from
    advertising a speed nor make a figure skewed by them stick (it would be read at every restart)."""
    idle = asyncio.Event()
    idle.set()
    path = tmp_path / "benchmarks.json"
    idle_benchmark, reports = _benchmark(model, path, idle)
    running = asyncio.create_task(idle_benchmark.run())
    for _ in range(MAX_INTERRUPTIONS):
        await _measuring(idle_benchmark)
        idle.clear()
        idle_benchmark.task_started()
        await _a_task(model)
        idle.set()
    assert idle_benchmark.interruptions == MAX_INTERRUPTIONS and reports == []

    await _measuring(idle_benchmark)  # at once now, without an idle spell
    idle.clear()
    idle_benchmark.task_started()  # no longer cancels it: the task runs beside the measurement
    await _a_task(model)
    idle.set()
    result = await asyncio.wait_for(running, 60)
    assert reports == [result] and idle_benchmark.interruptions == MAX_INTERRUPTIONS
    assert not path.exists()  # advertised, not cached: the next start measures again
