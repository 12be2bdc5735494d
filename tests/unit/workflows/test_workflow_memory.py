"""Memory, inputs, outputs, placeholders, conditions and return values.

Table-driven; the file store uses real embeddings from the SmolLM2 runtime.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from models.runtime import LlamaModel, RuntimeOptions
from tests.support.model_file import SMOLLM2 as GGUF
from workflows import TaskError, WorkflowError, parse_workflow, run_workflow
from workflows.conditions import evaluate
from workflows.inputs import render, resolve, resolve_inputs, write_outputs
from workflows.memory import Memory, chunk_text, coerce_entry
from workflows.placeholders import fill
from workflows.return_value import build_result, post_process
from workflows.schema import InputValue, PostProcess, ReturnValue, TaskInput, TaskOutput


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    # The runtime binds to no event loop, so one model serves every test's loop.
    loaded = asyncio.run(LlamaModel.load("smollm2", GGUF, RuntimeOptions(n_ctx=1024, n_threads=1)))
    yield loaded
    asyncio.run(loaded.close())


def _memory(model: LlamaModel) -> Memory:
    return Memory.create(
        model,
        {"name": "Ada", "num": "42", "obj": '{"a": 1}', "s": ["x", "y", "z"], "colours": ["red"]},
        prompt="the prompt",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        ("4.5", 4.5),
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[1]", [1]),
        ("true", True),
        ("hello", "hello"),
        ("null", "null"),
        ("", ""),
        ({"k": "v"}, {"k": "v"}),
        (7, 7),
    ],
)
def test_entry_coercion_keeps_json_looking_strings_as_json(raw: Any, expected: Any) -> None:
    assert coerce_entry(raw) == expected


INPUTS = [
    ({"type": "input"}, "the prompt"),
    ({"type": "read", "key": "name"}, "Ada"),
    ({"type": "read", "key": "num"}, "42"),
    ({"type": "read", "key": "obj"}, '{"a":1}'),
    ({"type": "read", "key": "missing"}, None),
    ({"type": "pop", "key": "s"}, "z"),
    ({"type": "pop", "key": "missing"}, None),
    ({"type": "peek", "key": "s"}, "z"),
    ({"type": "peek", "key": "s", "index": 2}, "x"),
    ({"type": "peek", "key": "s", "index": 3}, None),
    ({"type": "get_all", "key": "s"}, "x \ny \nz"),
    ({"type": "get_all", "key": "missing"}, None),
    ({"type": "size", "key": "s"}, "3"),
    ({"type": "size", "key": "missing"}, "0"),
    ({"type": "string", "key": "literal {x}"}, "literal {x}"),
]


@pytest.mark.parametrize(
    ("value", "expected"), INPUTS, ids=[f"{v['type']}-{v.get('key', '')}-{v.get('index', '')}" for v, _ in INPUTS]
)
async def test_input_types(model: LlamaModel, value: dict[str, Any], expected: str | None) -> None:
    resolved = await resolve(InputValue.model_validate(value), _memory(model))
    assert (None if resolved is None else render(resolved)) == expected


async def test_pop_removes_and_peek_does_not(model: LlamaModel) -> None:
    memory = _memory(model)
    await resolve(InputValue(type="peek", key="s"), memory)
    assert memory.size("s") == 3
    assert await resolve(InputValue(type="pop", key="s"), memory) == "z"
    assert memory.get_all("s") == ["x", "y"]


async def test_required_input_that_resolves_to_nothing_fails_optional_renders_empty(model: LlamaModel) -> None:
    memory = _memory(model)
    missing = InputValue(type="read", key="missing")
    assert await resolve_inputs([TaskInput(name="m", value=missing, required=False)], memory) == {"m": ""}
    with pytest.raises(TaskError, match="required input 'm'"):
        await resolve_inputs([TaskInput(name="m", value=missing, required=True)], memory)


async def test_file_store_insert_search_and_have_similar(model: LlamaModel) -> None:
    memory = _memory(model)
    volcano = "Volcanoes erupt molten rock called lava from inside the earth."
    texts = [
        volcano,
        "The stock market closed higher on Tuesday after bank earnings.",
        "A recipe for bread needs flour, water, salt and yeast.",
    ]
    await write_outputs([TaskOutput(type="insert", key="docs", value="__result")], texts[0], memory)
    for text in texts[1:]:
        await write_outputs([TaskOutput(type="insert", key="docs", value=text)], "ignored", memory)
    query = InputValue.model_validate(
        {"type": "search", "key": "docs", "search_query": {"type": "string", "key": "lava and eruptions"}}
    )
    found = await resolve(query, memory)
    assert isinstance(found, list) and len(found) == 3 and found[0] == volcano
    assert await evaluate("HaveSimilar", volcano, "", memory.files) is True
    assert await evaluate("HaveSimilar", "Quarterly tax filing deadlines", "", memory.files) is False


def test_chunking_is_about_250_characters() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_text(text)
    assert all(len(c) <= 250 for c in chunks) and len(chunks) > 5
    assert " ".join(chunks) == text
    assert chunk_text("x" * 600) == ["x" * 250, "x" * 250, "x" * 100]


async def test_write_and_push_outputs_store_result_or_literal(model: LlamaModel) -> None:
    memory = _memory(model)
    outputs = [
        TaskOutput(type="write", key="w", value="__result"),
        TaskOutput(type="push", key="s", value="__result"),
        TaskOutput(type="write", key="lit", value='{"b": 2}'),
    ]
    await write_outputs(outputs, "17", memory)
    assert memory.read("w") == 17 and memory.get_all("s")[-1] == 17 and memory.read("lit") == {"b": 2}


PLACEHOLDERS = [
    ("Hi {{name}}!", "Hi Ada!"),
    ("Hi {name}!", "Hi Ada!"),
    ("{{name}} and {{name}}", "Ada and Ada"),
    ('JSON {"name": 1} and {other}', 'JSON {"name": 1} and {other}'),
    ("{{other}} {name}", "{{other}} Ada"),
    ("{{list}}", "a \nb"),
    ("{{tricky}}", "{name}"),  # substituted text is not scanned again
]


@pytest.mark.parametrize(("template", "expected"), PLACEHOLDERS)
def test_placeholders_fill_declared_names_only(template: str, expected: str) -> None:
    assert fill(template, {"name": "Ada", "list": "a \nb", "tricky": "{name}"}) == expected


EXPRESSIONS = [
    ("Equal", "yes", "yes", True),
    ("Equal", " yes\n", "yes", True),
    ("Equal", "no", "yes", False),
    ("NotEqual", "no", "yes", True),
    ("NotEqual", "yes", "yes", False),
    ("Contains", "a yes b", "yes", True),
    ("Contains", "a b", "yes", False),
    ("NotContains", "a b", "yes", True),
    ("NotContains", "yes", "yes", False),
    ("GreaterThan", "3", "2", True),
    ("GreaterThan", "2", "2", False),
    ("LessThan", "1.5", "2", True),
    ("LessThan", "2", "2", False),
    ("GreaterThanOrEqual", "2", "2", True),
    ("GreaterThanOrEqual", "1", "2", False),
    ("LessThanOrEqual", "2", "2", True),
    ("LessThanOrEqual", "3", "2", False),
    ("GreaterThan", "three", "2", False),
    ("LessThan", "1", "two", False),  # not numbers: false, no crash
]


@pytest.mark.parametrize(("expression", "value", "expected", "holds"), EXPRESSIONS)
async def test_expressions(model: LlamaModel, expression: Any, value: str, expected: str, holds: bool) -> None:
    assert await evaluate(expression, value, expected, _memory(model).files) is holds


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
async def test_return_values(model: LlamaModel, spec: dict[str, Any], expected: str) -> None:
    assert await build_result(ReturnValue.model_validate(spec), _memory(model)) == expected


async def test_return_value_naming_nothing_is_an_error(model: LlamaModel) -> None:
    with pytest.raises(WorkflowError, match="return_value.input: read 'missing' holds nothing"):
        await build_result(ReturnValue.model_validate({"input": {"type": "read", "key": "missing"}}), _memory(model))


def _no_model_workflow(steps: list[dict[str, Any]], tasks: list[dict[str, Any]], **config: Any) -> Any:
    return parse_workflow(
        {
            "config": {"max_steps": 20, "max_time": 30, **config},
            "external_memory": {"colours": ["red", "green", "blue"], "count": []},
            "tasks": tasks + [{"id": "_end", "operator": "end"}],
            "steps": steps,
            "return_value": {"input": {"type": "get_all", "key": "count"}, "to_json": True},
        }
    )


SAMPLE_TASK = {
    "id": "pick",
    "messages": [{"role": "user", "content": "Colour"}],
    "inputs": [{"name": "c", "value": {"type": "string", "key": "colours"}, "required": True}],
    "operator": "sample",
    "outputs": [{"type": "push", "key": "count", "value": "__result"}],
}


async def test_sample_loop_until_condition_holds(model: LlamaModel) -> None:
    workflow = _no_model_workflow(
        [
            {
                "source": "pick",
                "target": "_end",
                "condition": {
                    "input": {"type": "size", "key": "count"},
                    "expected": "4",
                    "expression": "GreaterThanOrEqual",
                    "target_if_not": "pick",
                },
            }
        ],
        [SAMPLE_TASK],
    )
    result = await run_workflow(workflow, model)
    picks = json.loads(result.text)
    assert result.steps == 4 and len(picks) == 4
    assert all(p in ("Colour: red", "Colour: green", "Colour: blue") for p in picks)
    assert result.completion_tokens == 0


async def test_failed_task_goes_to_fallback_and_without_fallback_fails(model: LlamaModel) -> None:
    failing = {
        "id": "bad",
        "messages": [{"role": "user", "content": "{{x}}"}],
        "inputs": [{"name": "x", "value": {"type": "pop", "key": "nothing"}, "required": True}],
        "operator": "generation",
    }
    recovered = _no_model_workflow(
        [{"source": "bad", "target": "_end", "fallback": "pick"}, {"source": "pick", "target": "_end"}],
        [failing, SAMPLE_TASK],
    )
    result = await run_workflow(recovered, model)
    assert result.steps == 2 and len(json.loads(result.text)) == 1

    unrecovered = _no_model_workflow([{"source": "bad", "target": "_end"}], [failing])
    with pytest.raises(TaskError, match="task 'bad' failed: required input 'x'"):
        await run_workflow(unrecovered, model)


async def test_non_numeric_condition_is_false_and_does_not_crash(model: LlamaModel) -> None:
    workflow = _no_model_workflow(
        [
            {
                "source": "pick",
                "target": "_end",
                "condition": {
                    "input": {"type": "peek", "key": "count"},
                    "expected": "1",
                    "expression": "GreaterThan",
                    "target_if_not": "__end",
                },
            }
        ],
        [SAMPLE_TASK],
    )
    assert (await run_workflow(workflow, model)).steps == 1
