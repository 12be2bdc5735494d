"""The startup benchmark on the real SmolLM2 model, and its cache."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from models.benchmark import (
    MAX_CACHE_BYTES,
    BenchmarkCache,
    BenchResult,
    CacheFile,
    ReportedSpeeds,
    ResultCache,
    benchmark,
)
from models.options import RuntimeOptions
from tests.support.model_file import SMOLLM2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    loaded = asyncio.run(
        BatchedLlamaModel.load("smollm2:135m", SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=1), parallel=1)
    )
    yield loaded
    asyncio.run(loaded.close())


async def test_benchmark_is_short_and_positive(model: BatchedLlamaModel) -> None:
    started = time.monotonic()
    result = await benchmark(model)
    elapsed = time.monotonic() - started
    assert result.prompt_tps > 0 and result.generation_tps > 0
    assert elapsed < 10  # ~1 s on an idle 2-core machine; slack for a busy CI runner
    print(
        f"SmolLM2 1 thread: prompt {result.prompt_tps:.0f} tok/s, generation {result.generation_tps:.0f} tok/s, {elapsed:.2f} s"
    )


async def test_cache_measures_once_and_survives_a_restart(model: BatchedLlamaModel, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    first = await BenchmarkCache(path).measure(model)
    started = time.monotonic()
    again = await BenchmarkCache(path).measure(model)  # a new instance: as after a restart
    assert again == first
    assert time.monotonic() - started < 0.1
    stored = json.loads(path.read_text())
    assert next(iter(stored.values()))["model"] == "smollm2:135m"


async def test_cache_key_changes_with_the_setup(model: BatchedLlamaModel, tmp_path: Path) -> None:
    other = await BatchedLlamaModel.load("smollm2:135m", SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=2), parallel=1)
    try:
        cache = BenchmarkCache(tmp_path / "bench.json")
        assert cache.key(other) != cache.key(model)
        cache.put(model, BenchResult(prompt_tps=1.0, generation_tps=2.0))
        assert cache.get(model) is not None
        assert cache.get(other) is None
    finally:
        await other.close()


def test_unreadable_cache_counts_as_empty(model: BatchedLlamaModel, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("{not json")
    cache = BenchmarkCache(path)
    assert cache.get(model) is None
    cache.put(model, BenchResult(prompt_tps=3.0, generation_tps=4.0))
    assert cache.get(model) == BenchmarkCache(path).get(model)


def test_a_cache_with_infinite_speeds_counts_as_empty(model: BatchedLlamaModel, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    cache = BenchmarkCache(path)
    cache.put(model, BenchResult(prompt_tps=3.0, generation_tps=4.0))
    path.write_text(path.read_text().replace("4.0", "Infinity"))  # Python's JSON reader takes it
    assert "Infinity" in path.read_text() and cache.get(model) is None


def test_a_planted_cache_is_neither_followed_nor_waited_on(model: BatchedLlamaModel, tmp_path: Path) -> None:
    """The cache file may be anything (an operator's copy, an older node's, which execution processes wrote): a
    link to /dev/zero or to another file, a FIFO, a huge file. Each counts as empty at once, and a put replaces it."""
    path = tmp_path / "bench.json"
    real = tmp_path / "real.json"
    BenchmarkCache(real).put(model, BenchResult(prompt_tps=3.0, generation_tps=4.0))
    before = real.read_text()
    plants = {
        "a link to /dev/zero": lambda: path.symlink_to("/dev/zero"),
        "a link to a good cache": lambda: path.symlink_to(real),
        "a FIFO": lambda: os.mkfifo(path),
        "a huge file": lambda: path.write_bytes(b" " * (MAX_CACHE_BYTES + 1)),
        "a folder": lambda: path.mkdir(),
    }
    for name, plant in plants.items():
        plant()
        started = time.monotonic()
        assert BenchmarkCache(path).get(model) is None, name
        assert time.monotonic() - started < 5, name
        if not path.is_dir():
            BenchmarkCache(path).put(model, BenchResult(prompt_tps=5.0, generation_tps=6.0))
            assert path.is_file() and not path.is_symlink(), name  # replaced by a regular file
            stored = BenchmarkCache(path).get(model)
            assert stored is not None and stored.generation_tps == 6.0, name
            path.unlink()
        else:
            path.rmdir()
    assert real.read_text() == before  # the link's target is neither read nor written through


async def test_a_cache_that_cannot_be_written_still_gives_the_measurement(
    model: BatchedLlamaModel, tmp_path: Path
) -> None:
    """A full disk or a read-only data dir: the model was measured, so it serves (it failed to load before)."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache's directory should be")
    result = await BenchmarkCache(blocked / "bench.json").measure(model)
    assert result.generation_tps > 0 and result.prompt_tps > 0


class _Named:
    name = "stub"


class _CountingCache(ResultCache[Any]):
    """A cache whose benchmark is a counter (no model loaded)."""

    runs = 0

    def key(self, model: Any) -> str:
        return "stub-key"

    async def _benchmark(self, model: Any) -> BenchResult:
        self.runs += 1
        return BenchResult(prompt_tps=2.0, generation_tps=1.0)


async def test_a_cached_speed_under_at_least_is_measured_again_and_a_fresh_one_is_measured_once(
    tmp_path: Path,
) -> None:
    cache = _CountingCache(tmp_path / "bench.json")
    await cache.measure(_Named(), at_least=1e6)  # nothing cached: measured once, never twice
    assert cache.runs == 1
    await cache.measure(_Named(), at_least=0.5)  # cached and fast enough
    assert cache.runs == 1
    await cache.measure(_Named(), at_least=1e6)  # cached but too slow: never trusted alone to refuse
    assert cache.runs == 2


async def test_a_process_handed_the_entries_reads_them_and_reports_what_it_measures(tmp_path: Path) -> None:
    """An execution process's store: the daemon's file's entries, read; a new figure reported, never written."""
    owner = CacheFile(tmp_path / "speeds.json")
    await _CountingCache(owner).measure(_Named())  # the owner's own measurement, in its file
    reported: list[tuple[str, BenchResult]] = []
    handed = _CountingCache(ReportedSpeeds(owner.entries(), lambda key, result: reported.append((key, result))))
    await handed.measure(_Named())
    assert handed.runs == 0 and reported == []  # cached: read from what was handed over
    await handed.measure(_Named(), fresh=True)
    assert handed.runs == 1 and [key for key, _ in reported] == ["stub-key"]
    assert reported[0][1].generation_tps == 1.0
    assert handed.get(_Named()) == reported[0][1]  # kept for this process's life
    assert [path.name for path in tmp_path.iterdir()] == ["speeds.json"]  # and nothing written


def test_an_entry_that_is_not_an_object_is_left_out(tmp_path: Path) -> None:
    """A hand-edited cache: the rest of it still serves (the daemon sends the entries in every `configure`)."""
    path = tmp_path / "speeds.json"
    path.write_text('{"a": 1, "b": [2], "c": {"model": "m", "prompt_tps": 1.0, "generation_tps": 2.0}}')
    assert list(CacheFile(path).entries()) == ["c"]
