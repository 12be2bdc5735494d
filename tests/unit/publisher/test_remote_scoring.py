"""Remote scoring's rules (node/publisher/remote_scoring.py, ResultVerifier) with score tasks run by the real engine.

The Client's network part is tests/e2e/test_remote_verification.py; here the score workflows
run on the real workflow engine and SmolLM2 in this process, each answer attributed to one of
a few named "nodes", some of which tamper with what they return.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.tracing import GenerationTrace, generation_traces
from node.publisher.errors import TaskFailedError
from node.publisher.verification import ResultVerifier, VerificationFailedError
from node.wire.proof import Proof, ProofGeneration
from tests.support.model_file import loaded_smollm2
from workflows import WorkflowError, parse_workflow, run_workflow
from workflows.errors import public_error_text

MODEL = "smollm2:135m"
Tamper = Callable[[str], str]


def _lower(text: str) -> str:
    scores = json.loads(text)
    scores["logprobs"] = [lp - 3.0 for lp in scores["logprobs"]]
    return json.dumps(scores)


def _short(text: str) -> str:
    scores = json.loads(text)
    scores["ranks"] = scores["ranks"][:-1]
    return json.dumps(scores)


_OOV = "to score is outside the model's vocabulary"


def _refuse(text: str) -> str:
    raise AssertionError("EngineRunner answers for a refusing node itself")


def _busy(text: str) -> str:
    raise AssertionError("EngineRunner answers for a busy node itself")


class EngineRunner:
    """ScoreTaskRunner over the real engine: node `name` answers with `tamper(result)`."""

    def __init__(self, model: BatchedLlamaModel, nodes: dict[str, Tamper | None]) -> None:
        self._model = model
        self._nodes = nodes
        self.asked: list[tuple[str, set[str]]] = []

    def others_serve(self, model: str, exclude: set[str]) -> bool:
        return any(n not in exclude for n in self._nodes)

    async def run_score_task(
        self, workflow: dict[str, Any], model: str, exclude: set[str], timeout: float
    ) -> tuple[str, str]:
        node = next(n for n in self._nodes if n not in exclude)
        self.asked.append((node, set(exclude)))
        try:
            text = (await run_workflow(parse_workflow(workflow), self._model)).text
        except WorkflowError as exc:  # the node's error result, as the Client raises it
            raise TaskFailedError("score", public_error_text(exc), node) from None
        tamper = self._nodes[node]
        if tamper is _refuse:  # an error result of its own making, in the engine's words
            raise TaskFailedError("score", f"Invalid prompt: task 'score' failed: a token id {_OOV}", node)
        if tamper is _busy:  # an error that says nothing of the proof
            raise TaskFailedError("score", "busy: model smollm2:135m has 4 running and 64 queued tasks", node)
        return (text if tamper is None else tamper(text)), node


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=1) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def honest(model: BatchedLlamaModel) -> tuple[str, GenerationTrace]:
    async def run() -> tuple[str, GenerationTrace]:
        traces: list[GenerationTrace] = []
        generation_traces.set(traces)
        request = GenerationRequest(messages=[ChatMessage(role="user", content="Tell me about bread.")], max_tokens=24)
        text = (await model.generate(request)).text
        generation_traces.set(None)
        return text, traces[0]

    return asyncio.run(run())


def _proof(trace: GenerationTrace, **changes: Any) -> Proof:
    return Proof(steps=[ProofGeneration.model_validate({**trace.model_dump(), **changes})])


async def _verify(runner: EngineRunner, proof: Proof, text: str) -> object:
    verifier = ResultVerifier(1.0, lambda _: None)
    try:
        return await verifier.verify(MODEL, proof, text, node="producer", runner=runner)
    except VerificationFailedError as exc:
        return exc


async def test_honest_work_passes_on_another_node_never_the_producer(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "a": None})
    verdict = await _verify(runner, _proof(trace), text)
    assert not isinstance(verdict, Exception) and verdict is not None
    assert [node for node, _ in runner.asked] == ["a"] and all("producer" in ex for _, ex in runner.asked)


async def test_a_lie_is_caught_and_confirmed_by_a_second_scorer(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "a": None, "b": None})
    result = await _verify(runner, _proof(trace, logprobs=[min(lp + 2.0, 0.0) for lp in trace.logprobs]), text)
    assert isinstance(result, VerificationFailedError), result
    assert [node for node, _ in runner.asked] == ["a", "b"]


async def test_a_framing_scorer_is_contradicted_and_the_result_left_unverified(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "liar": _lower, "b": None})
    assert await _verify(runner, _proof(trace), text) is None


async def test_with_one_scorer_only_its_finding_stands(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "liar": _lower})
    assert isinstance(await _verify(runner, _proof(trace), text), VerificationFailedError)


@pytest.mark.parametrize("tamper", [_short, lambda _: "not json", lambda _: json.dumps({"logprobs": [0.1]})])
async def test_a_malformed_answer_leaves_the_result_unverified(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace], tamper: Tamper
) -> None:
    text, trace = honest
    assert await _verify(EngineRunner(model, {"producer": None, "bad": tamper}), _proof(trace), text) is None


async def test_no_other_node_leaves_it_unverified_but_ids_no_model_has_fail_it(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    assert await _verify(EngineRunner(model, {"producer": None}), _proof(trace), text) is None
    foreign = _proof(trace, tokens=[10**7] * len(trace.tokens))
    result = await _verify(EngineRunner(model, {"producer": None, "a": None}), foreign, text)
    assert isinstance(result, VerificationFailedError) and "vocabulary" in result.reason
    empty = Proof(steps=[])
    result = await _verify(EngineRunner(model, {"producer": None, "a": None}), empty, text)
    assert isinstance(result, VerificationFailedError) and "no generation to check" in result.reason


async def test_a_scorer_refusing_the_tokens_falsely_is_contradicted_by_a_second_one(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    """The refusal is the scorer's own word: an error result claiming ids outside the vocabulary (the engine's
    deterministic text, which any node can write) must not ban an honest producer while another scorer exists."""
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "liar": _refuse, "honest": None})
    assert await _verify(runner, _proof(trace), text) is None  # unverified, not failed
    assert [node for node, _ in runner.asked[-2:]] == ["liar", "honest"]
    assert "liar" in runner.asked[-1][1]


async def test_ids_no_model_has_are_refused_by_two_scorers_and_fail_the_proof(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace]
) -> None:
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "a": None, "b": None})
    result = await _verify(runner, _proof(trace, tokens=[10**7] * len(trace.tokens)), text)
    assert isinstance(result, VerificationFailedError) and "vocabulary" in result.reason
    assert {node for node, _ in runner.asked} == {"a", "b"}  # confirmed by the second


@pytest.mark.parametrize("first", [_refuse, _lower])
async def test_a_second_scorer_that_fails_confirms_nothing(
    model: BatchedLlamaModel, honest: tuple[str, GenerationTrace], first: Tamper
) -> None:
    """One liar and one node that errs (busy, a timeout: a Sybil's second node can do that at will): the first
    finding stands only when no other node serves the model at all, never when the one asked fails."""
    text, trace = honest
    runner = EngineRunner(model, {"producer": None, "liar": first, "flaky": _busy})
    assert await _verify(runner, _proof(trace), text) is None  # unverified, not failed
    assert [node for node, _ in runner.asked] == ["liar", "flaky"]
