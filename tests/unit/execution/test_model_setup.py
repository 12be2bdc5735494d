"""Model setup in the daemon: an embedding model that is not a task model opens for embeddings only."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.requests import ChatMessage, EmbeddingRequest, GenerationRequest, ModelError
from node.execution.model_setup import create_embedder
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
