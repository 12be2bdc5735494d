"""Model setup in the execution process: an embedding model that is not a task model opens for embeddings only;
the startup benchmark and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.benchmark import MEASURE_BEFORE_READY, BenchmarkCache, CacheFile
from models.requests import ChatMessage, EmbeddingRequest, GenerationRequest, ModelError
from node.execution.model_setup import create_embedder, prepare_model
from tests.support.cluster import node_settings

MODEL = "smollm2:135m"


@pytest.mark.asyncio
async def test_embedding_model_other_than_the_task_model_serves_only_embeddings(tmp_path: Path) -> None:
    model = await create_embedder(MODEL, node_settings(tmp_path))
    try:
        vectors = await model.embed(EmbeddingRequest(texts=["a cat", "a dog"]))
        assert len(vectors) == 2 and len(vectors[0]) == 576
        with pytest.raises(ModelError, match="only embeddings"):
            await model.generate(GenerationRequest(messages=[ChatMessage(role="user", content="hi")]))
    finally:
        await model.close()


@pytest.mark.asyncio
async def test_a_low_cached_speed_is_measured_again_before_min_tps_refuses_the_model(tmp_path: Path) -> None:
    """A figure under `min_tps` in the cache (measured while the machine was busier) does not refuse the model for
    good: it is measured again, and the fresh figure replaces it."""
    settings = node_settings(tmp_path, startup_benchmark=True, min_tps=1.0)
    cache = settings.benchmark_cache_path
    prepared = await prepare_model(MODEL, settings, CacheFile(cache))
    await prepared.model.close()
    planted = {key: {**entry, "generation_tps": 0.01, "prompt_tps": 0.01} for key, entry in _entries(cache).items()}
    assert planted
    cache.write_text(json.dumps(planted))
    prepared = await prepare_model(MODEL, settings, CacheFile(cache))  # measured again, not refused
    try:
        assert prepared.generation_tps is not None and prepared.generation_tps >= 1.0
        assert all(entry["generation_tps"] >= 1.0 for entry in _entries(cache).values())  # the fresh figure kept
    finally:
        await prepared.model.close()


def _entries(cache: Path) -> dict[str, dict[str, float]]:
    return json.loads(cache.read_text())  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_a_store_that_asks_for_it_has_the_speed_measured_before_ready(tmp_path: Path) -> None:
    """One model, no `min_tps`: measured after `ready`, unless the daemon's store asks for it before (the last
    figure came after a task and was not kept)."""
    settings = node_settings(tmp_path, startup_benchmark=True)
    cache = CacheFile(settings.benchmark_cache_path)
    prepared = await prepare_model(MODEL, settings, cache)
    key = BenchmarkCache(cache).key(prepared.model)
    await prepared.model.close()
    assert prepared.benchmark_later and prepared.generation_tps is None
    cache.put(key, {"model": MODEL, MEASURE_BEFORE_READY: True})
    prepared = await prepare_model(MODEL, settings, cache)
    try:
        assert not prepared.benchmark_later and prepared.generation_tps is not None
        assert "generation_tps" in cache.entries()[key]  # the figure replaces the request
    finally:
        await prepared.model.close()
