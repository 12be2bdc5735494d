"""ProofChecker against a real scorer (SmolLM2): honest work passes, each kind of lie is named."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.scoring import TokenScorer
from models.tracing import GenerationTrace, generation_traces
from node.publisher.verification import (
    MAX_CHECKED_STEPS,
    ProofChecker,
    ResultVerifier,
    VerificationError,
    VerificationFailedError,
    checked_part,
)
from node.wire.proof import MAX_PROOF_STEPS, Proof, ProofGeneration
from tests.support.dishonest_runtimes import FIXED_TEXT
from tests.support.model_file import loaded_smollm2
from tests.support.swapped_model import requantized_smollm2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as loaded:
        yield loaded


async def _run(model: BatchedLlamaModel, prompt: str, temperature: float, seed: int) -> tuple[str, GenerationTrace]:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=prompt)], temperature=temperature, seed=seed, max_tokens=40
    )
    generation = await model.generate(request)
    return generation.text, traces[0]


def _proof(trace: GenerationTrace, **changes: object) -> Proof:
    return Proof(steps=[ProofGeneration.model_validate({**trace.model_dump(), **changes})])


def _check(proof: Proof | None, text: str, scorer: TokenScorer) -> str | None:
    try:
        ProofChecker().check(proof, text, scorer)
    except VerificationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 1), (0.7, 2), (0.7, 3)])
async def test_honest_work_passes(model: BatchedLlamaModel, scorer: TokenScorer, temperature: float, seed: int) -> None:
    text, trace = await _run(model, "Tell me about bread.", temperature, seed)
    assert await asyncio.to_thread(_check, _proof(trace), text, scorer) is None


async def test_each_lie_is_named(model: BatchedLlamaModel, scorer: TokenScorer) -> None:
    text, trace = await _run(model, "Tell me about the moon.", 0.7, 4)
    assert min(trace.logprobs) < -1.5  # so that "the model was sure of every token" is a lie past tolerance
    fabricated = [0.0] * len(trace.logprobs)
    assert "claimed log-probability" in (_check(_proof(trace, logprobs=fabricated), text, scorer) or "")
    assert "no proof" in (_check(None, text, scorer) or "")
    assert "no generation to check" in (_check(Proof(steps=[]), text, scorer) or "")
    assert "not the text" in (_check(_proof(trace), FIXED_TEXT, scorer) or "")
    # A fixed answer with the real model's own numbers for its tokens: the sampler would not have picked them.
    fixed = scorer._llm.tokenize(FIXED_TEXT.encode(), add_bos=False, special=False)
    numbers = scorer.score(trace.prompt_tokens, fixed).logprobs
    greedy = _check(_proof(trace, tokens=fixed, logprobs=numbers, temperature=0.0), FIXED_TEXT, scorer)
    assert "best token" in (greedy or "")
    sampled = _check(_proof(trace, tokens=fixed, logprobs=numbers), FIXED_TEXT, scorer)
    assert "top-k/min-p window" in (sampled or "")


async def test_the_mean_bias_tolerance_widens_for_few_positions(model: BatchedLlamaModel, scorer: TokenScorer) -> None:
    text, trace = await _run(model, "Tell me about rivers.", 0.7, 5)
    checker = ProofChecker()
    n = len(trace.logprobs)
    assert n >= 16
    assert checker.mean_tolerance_for(1) == checker.mean_spread > checker.mean_tolerance_for(4)
    assert checker.mean_tolerance_for(n) > checker.mean_tolerance_for(10_000) == checker.mean_tolerance  # the floor
    # Every claim a little too high, each well within the position tolerance: over n positions, another model.
    shift = 2 * checker.mean_tolerance_for(n)
    assert shift < checker.position_tolerance / 2
    inflated = [min(p + shift, 0.0) for p in trace.logprobs]  # a log-probability above 0 is refused as a shape
    assert sum(inflated) - sum(trace.logprobs) > 1.2 * checker.mean_tolerance_for(n) * n
    assert "nats above the model's on average" in (_check(_proof(trace, logprobs=inflated), text, scorer) or "")
    # The same shift over the first 3 positions only is within what three honest positions spread.
    first = {"tokens": trace.tokens[:3], "logprobs": inflated[:3]}
    assert sum(inflated[:3]) - sum(trace.logprobs[:3]) > 3 * checker.mean_tolerance  # the flat floor would flag it
    assert shift < checker.mean_tolerance_for(3)
    assert await asyncio.to_thread(_check, _proof(trace, **first), text, scorer) is None


async def test_a_swapped_models_own_numbers_are_caught(tmp_path: Path, scorer: TokenScorer) -> None:
    swapped = await BatchedLlamaModel.load("swapped", requantized_smollm2(tmp_path), RuntimeOptions(n_threads=1), 1)
    try:
        caught = 0
        for seed in range(5):
            text, trace = await _run(swapped, "Describe a busy market.", 0.7, 100 + seed)
            caught += _check(_proof(trace), text, scorer) is not None
    finally:
        await swapped.close()
    assert caught == 5


async def test_the_verifier_checks_a_share_and_skips_models_it_lacks(scorer: TokenScorer) -> None:
    import random

    never = ResultVerifier(0.0, lambda _: scorer, rng=random.Random(1))
    always = ResultVerifier(1.0, lambda name: scorer if name == "smollm2:135m" else None, rng=random.Random(1))
    assert not any(never.wants_proof() for _ in range(50)) and all(always.wants_proof() for _ in range(50))
    half = ResultVerifier(0.5, lambda _: scorer, rng=random.Random(1))
    assert 10 < sum(half.wants_proof() for _ in range(100)) < 90
    assert await always.verify("other-model", None, "x") is None
    with pytest.raises(VerificationFailedError, match="verification failed: the result carries no proof"):
        await always.verify("smollm2:135m", None, "x")
    with pytest.raises(ValueError, match="within 0..1"):
        ResultVerifier(1.5, lambda _: None)


class _CountingScorer:
    """Gives every token back the log-probability claimed for it (so a proof passes) and counts the tokens scored."""

    def __init__(self, claimed: list[float]) -> None:
        self.claimed = claimed
        self.tokens_scored = 0

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> _Scores:
        self.tokens_scored += len(prompt_tokens) + len(tokens)
        return _Scores(self.claimed[: len(tokens)], self.claimed[: len(tokens)], [0] * len(tokens), "the answer")

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        return ""


@dataclass
class _Scores:
    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str


async def test_only_a_proofs_last_steps_are_rescored_here_as_remotely() -> None:
    # A made-up proof of 256 steps of 4,000 prompt tokens (a few KB compressed) would cost minutes.
    claimed = [-0.5] * 16
    step = ProofGeneration(prompt_tokens=[7] * 4000, tokens=[1] * 16, logprobs=claimed, temperature=0.0)
    counting = _CountingScorer(claimed)
    verifier = ResultVerifier(1.0, lambda model: counting)
    verdict = await verifier.verify("m", Proof(steps=[step] * MAX_PROOF_STEPS), "the answer")
    assert verdict is not None and verdict.positions == MAX_CHECKED_STEPS * 16
    assert counting.tokens_scored == MAX_CHECKED_STEPS * (4000 + 16)
    short = Proof(steps=[step] * 3)
    assert checked_part(short) is short
    cut = checked_part(Proof(steps=[step] * 20, omitted=2))
    assert len(cut.steps) == MAX_CHECKED_STEPS and cut.omitted == 2 + 20 - MAX_CHECKED_STEPS
