"""Generation traces and teacher-forced re-scoring on the real runtime (SmolLM2)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, ContextOverflowError, GenerationRequest, ModelError
from models.scoring import TokenScorer, rank_rows
from models.tracing import GenerationTrace, generation_traces, token_logprob
from tests.support.model_file import SMOLLM2, loaded_smollm2
from tests.support.swapped_model import requantized_smollm2

# Honest generation and re-scoring differ by batch shape only: measured in benchmarks/verification.py.
HONEST_SPREAD = 1.0


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as loaded:
        yield loaded


def _request(text: str, temperature: float = 0.7, seed: int = 7, max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)], temperature=temperature, seed=seed, max_tokens=max_tokens
    )


async def _traced(model: BatchedLlamaModel, request: GenerationRequest) -> tuple[str, list[GenerationTrace]]:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    generation = await model.generate(request)
    return generation.text, traces


async def test_a_traced_generation_records_its_exact_tokens_and_their_logprobs(
    model: BatchedLlamaModel, scorer: TokenScorer
) -> None:
    request = _request("Name three colours.", temperature=0.0)
    text, traces = await _traced(model, request)
    assert len(traces) == 1
    trace = traces[0]
    user_turn = model.tokenize("Name three colours.")
    assert any(trace.prompt_tokens[i : i + len(user_turn)] == user_turn for i in range(len(trace.prompt_tokens)))
    assert len(trace.tokens) == len(trace.logprobs) > 0
    assert all(lp <= 0.0 for lp in trace.logprobs)
    assert trace.temperature == 0.0 and not trace.constrained
    scores = await asyncio.to_thread(scorer.score, trace.prompt_tokens, trace.tokens)
    assert text and scores.text.startswith(text)
    # Greedy: the model's best token every time, but where two tokens all but tie (a decode step and a
    # batch round differently, the AMX kernels most): the rule the verifier applies at temperature 0.
    ties = [b - lp for b, lp, rank in zip(scores.best_logprobs, scores.logprobs, scores.ranks, strict=True) if rank]
    assert len(ties) <= 2 and all(0 <= gap < HONEST_SPREAD for gap in ties), ties


async def test_without_a_trace_list_nothing_is_recorded(model: BatchedLlamaModel) -> None:
    generation_traces.set(None)
    generation = await model.generate(_request("Say hi.", max_tokens=4))
    assert getattr(generation, "trace", None) is None


async def test_honest_tokens_rescore_to_their_claimed_logprobs(model: BatchedLlamaModel, scorer: TokenScorer) -> None:
    for seed in (1, 2):
        _, traces = await _traced(model, _request("Write a line about the sea.", seed=seed))
        trace = traces[0]
        scores = await asyncio.to_thread(scorer.score, trace.prompt_tokens, trace.tokens)
        deviations = [abs(a - b) for a, b in zip(trace.logprobs, scores.logprobs, strict=True)]
        assert max(deviations) < HONEST_SPREAD
        assert len(scores.ranks) == len(trace.tokens)
        assert all(rank < 40 for rank in scores.ranks)  # sampled from top-k 40


async def test_another_models_tokens_score_lower_than_it_claims(tmp_path: Path, scorer: TokenScorer) -> None:
    swapped = await BatchedLlamaModel.load("swapped", requantized_smollm2(tmp_path), RuntimeOptions(n_threads=1), 1)
    try:
        claimed: list[float] = []
        actual: list[float] = []
        for seed in (3, 4, 5):
            _, traces = await _traced(swapped, _request("Describe a small town.", seed=seed, max_tokens=32))
            scores = await asyncio.to_thread(scorer.score, traces[0].prompt_tokens, traces[0].tokens)
            claimed += traces[0].logprobs
            actual += scores.logprobs
    finally:
        await swapped.close()
    bias = sum(c - a for c, a in zip(claimed, actual, strict=True)) / len(claimed)
    assert bias > 0.05  # its own tokens are likelier under itself than under the real model


def test_scoring_refuses_tokens_it_cannot_take(scorer: TokenScorer) -> None:
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        scorer.score([1, 2, 3], [10**9])
    with pytest.raises(ModelError, match="no tokens"):
        scorer.score([], [5])
    with pytest.raises(ContextOverflowError):
        scorer.score([1] * 400, [5] * 200)


def test_ranking_a_block_of_rows_gives_each_rows_own_numbers() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((150, 4096)) * 4).astype(np.float32)  # more rows than one block
    chosen = rng.integers(0, 4096, 150)
    logprobs, best, ranks = rank_rows(logits, chosen)
    for i in range(150):
        row = logits[i]
        assert logprobs[i] == pytest.approx(token_logprob(row, int(chosen[i])), abs=1e-12)
        assert best[i] == pytest.approx(token_logprob(row, int(row.argmax())), abs=1e-12)
        assert ranks[i] == int((row > row[chosen[i]]).sum())


async def test_a_check_reuses_the_previous_checks_prompt_and_scores_alike(
    model: BatchedLlamaModel, scorer: TokenScorer
) -> None:
    _, first = await _traced(model, _request("Write a line about the moon.", seed=11))
    _, second = await _traced(model, _request("Write a line about the moon.", seed=12))
    a, b = first[0], second[0]
    assert a.prompt_tokens == b.prompt_tokens and a.tokens != b.tokens
    scorer.clear()
    fresh = await asyncio.to_thread(scorer.score, b.prompt_tokens, b.tokens)
    assert fresh.reused == 0
    await asyncio.to_thread(scorer.score, a.prompt_tokens, a.tokens)
    reused = await asyncio.to_thread(scorer.score, b.prompt_tokens, b.tokens)
    # Everything but the prompt's last token (its logits predict the first chosen token) came from the KV.
    assert reused.reused == len(b.prompt_tokens) - 1
    assert reused.ranks == fresh.ranks
    assert max(abs(x - y) for x, y in zip(reused.logprobs, fresh.logprobs, strict=True)) < 0.01
    again = await asyncio.to_thread(scorer.score, [7, 8, 9], [10, 11])  # shares nothing: all evaluated
    assert again.reused == 0 and len(again.logprobs) == 2


async def test_flash_attention_in_the_scorer_moves_logprobs_less_than_the_honest_spread(
    model: BatchedLlamaModel, scorer: TokenScorer
) -> None:
    # A scorer uses flash attention unless the setting says off (~13% less time per check); its sums
    # run in another order, which must stay far inside what an honest result may differ by.
    _, traces = await _traced(model, _request("Describe a quiet harbour at dawn.", max_tokens=32))
    trace = traces[0]
    with_flash = TokenScorer(SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=1, flash_attn="on"))
    try:
        fast = with_flash.score(trace.prompt_tokens, trace.tokens)
    finally:
        with_flash.close()
    plain = scorer.score(trace.prompt_tokens, trace.tokens)
    assert len(fast.logprobs) == len(plain.logprobs) == len(trace.tokens)
    gap = np.abs(np.array(fast.logprobs) - np.array(plain.logprobs))
    assert gap.max() < HONEST_SPREAD / 4
    assert np.mean(np.array(fast.ranks) == np.array(plain.ranks)) > 0.9  # a near tie may swap, rarely
