"""The small interface through which the workflow engine calls models.

The engine knows nothing of llama.cpp or the network: it is handed an object
that satisfies `ModelBackend` (the runtime's loaded model does, structurally).
"""

from __future__ import annotations

from typing import Protocol

from models.requests import EmbeddingRequest, Generation, GenerationRequest, ScoreRequest, TextSink, TokenScores


class ModelBackend(Protocol):
    """A loaded model the engine can generate, score and embed with."""

    name: str

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Run one chat completion; cancelling the caller cancels it.

        `on_text`, when given, may receive the answer's text as it generates: pieces in
        order, all before this returns, concatenating to a prefix of the result's text
        (a backend that cannot stream never calls it).
        """
        ...

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Teacher forcing: each of `request.tokens` scored after `request.prompt_tokens` (the `score` operator).

        Raises TokenOutOfVocabularyError, ContextOverflowError, or ModelError when this backend cannot score.
        """
        ...

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """Mean-pooled sentence embeddings, one vector per text."""
        ...
