"""Why the run's result ended: the finish reason of the generation whose text is the result (streamed_step.py),
cut at the node's own max_tokens_cap included; none for a result of another shape."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from models.batching import BatchedLlamaModel
from models.requests import FinishReason, Generation, GenerationRequest, TextSink
from workflows import EngineOptions, Simple, parse_workflow, run_workflow


class _Finishes:
    """A model stand-in that answers `text` to every generation, each ending, in turn, for `reasons`."""

    name = "fixed"

    def __init__(self, *reasons: FinishReason, text: str = "an answer") -> None:
        self.reasons, self.text = list(reasons), text

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        if on_text is not None:
            on_text(self.text)
        return Generation(text=self.text, finish_reason=self.reasons.pop(0), prompt_tokens=3, completion_tokens=5)


def two_steps(**changes: Any) -> dict[str, Any]:
    """draft -> answer; `answer` writes `final`, which the result reads."""
    step = {"operator": "generation", "messages": [{"role": "user", "content": "Go."}]}
    workflow: dict[str, Any] = {
        "config": {"max_steps": 10, "max_time": 60},
        "tasks": [
            {**step, "id": "draft", "outputs": [{"type": "write", "key": "draft"}]},
            {**step, "id": "answer", "outputs": [{"type": "write", "key": "final"}]},
            {"id": "_end", "operator": "end"},
        ],
        "steps": [{"source": "draft", "target": "answer"}, {"source": "answer", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "final"}},
    }
    workflow.update(changes)
    return workflow


@pytest.mark.parametrize("reason", ["stop", "length"])
@pytest.mark.parametrize("streaming", [False, True])
async def test_the_result_says_why_its_generation_ended(reason: FinishReason, streaming: bool) -> None:
    workflow = parse_workflow(Simple().workflow("Hi.", max_tokens=8))
    pieces: list[str] = []
    result = await run_workflow(workflow, cast(Any, _Finishes(reason)), on_text=pieces.append if streaming else None)
    assert result.finish_reason == reason and result.text == "an answer"


async def test_it_is_the_result_generation_s_reason_not_another_step_s() -> None:
    workflow = parse_workflow(two_steps())
    assert (await run_workflow(workflow, cast(Any, _Finishes("length", "stop")))).finish_reason == "stop"
    assert (await run_workflow(workflow, cast(Any, _Finishes("stop", "length")))).finish_reason == "length"


async def test_a_result_that_is_not_one_generation_s_text_has_no_reason() -> None:
    post_processed = two_steps(
        return_value={"input": {"type": "read", "key": "final"}, "post_process": [{"process_type": "trim"}]}
    )
    schema = two_steps()
    schema["tasks"][1]["schema"] = json.dumps({"type": "string"})
    for shape in (post_processed, schema):
        model = _Finishes("stop", "stop", text='"an answer"')
        assert (await run_workflow(parse_workflow(shape), cast(Any, model))).finish_reason is None


async def test_a_cut_at_the_node_s_cap_is_length(model: BatchedLlamaModel) -> None:
    # The task asks for 64 tokens; the node allows 3: the answer is cut at 3, below what the task asked.
    workflow = parse_workflow(Simple().workflow("Count from one to fifty in words.", max_tokens=64))
    result = await run_workflow(workflow, model, options=EngineOptions(max_tokens_cap=3))
    assert result.completion_tokens == 3 and result.finish_reason == "length"
