"""Which step streams its generation: only one whose text is the result, and that runs at most once."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from models.batching import BatchedLlamaModel
from models.requests import Generation, GenerationRequest, TextSink
from workflows import Simple, parse_workflow, run_workflow
from workflows.streamed_step import streamed_step


def two_steps(**changes: Any) -> dict[str, Any]:
    """draft -> answer; `answer` writes `final`, which the result reads."""
    workflow: dict[str, Any] = {
        "config": {"max_steps": 10, "max_time": 60},
        "tasks": [
            {
                "id": "draft",
                "operator": "generation",
                "messages": [{"role": "user", "content": "Draft."}],
                "outputs": [{"type": "write", "key": "draft"}],
            },
            {
                "id": "answer",
                "operator": "generation",
                "messages": [{"role": "user", "content": "Answer."}],
                "outputs": [{"type": "write", "key": "final"}],
            },
            {"id": "_end", "operator": "end"},
        ],
        "steps": [{"source": "draft", "target": "answer"}, {"source": "answer", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "final"}},
    }
    workflow.update(changes)
    return workflow


def test_the_generation_that_writes_the_returned_key_streams() -> None:
    assert streamed_step(parse_workflow(two_steps())) == "answer"
    simple = parse_workflow(Simple().workflow("Hi.", max_tokens=8))
    assert streamed_step(simple) == simple.steps[0].id


def test_a_result_that_is_not_one_generation_as_it_is_streams_nothing() -> None:
    read_final = {"type": "read", "key": "final"}
    for return_value in (
        {"input": read_final, "post_process": [{"process_type": "to_upper"}]},
        {"input": [read_final]},
        {"input": {"type": "read", "key": "draft"}, "to_json": False},
    ):
        shape = two_steps(return_value=return_value)
        expected = "draft" if return_value["input"] == {"type": "read", "key": "draft"} else None
        assert streamed_step(parse_workflow(shape)) == expected, return_value
    twice = two_steps()
    twice["tasks"][0]["outputs"].append({"type": "write", "key": "final"})  # two writers: which one wins depends
    assert streamed_step(parse_workflow(twice)) is None
    literal = two_steps()
    literal["tasks"][1]["outputs"] = [{"type": "write", "key": "final", "value": "fixed"}]
    assert streamed_step(parse_workflow(literal)) is None
    schema = two_steps()
    schema["tasks"][1]["schema"] = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
    assert streamed_step(parse_workflow(schema)) is None  # JSON comes back reformatted by memory


def test_a_step_that_can_run_again_streams_nothing() -> None:
    looped = two_steps(
        steps=[
            {"source": "draft", "target": "answer"},
            {
                "source": "answer",
                "target": "_end",
                "condition": {
                    "input": {"type": "read", "key": "final"},
                    "expected": "yes",
                    "expression": "Contains",
                    "target_if_not": "draft",
                },
            },
        ]
    )
    assert streamed_step(parse_workflow(looped)) is None


async def test_the_engine_streams_only_the_final_step_and_the_result_is_its_text(model: BatchedLlamaModel) -> None:
    workflow = two_steps(config={"max_steps": 10, "max_time": 120, "max_tokens": 24})
    workflow["tasks"][0]["messages"] = [{"role": "user", "content": "Write one short sentence about rivers."}]
    workflow["tasks"][1]["messages"] = [{"role": "user", "content": "Write one short sentence about candles."}]
    pieces: list[str] = []
    result = await run_workflow(parse_workflow(workflow), model, on_text=pieces.append)
    assert result.steps == 2 and len(pieces) >= 2
    assert "".join(pieces) == result.text  # the answer step's text, not the draft's
    unstreamed = await run_workflow(parse_workflow(workflow), model)
    assert unstreamed.text == result.text  # temperature 0: streaming changes nothing


class _Answers:
    """A model stand-in that answers every generation with one text, streamed in two pieces."""

    name = "fixed"

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        if on_text is not None:
            half = len(self.text) // 2
            on_text(self.text[:half])
            on_text(self.text[half:])
        return Generation(text=self.text, finish_reason="stop", prompt_tokens=3, completion_tokens=5)


# Free-text answers that parse as JSON: memory keeps them as JSON, whose compact form is not the answer.
JSON_LOOKING = [" [1, 2, 3]", "1e5", "3.14159265358979323846", '"Hello"', '{"a":   1}', "-0", "[]"]


@pytest.mark.parametrize("answer", JSON_LOOKING)
async def test_the_result_of_a_free_text_answer_is_the_answer_as_written(answer: str) -> None:
    workflow = parse_workflow(Simple().workflow("Hi.", max_tokens=8))
    pieces: list[str] = []
    streamed = await run_workflow(workflow, cast(Any, _Answers(answer)), on_text=pieces.append)
    assert streamed.text == answer and "".join(pieces) == answer
    assert (await run_workflow(workflow, cast(Any, _Answers(answer)))).text == answer


async def test_a_result_of_another_shape_is_memory_s_compact_json() -> None:
    post_processed = two_steps(
        return_value={"input": {"type": "read", "key": "final"}, "post_process": [{"process_type": "trim"}]}
    )
    result = await run_workflow(parse_workflow(post_processed), cast(Any, _Answers(" [1, 2, 3]")))
    assert result.text == "[1,2,3]"  # WORKFLOWS.md: JSON renders as compact JSON
