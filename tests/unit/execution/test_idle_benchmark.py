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
from models.requests import ChatMessage, GenerationRequest, ModelError
from node.execution.idle_benchmark import IDLE_S, IdleBenchmark
from node.execution.process import _speed
from node.execution.protocol import MAX_STEP_SECONDS, Benchmarked
from tests.support.cluster import node_settings
from tests.support.model_file import loaded_smollm2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as loaded:
        yield loaded


def _benchmark(
    model: BatchedLlamaModel, path: Path, idle: asyncio.Event, beside_tasks_after_s: float = 60.0
) -> tuple[IdleBenchmark, list[tuple[BenchResult, bool]]]:
    reports: list[tuple[BenchResult, bool]] = []
    cache = BenchmarkCache(path)
    measure = IdleBenchmark(
        model.name,
        lambda: benchmark(model),
        idle,
        lambda result, provisional: reports.append((result, provisional)),
        lambda result: cache.put(model, result),
        beside_tasks_after_s,
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
    assert reports == [(result, False)] and result.generation_tps > 0 and idle_benchmark.interruptions == 0
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
    assert reports == [(result, False)]


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
    assert reports == [(result, False)] and idle_benchmark.interruptions == 1
    assert BenchmarkCache(path).get(model) == result


async def test_tasks_that_leave_no_idle_spell_get_a_provisional_speed_then_the_clean_one_replaces_it(
    model: BatchedLlamaModel, tmp_path: Path
) -> None:
    """Any peer may send tasks, with keys of its own: a stream of them (here one every 0.2 s, shorter than any
    idle spell, so no clean measurement even starts) must neither keep the node from advertising a speed nor
    make a figure skewed by them stick (it is not cached, and the first idle spell measures again)."""
    idle = asyncio.Event()
    idle.set()
    path = tmp_path / "benchmarks.json"
    idle_benchmark, reports = _benchmark(model, path, idle, beside_tasks_after_s=2.0)
    running = asyncio.create_task(idle_benchmark.run())
    started = time.monotonic()
    while not reports:
        assert time.monotonic() - started < 30, "no speed while tasks keep coming"
        idle.clear()
        idle_benchmark.task_started()
        await _a_task(model)
        idle.set()
        await asyncio.sleep(0.2)
    assert time.monotonic() - started >= 2.0  # provisional only once the clean chances had their time
    [(provisional, flag)] = reports
    assert flag is True and provisional.generation_tps > 0 and not path.exists()  # advertised, not cached

    result = await asyncio.wait_for(running, 60)  # the tasks stopped: an idle spell, a clean measurement
    assert reports == [(provisional, True), (result, False)]
    assert BenchmarkCache(path).get(model) == result


async def test_a_measurement_that_fails_is_tried_again_after_a_spell(model: BatchedLlamaModel, tmp_path: Path) -> None:
    """The runtime fails every sequence of a batch it could not decode, the benchmark's included: one such
    failure must not leave the node without a speed for the rest of its run."""
    idle = asyncio.Event()
    idle.set()
    path = tmp_path / "benchmarks.json"
    calls = 0

    async def failing_once() -> BenchResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ModelError("batch step failed: the decode returned an error")
        return await benchmark(model)

    reports: list[tuple[BenchResult, bool]] = []
    idle_benchmark = IdleBenchmark(
        model.name,
        failing_once,
        idle,
        lambda result, provisional: reports.append((result, provisional)),
        lambda result: BenchmarkCache(path).put(model, result),
    )
    result = await asyncio.wait_for(idle_benchmark.run(), 60)
    assert calls == 2 and idle_benchmark.failures == 1 and reports == [(result, False)]
    assert BenchmarkCache(path).get(model) == result


def test_a_speed_below_a_tenth_still_travels(tmp_path: Path) -> None:
    """A very slow model (a large one on a small CPU) reports 0.1 tokens/s, not 0.0, which `benchmarked`
    refuses (> 0) and would end the measurement."""
    generation_tps, step = _speed(4, 100.0, 0.04, node_settings(tmp_path))
    assert generation_tps == 0.1 and step is not None and 0 < step <= MAX_STEP_SECONDS
    Benchmarked(model="m", generation_tps=generation_tps, step_seconds=step)  # within its bounds
