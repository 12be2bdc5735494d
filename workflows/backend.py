"""The small interface through which the workflow engine calls models.

The engine knows nothing of llama.cpp or the network: it is handed an object
that satisfies `ModelBackend` (the runtime's loaded model does, structurally).
"""

from __future__ import annotations

from typing import Protocol

from models.requests import EmbeddingRequest, Generation, GenerationRequest


class ModelBackend(Protocol):
    """A loaded model the engine can generate with and embed with."""

    name: str

    async def generate(self, request: GenerationRequest) -> Generation:
        """Run one chat completion; cancelling the caller cancels it."""
        ...

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """Mean-pooled sentence embeddings, one vector per text."""
        ...
