"""Model setup in the execution process: an embedding model that is not a task model opens for embeddings only;
the startup benchmark and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    """Execution processes write the speed cache: one a workflow took over could leave a figure under `min_tps`
    there, and the model would never serve again. A cached figure alone never refuses it."""
    settings = node_settings(tmp_path, startup_benchmark=True, min_tps=1.0)
    prepared = await prepare_model(MODEL, settings)
    await prepared.model.close()
    cache = settings.benchmark_cache_path
    planted = {key: {**entry, "generation_tps": 0.01, "prompt_tps": 0.01} for key, entry in _entries(cache).items()}
    assert planted
    cache.write_text(json.dumps(planted))
    prepared = await prepare_model(MODEL, settings)  # measured again, not refused
    try:
        assert prepared.generation_tps is not None and prepared.generation_tps >= 1.0
        assert all(entry["generation_tps"] >= 1.0 for entry in _entries(cache).values())  # the fresh figure kept
    finally:
        await prepared.model.close()


def _entries(cache: Path) -> dict[str, dict[str, float]]:
    return json.loads(cache.read_text())  # type: ignore[no-any-return]
