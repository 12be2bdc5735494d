"""Rule 6: a proven step's prompt must hold the publisher's own messages (node/publisher/prompt_match.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.scoring import TokenScorer
from models.tracing import GenerationTrace, generation_traces
from node.publisher.prompt_match import PromptExpectation
from node.publisher.verification import ProofChecker, VerificationError
from node.wire.proof import Proof, ProofGeneration
from tests.support.model_file import loaded_smollm2
from workflows import Simple


def _workflow(content: str, inputs: list[dict[str, Any]] | None = None, operator: str = "generation") -> dict[str, Any]:
    workflow = Simple().workflow(prompt=content)
    workflow["tasks"][0]["inputs"] = inputs or []
    workflow["tasks"][0]["operator"] = operator
    return workflow


def _input(name: str, kind: str, key: str = "") -> dict[str, Any]:
    return {"name": name, "required": True, "value": {"type": kind, "key": key}}


def test_the_messages_words_must_all_be_there_up_to_whitespace() -> None:
    expected = PromptExpectation.of(_workflow("Tell me  about\nbread."), None)
    assert expected is not None
    assert expected.holds("<|im_start|>user\nTell me about bread.<|im_end|>\n<|im_start|>assistant\n")
    assert not expected.holds("<|im_start|>user\nTell me about cheese.<|im_end|>")
    assert not expected.holds("")


def test_placeholders_of_memory_split_the_text_and_the_task_prompt_fills_input() -> None:
    inputs = [_input("topic", "read", "topic"), _input("question", "input")]
    expected = PromptExpectation.of(
        _workflow("About {{topic}}: answer {question} briefly.", inputs), "why is the sky blue"
    )
    assert expected is not None
    assert expected.holds("About anything at all: answer why is the sky blue briefly.")
    assert not expected.holds("About anything at all: answer why is grass green briefly.")
    assert not expected.holds("answer why is the sky blue briefly.")  # the first piece is missing


def test_a_task_prompt_nested_past_the_json_parsers_depth_is_text() -> None:
    deep = "[" * 5000 + "]" * 5000  # the engine cannot parse it as JSON either: it fills the input verbatim
    expected = PromptExpectation.of(_workflow("Echo {question}", [_input("question", "input")]), deep)
    assert expected is not None
    assert expected.holds(f"Echo {deep}") and not expected.holds("Echo []")


def test_braces_that_are_not_declared_inputs_are_literal_text() -> None:
    expected = PromptExpectation.of(_workflow('Reply with {"ok": true} and {name}.'), None)
    assert expected is not None
    assert expected.holds('Reply with {"ok": true} and {name}.')
    assert not expected.holds("Reply with and .")


def test_any_model_calling_task_of_the_workflow_may_be_the_steps() -> None:
    workflow = _workflow("First question.")
    second = dict(workflow["tasks"][0], id="1", messages=[{"role": "user", "content": "Second question."}])
    workflow["tasks"].insert(1, second)
    expected = PromptExpectation.of(workflow, None)
    assert expected is not None
    assert expected.holds("Second question.") and expected.holds("First question.")
    assert not expected.holds("Third question.")


def test_workflows_without_a_model_call_expect_nothing() -> None:
    assert PromptExpectation.of(_workflow("x", operator="search"), None) is None
    assert PromptExpectation.of({"tasks": "not a list"}, None) is None


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=1) as loaded:
        yield loaded


async def test_honest_work_on_another_prompt_fails_the_check(model: BatchedLlamaModel, scorer: TokenScorer) -> None:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    request = GenerationRequest(messages=[ChatMessage(role="user", content="Tell me about bread.")], max_tokens=24)
    text = (await model.generate(request)).text
    generation_traces.set(None)
    proof = Proof(steps=[ProofGeneration.model_validate(traces[0].model_dump())])
    asked = PromptExpectation.of(Simple().workflow(prompt="Tell me about bread."), None)
    other = PromptExpectation.of(Simple().workflow(prompt="Tell me about cheese."), None)
    assert ProofChecker().check(proof, text, scorer, asked).positions == len(traces[0].tokens)
    with pytest.raises(VerificationError, match="does not hold the task's messages"):
        ProofChecker().check(proof, text, scorer, other)
