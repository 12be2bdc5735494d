"""Return values and their post-processing steps."""

from __future__ import annotations

from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from tests.support.workflow_memory import sample_memory
from workflows import WorkflowError
from workflows.inputs import render, resolve
from workflows.memory import Memory
from workflows.return_value import build_result, post_process
from workflows.schema import PostProcess, ReturnValue

POST = [
    ({"process_type": "replace", "lhs": "a", "rhs": "o"}, " banana ", " bonono "),
    ({"process_type": "append", "rhs": "!"}, "hi", "hi!"),
    ({"process_type": "prepend", "lhs": "> "}, "hi", "> hi"),
    ({"process_type": "trim"}, "  hi \n", "hi"),
    ({"process_type": "trim_start"}, "  hi ", "hi "),
    ({"process_type": "trim_end"}, "  hi ", "  hi"),
    ({"process_type": "to_lower"}, "HeLLo", "hello"),
    ({"process_type": "to_upper"}, "HeLLo", "HELLO"),
]


@pytest.mark.parametrize(("step", "text", "expected"), POST, ids=[s["process_type"] for s, _, _ in POST])
def test_post_process_kinds(step: dict[str, str], text: str, expected: str) -> None:
    assert post_process(text, PostProcess.model_validate(step)) == expected


RETURNS = [
    ({"input": {"type": "read", "key": "name"}}, "Ada"),
    ({"input": {"type": "read", "key": "obj"}}, '{"a":1}'),
    ({"input": {"type": "get_all", "key": "s"}}, "x \ny \nz"),
    ({"input": {"type": "get_all", "key": "s"}, "to_json": True}, '["x", "y", "z"]'),
    ({"input": {"type": "get_all", "key": "empty"}, "to_json": True}, "[]"),
    ({"input": [{"type": "read", "key": "name"}, {"type": "read", "key": "num"}], "to_json": True}, '["Ada", "42"]'),
    ({"input": [{"type": "read", "key": "name"}, {"type": "size", "key": "s"}]}, "Ada\n3"),
    (
        {
            "input": {"type": "read", "key": "name"},
            "post_process": [{"process_type": "to_upper"}, {"process_type": "append", "rhs": "?"}],
        },
        "ADA?",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), RETURNS)
async def test_return_values(model: BatchedLlamaModel, spec: dict[str, Any], expected: str) -> None:
    assert await build_result(ReturnValue.model_validate(spec), sample_memory(model)) == expected


async def test_return_value_naming_nothing_is_an_error(model: BatchedLlamaModel) -> None:
    with pytest.raises(WorkflowError, match="return_value.input: read 'missing' holds nothing"):
        await build_result(
            ReturnValue.model_validate({"input": {"type": "read", "key": "missing"}}), sample_memory(model)
        )


def _json_memory(model: BatchedLlamaModel) -> Memory:
    # What a generation with an array or string schema writes, and a stack holding an array.
    return Memory.create(
        model,
        {"questions": '["What is lava?", "Why do volcanoes erupt?"]', "city": '"Paris"', "pairs": [["x", "y"], "z"]},
        prompt="",
    )


JSON_ENTRIES = [
    # one entry that is a JSON array is JSON (compact), not a list of lines (WORKFLOWS.md, Memory)
    ({"input": {"type": "read", "key": "questions"}}, '["What is lava?","Why do volcanoes erupt?"]'),
    ({"input": {"type": "read", "key": "questions"}, "to_json": True}, '["What is lava?","Why do volcanoes erupt?"]'),
    ({"input": {"type": "read", "key": "city"}}, '"Paris"'),  # a JSON string keeps its quotes
    ({"input": {"type": "peek", "key": "pairs", "index": 1}}, '["x","y"]'),
    ({"input": {"type": "get_all", "key": "pairs"}}, '["x","y"] \nz'),  # several entries: one a line each
    ({"input": {"type": "get_all", "key": "pairs"}, "to_json": True}, '["[\\"x\\",\\"y\\"]", "z"]'),
]


@pytest.mark.parametrize(("spec", "expected"), JSON_ENTRIES)
async def test_a_json_array_or_string_entry_is_returned_as_json(
    model: BatchedLlamaModel, spec: dict[str, Any], expected: str
) -> None:
    assert await build_result(ReturnValue.model_validate(spec), _json_memory(model)) == expected


async def test_a_json_array_entry_fills_a_placeholder_as_json(model: BatchedLlamaModel) -> None:
    from workflows.schema import InputValue

    value = InputValue.model_validate({"type": "read", "key": "questions"})
    assert render(await resolve(value, _json_memory(model))) == '["What is lava?","Why do volcanoes erupt?"]'
