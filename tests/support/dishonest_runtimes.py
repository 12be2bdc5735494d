"""Dishonest loaded models for verification tests (COMPUTE_NODE_TEST_EXEC_WRAPPER=tests.support.dishonest_runtimes:NAME).

Each wraps the real loaded model of a real node's execution process, so the node, its
heartbeats and its result envelopes are all genuine; only the work is not:
  - `fixed_string`: answers every generation at once with the same text, no model run;
  - `swapped_model`: generates with another GGUF (SWAPPED_MODEL_ENV, e.g. SmolLM2 requantized)
    under the claimed model's name, its traces (its own log-probabilities) included;
  - `stalling`: takes every generation and never finishes it (the task ends at its deadline);
  - `lying_scorer`: generates honestly, but answers `score` tasks with every token 3 nats less
    likely than the model says (it would frame honest nodes verified through it);
  - `different_prompt`: generates honestly, traces included, for a prompt of its own choosing
    (not the publisher's): a proof of real work on the wrong question.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.progress import ProgressSnapshot
from models.requests import (
    ChatMessage,
    EmbeddingRequest,
    Generation,
    GenerationRequest,
    ScoreRequest,
    TextSink,
    TokenScores,
)

FIXED_TEXT = "Thank you for your question. The answer is simple and clear."
SWAPPED_MODEL_ENV = "COMPUTE_NODE_TEST_SWAPPED_MODEL"


class _Wrapped:
    """The real model's bookkeeping (slots, progress, embeddings); generation is the subclass's."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = model.name

    @property
    def parallel(self) -> int:
        return int(self._model.parallel)

    def progress(self) -> ProgressSnapshot | None:
        return self._model.progress()  # type: ignore[no-any-return]

    async def score(self, request: ScoreRequest) -> TokenScores:
        return await self._model.score(request)  # type: ignore[no-any-return]

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        return await self._model.embed(request)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._model.close()


class FixedString(_Wrapped):
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        return Generation(text=FIXED_TEXT, finish_reason="stop", prompt_tokens=1, completion_tokens=12)


class SwappedModel(_Wrapped):
    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._swapped: BatchedLlamaModel | None = None
        self._lock = asyncio.Lock()

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        async with self._lock:
            if self._swapped is None:
                path = Path(os.environ[SWAPPED_MODEL_ENV])
                self._swapped = await BatchedLlamaModel.load(self.name, path, RuntimeOptions(n_threads=1), parallel=1)
        return await self._swapped.generate(request, on_text)

    async def close(self) -> None:
        if self._swapped is not None:
            await self._swapped.close()
        await super().close()


class Stalling(_Wrapped):
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        await asyncio.Event().wait()  # never set: cancelled at the task's deadline
        raise AssertionError("unreachable")


class LyingScorer(_Wrapped):
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        return await self._model.generate(request, on_text)  # type: ignore[no-any-return]

    async def score(self, request: ScoreRequest) -> TokenScores:
        scores: TokenScores = await self._model.score(request)
        return scores.model_copy(update={"logprobs": [lp - 3.0 for lp in scores.logprobs]})


OTHER_PROMPT = "Write one sentence about the price of tea."


class DifferentPrompt(_Wrapped):
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        other = request.model_copy(update={"messages": [ChatMessage(role="user", content=OTHER_PROMPT)]})
        return await self._model.generate(other, on_text)  # type: ignore[no-any-return]


def lying_scorer(model: Any) -> LyingScorer:
    return LyingScorer(model)


def different_prompt(model: Any) -> DifferentPrompt:
    return DifferentPrompt(model)


def fixed_string(model: Any) -> FixedString:
    return FixedString(model)


def swapped_model(model: Any) -> SwappedModel:
    return SwappedModel(model)


def stalling(model: Any) -> Stalling:
    return Stalling(model)
