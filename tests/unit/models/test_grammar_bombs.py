"""The grammar-bomb family (tests/support/grammar_bombs.py) against SmolLM2's vocabulary and runtime.

Each bomb is refused with a GrammarError, or every token mask it needs is computed
within the per-step fuel of models.grammar.compile; on the batched runtime it fails
(or finishes) its own request while an honest request beside it is answered.
The step-time bound asserted here is loose (tens of times what this machine measures,
so load cannot flake it); the measured figures are benchmarks' (README: the cost table).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import llguidance
import pytest

from models.batching import BatchedLlamaModel
from models.grammar import GrammarError, grammar_for
from models.grammar.matcher import Constraint, vocab_tokenizer
from models.options import RuntimeOptions
from models.requests import ChatMessage, Generation, GenerationRequest
from tests.support.grammar_bombs import RUNTIME_BOMBS, VARIANT_BOMBS, WORKFLOW_BOMBS, GrammarBomb
from tests.support.model_file import loaded_smollm2, smollm2_vocab

STEPS = 24
# The old engine took 1.6 s for ONE token of `(x?){1000}x`; llguidance under the limits takes milliseconds.
MAX_STEP_SECONDS = 0.5
END_TOKENS = [0, 2]


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[llguidance.LLTokenizer]:
    with smollm2_vocab() as vocab:
        yield vocab_tokenizer(vocab, END_TOKENS)


def _drive(constraint: Constraint) -> list[float]:
    """Compute the full mask at every step (the costliest path), taking the last allowed token; the step times."""
    times: list[float] = []
    for _ in range(STEPS):
        started = time.perf_counter()
        try:
            allowed = constraint.allowed_tokens()
        finally:
            times.append(time.perf_counter() - started)
        going_on = [int(t) for t in allowed if int(t) not in END_TOKENS]
        if not going_on:
            break
        constraint.consume(going_on[-1])
    return times


@pytest.mark.parametrize("bomb", WORKFLOW_BOMBS + RUNTIME_BOMBS + VARIANT_BOMBS, ids=lambda b: b.name)
def test_every_bomb_is_refused_or_masked_within_its_fuel(bomb: GrammarBomb, tokenizer: llguidance.LLTokenizer) -> None:
    times: list[float] = []
    try:
        grammar = grammar_for(bomb.json_schema, bomb.regex)
        assert grammar is not None
        times = _drive(Constraint(tokenizer, grammar))
    except GrammarError as exc:
        assert str(exc), "a refusal names its reason"
    assert max(times, default=0.0) < MAX_STEP_SECONDS, f"{bomb.name}: slowest mask {max(times):.3f} s"


def test_the_90_group_regex_runs_out_of_fuel_within_its_first_masks(tokenizer: llguidance.LLTokenizer) -> None:
    grammar = grammar_for(None, "(x?){1000}" * 90 + "x")
    assert grammar is not None
    with pytest.raises(GrammarError, match="the constraint is too costly at this step"):
        _drive(Constraint(tokenizer, grammar))


@pytest.fixture(scope="module")
def batched() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as model:
        yield model


def _request(bomb: GrammarBomb | None) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content="Say hi.")],
        max_tokens=12,
        temperature=0.0,
        json_schema=None if bomb is None else bomb.json_schema,
        regex=None if bomb is None else bomb.regex,
    )


@pytest.mark.parametrize("bomb", WORKFLOW_BOMBS + RUNTIME_BOMBS + VARIANT_BOMBS, ids=lambda b: b.name)
def test_a_bomb_costs_its_own_request_only(bomb: GrammarBomb, batched: BatchedLlamaModel) -> None:
    async def run() -> tuple[Generation | BaseException, Generation]:
        bombed = asyncio.ensure_future(batched.generate(_request(bomb)))
        honest = await asyncio.wait_for(batched.generate(_request(None)), 120)
        outcome = await asyncio.wait_for(asyncio.gather(bombed, return_exceptions=True), 120)
        return outcome[0], honest

    outcome, honest = asyncio.run(run())
    assert honest.completion_tokens > 0 and honest.text.strip()
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, GrammarError), repr(outcome)
    else:
        assert outcome.completion_tokens > 0
