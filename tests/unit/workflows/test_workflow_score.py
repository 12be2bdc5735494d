"""The `score` operator on the real runtime: the publisher's score workflow runs, and hostile ones are bounded."""

from __future__ import annotations

import json

import pytest

from models.batching import BatchedLlamaModel
from models.requests import ChatMessage, GenerationRequest, ScoreRequest
from models.tracing import GenerationTrace, generation_traces
from node.publisher.remote_scoring import OUT_OF_VOCABULARY, RemoteScores, score_workflow
from node.wire.proof import ProofGeneration
from workflows import EngineOptions, LimitExceededError, WorkflowError, parse_workflow, run_workflow
from workflows.errors import INVALID_PROMPT, public_error_text


def _step(prompt_tokens: list[int], tokens: list[int]) -> ProofGeneration:
    return ProofGeneration(prompt_tokens=prompt_tokens, tokens=tokens, logprobs=[0.0] * len(tokens), temperature=0.0)


async def _trace(model: BatchedLlamaModel) -> GenerationTrace:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    try:
        request = GenerationRequest(messages=[ChatMessage(role="user", content="Name a fruit.")], max_tokens=16)
        await model.generate(request)
    finally:
        generation_traces.set(None)
    return traces[0]


async def _error(workflow: dict[str, object], model: BatchedLlamaModel, options: EngineOptions | None = None) -> str:
    with pytest.raises(WorkflowError) as caught:
        await run_workflow(parse_workflow(workflow), model, options=options)
    return public_error_text(caught.value)


async def test_the_score_workflow_returns_the_models_numbers_for_each_token(model: BatchedLlamaModel) -> None:
    trace = await _trace(model)
    result = await run_workflow(parse_workflow(score_workflow(_step(trace.prompt_tokens, trace.tokens), 60)), model)
    scores = RemoteScores.model_validate_json(result.text)
    assert len(scores.logprobs) == len(scores.best_logprobs) == len(scores.ranks) == len(trace.tokens)
    assert all(rank == 0 for rank in scores.ranks)  # greedy tokens are the model's best
    assert max(abs(a - b) for a, b in zip(scores.logprobs, trace.logprobs, strict=True)) < 1.0
    assert "Name a fruit." in scores.prompt_text and scores.text.strip()
    direct = await model.score(ScoreRequest(prompt_tokens=trace.prompt_tokens, tokens=trace.tokens))
    assert scores.logprobs == [round(v, 4) for v in direct.logprobs]
    assert result.prompt_tokens == len(trace.prompt_tokens) and result.completion_tokens == len(trace.tokens)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("score these please", "promptTokens"),
        (json.dumps({"promptTokens": [1, 2]}), "tokens"),
        (json.dumps({"promptTokens": [], "tokens": [3]}), "promptTokens"),
        (json.dumps({"promptTokens": [1], "tokens": ["a"]}), "tokens"),
        (json.dumps({"promptTokens": [1], "tokens": [3], "extra": 1}), "extra"),
        (json.dumps({"promptTokens": [1], "tokens": [-3]}), "negative"),
        (json.dumps({"promptTokens": [1], "tokens": [10**8]}), OUT_OF_VOCABULARY),
        (json.dumps({"promptTokens": [1] * 900, "tokens": [2] * 200}), "do not fit"),
    ],
)
async def test_a_malformed_or_impossible_score_task_is_an_invalid_prompt(
    model: BatchedLlamaModel, content: str, named: str
) -> None:
    workflow = score_workflow(_step([1], [2] * 200), 60)  # max_tokens 200
    workflow["tasks"][0]["messages"][0]["content"] = content  # type: ignore[index]
    text = await _error(workflow, model)
    assert text.startswith(INVALID_PROMPT) and named in text, text
    assert (await model.score(ScoreRequest(prompt_tokens=[1, 2], tokens=[3]))).logprobs  # still serving


async def test_scored_tokens_count_as_generated_ones_against_the_nodes_caps(model: BatchedLlamaModel) -> None:
    step = _step([1, 2, 3], list(range(100, 160)))
    text = await _error(score_workflow(step, 60), model, EngineOptions(max_tokens_cap=32))
    assert not text.startswith(INVALID_PROMPT) and "60 tokens to score" in text  # another node may allow more
    budget = score_workflow(step, 60)
    budget["config"]["max_steps"] = 5  # type: ignore[index]
    budget["steps"] = [{"source": "score", "target": "score"}]  # scores again and again: the task's budget ends it
    with pytest.raises(LimitExceededError, match="token budget"):
        await run_workflow(parse_workflow(budget), model, options=EngineOptions(max_task_tokens=120))
