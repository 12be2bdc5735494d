"""Teacher forcing inside the batched runtime (`BatchedLlamaModel.score`), against its own traces and TokenScorer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from models.batching import BatchedLlamaModel
from models.decode_loop import SCORE_ROWS
from models.options import RuntimeOptions
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    GenerationRequest,
    ScoreRequest,
    TokenOutOfVocabularyError,
)
from models.tracing import GenerationTrace, generation_traces
from tests.support.model_file import loaded_smollm2

# Honest generation and re-scoring differ by batch shape only (benchmarks/verification.py).
HONEST_SPREAD = 1.0


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as loaded:
        yield loaded


async def _trace(model: BatchedLlamaModel, text: str, temperature: float, max_tokens: int) -> GenerationTrace:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    try:
        await model.generate(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=text)],
                temperature=temperature,
                seed=3,
                max_tokens=max_tokens,
            )
        )
    finally:
        generation_traces.set(None)
    return traces[0]


async def test_scoring_reproduces_a_greedy_generations_logprobs_and_ranks(model: BatchedLlamaModel) -> None:
    trace = await _trace(model, "Name three colours.", 0.0, 24)
    scores = await model.score(ScoreRequest(prompt_tokens=trace.prompt_tokens, tokens=trace.tokens))
    assert len(scores.logprobs) == len(scores.best_logprobs) == len(scores.ranks) == len(trace.tokens)
    assert max(abs(a - b) for a, b in zip(trace.logprobs, scores.logprobs, strict=True)) < HONEST_SPREAD
    # Greedy: the model's best token every time, but where two tokens all but tie: a one-token decode and
    # a batch of rows round differently (most of all in the AMX kernels, which quantize them differently).
    ties = [b - lp for b, lp, rank in zip(scores.best_logprobs, scores.logprobs, scores.ranks, strict=True) if rank]
    assert len(ties) <= 2 and all(0 <= gap < HONEST_SPREAD for gap in ties), ties
    assert all(
        abs(b - lp) < 1e-9
        for b, lp, rank in zip(scores.best_logprobs, scores.logprobs, scores.ranks, strict=True)
        if not rank
    )
    assert scores.text.strip()


async def test_scoring_beside_a_running_generation_and_across_several_steps(model: BatchedLlamaModel) -> None:
    # More tokens than one step's rows, while another sequence generates in the same batches.
    trace = await _trace(model, "Write a long story about a lighthouse keeper.", 0.8, SCORE_ROWS + 40)
    assert len(trace.tokens) > SCORE_ROWS
    beside = asyncio.create_task(
        model.generate(GenerationRequest(messages=[ChatMessage(role="user", content="Count to fifty.")], max_tokens=64))
    )
    scores = await model.score(ScoreRequest(prompt_tokens=trace.prompt_tokens, tokens=trace.tokens))
    await beside
    deviations = [abs(a - b) for a, b in zip(trace.logprobs, scores.logprobs, strict=True)]
    assert len(deviations) == len(trace.tokens) and max(deviations) < HONEST_SPREAD
    assert all(rank < 40 for rank in scores.ranks)  # sampled from top-k 40


async def test_other_tokens_score_lower_than_the_models_own(model: BatchedLlamaModel) -> None:
    trace = await _trace(model, "Name three colours.", 0.0, 16)
    foreign = model.tokenize(" banana carburettor philosophy umbrella")
    scores = await model.score(ScoreRequest(prompt_tokens=trace.prompt_tokens, tokens=foreign))
    assert sum(scores.logprobs) / len(foreign) < sum(trace.logprobs) / len(trace.tokens) - 2.0
    assert any(rank > 0 for rank in scores.ranks)


async def test_ids_outside_the_vocabulary_or_the_context_are_refused_before_running(model: BatchedLlamaModel) -> None:
    with pytest.raises(TokenOutOfVocabularyError):
        await model.score(ScoreRequest(prompt_tokens=[1, 2], tokens=[10**7]))
    with pytest.raises(ContextOverflowError, match="do not fit"):
        await model.score(ScoreRequest(prompt_tokens=[1] * 400, tokens=[2] * 200))
    scores = await model.score(ScoreRequest(prompt_tokens=[1, 2], tokens=[3]))  # the model still serves
    assert len(scores.logprobs) == 1


async def test_a_cancelled_score_frees_its_slot(model: BatchedLlamaModel) -> None:
    long = model.tokenize("word " * 200)
    task = asyncio.create_task(model.score(ScoreRequest(prompt_tokens=long[:100], tokens=long[100:])))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(600):  # the step in flight ends first (seconds on a loaded machine)
        if model.slots_free == model.parallel:
            break
        await asyncio.sleep(0.1)
    assert model.slots_free == model.parallel
